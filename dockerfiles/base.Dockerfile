# smelter base image: Debian ${suite} + Python ${python_version} + git + uv.
# Root filesystem: ${rootfs_note}
FROM ${from_image}
${system_setup}
# uv is copied from the host that built this image (no download at build time).
COPY uv /usr/local/bin/uv
ENV LANG=C.UTF-8 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_PYTHON_DOWNLOADS=never \
    UV_NO_CACHE=1 \
    UV_LINK_MODE=copy
# A non-root user for test runs, where the repository allows it.
RUN (id -u smelter >/dev/null 2>&1 || useradd --create-home --uid 1000 --shell /bin/sh smelter) \
 && python3 -c "import ensurepip, venv, ssl" \
 && git --version && uv --version
CMD ["/bin/sh"]
