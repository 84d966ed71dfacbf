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
# apt stays usable for the env layer's compiler rung (it installs gcc and python3-dev):
# a testing suite's Release (forky) is valid for a week only, and a frozen or snapshot mirror
# serves it long after, so apt would refuse to update. Signatures are still checked.
# A non-root user for test runs, where the repository allows it. The checks fail the build, not
# a PR later: python3 must be the version this image is labelled with (a moving suite such as
# forky changes its default python3), and uv must make a venv from it.
RUN echo 'Acquire::Check-Valid-Until "false";' > /etc/apt/apt.conf.d/99smelter-no-valid-until \
 && (id -u smelter >/dev/null 2>&1 || useradd --create-home --uid 1000 --shell /bin/sh smelter) \
 && python3 -c "import ensurepip, venv, ssl, sqlite3, ctypes" \
 && python3 -c "import sys; v = '%d.%d' % sys.version_info[:2]; assert v == '${python_version}', 'python3 is ' + v + ', not ${python_version}'" \
 && uv venv -q --python python3 /tmp/uv-check && rm -rf /tmp/uv-check \
 && git --version && uv --version
CMD ["/bin/sh"]
