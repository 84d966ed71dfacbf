# smelter env image: dependencies of ${repo} (install recipe "${recipe}"), resolved as of
# ${exclude_newer_note}. Shared by every PR whose recipe and dependency lines hash the same.
FROM ${base_image}
${ca_setup}
${system_setup}
ENV VIRTUAL_ENV=/opt/smelter/venv \
    PATH=/opt/smelter/venv/bin:$$PATH \
    UV_SYSTEM_CERTS=1
# The index URL (if any) arrives as a build argument, so it is never written into the image.
ARG UV_DEFAULT_INDEX
# The venv belongs to the test user: the instance layer installs the project as that user.
RUN uv venv --python /usr/bin/python3 $$VIRTUAL_ENV \
 && uv pip install ${uv_flags} ${requirements} \
 && uv pip freeze > /opt/smelter/env-frozen.txt \
 && chown -R 1000:1000 /opt/smelter
