# smelter instance image: ${repo} at ${base_commit} (${instance_id}), installed into the env's venv.
# Build context: `testbed/` = the source tree at ${base_commit} with a one-commit .git.
FROM ${env_image}
# The tree belongs to the test user while the build runs as root: git (and so setuptools-scm,
# hatch-vcs) refuses a repository of another owner unless it is a safe.directory, so that is
# set before anything reads the repository.
RUN git config --system --add safe.directory /testbed
COPY --chown=1000:1000 testbed /testbed
WORKDIR /testbed
${source_env}
ARG UV_DEFAULT_INDEX
RUN ${install} \
 && uv pip freeze > /opt/smelter/frozen.txt
