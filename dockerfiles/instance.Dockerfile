# smelter instance image: ${repo} at ${base_commit} (${instance_id}), installed into the env's venv.
# Build context: `testbed/` = the source tree at ${base_commit} with a one-commit .git.
# Built with no network: this is the only layer that runs the pull request's code (its setup.py,
# its build back end), so it runs as the test user and reaches nothing; its dependencies are in
# the env layer already. If the install still fails, the build does not: the image records
# "failed" and the project's own metadata, and smelter adds what it lacks to a new env layer.
FROM ${env_image}
# The tree belongs to the test user while root reads it later (validation, git): git refuses a
# repository of another owner unless it is a safe.directory, so that is set before anything.
RUN git config --system --add safe.directory /testbed
COPY --chown=1000:1000 testbed /testbed
WORKDIR /testbed
${source_env}
USER 1000:1000
RUN { ${install} ; } 2>&1 | tee /opt/smelter/install.log; \
    uv pip freeze > /opt/smelter/frozen.txt
USER root
