"""Base images: pure helpers, and the real bootstrapped bookworm image (Docker)."""

from __future__ import annotations

import docker
import pytest

from smelter.transforms import base_images as bi
from smelter.transforms import docker_engine as eng
from smelter.transforms.common import Fatal


def test_suite_python_mapping() -> None:
    assert bi.python_for_suite("bullseye") == "3.9"
    assert bi.python_for_suite("bookworm") == "3.11"
    assert bi.python_for_suite("trixie") == "3.13"
    assert bi.suite_for_python("3.11") == "bookworm"
    assert bi.suite_for_python("2.7") is None
    with pytest.raises(Fatal, match="unknown Debian suite 'sid'"):
        bi.python_for_suite("sid")


def test_rootfs_key_depends_on_what_goes_into_debootstrap_only() -> None:
    key = bi.rootfs_key("bookworm", ["git", "python3"], bi.DEFAULT_MIRROR)
    assert key == bi.rootfs_key("bookworm", ["python3", "git"], bi.DEFAULT_MIRROR)  # order-free
    assert key != bi.rootfs_key("bookworm", ["git", "python3", "curl"], bi.DEFAULT_MIRROR)
    assert key != bi.rootfs_key("trixie", ["git", "python3"], bi.DEFAULT_MIRROR)
    assert key != bi.rootfs_key("bookworm", ["git", "python3"], "http://mirror.example/debian")


def test_debootstrap_command_is_minbase_with_packages() -> None:
    cmd = bi.debootstrap_command("bookworm", "/r", ["python3", "git"], bi.DEFAULT_MIRROR)
    assert cmd == [
        "debootstrap", "--variant=minbase", "--include=git,python3", "bookworm", "/r",
        bi.DEFAULT_MIRROR,
    ]  # fmt: skip


def test_base_dockerfile_local_and_registry() -> None:
    local = bi.render_base_dockerfile("bookworm", "smelter/rootfs:bookworm-x", "local")
    assert local.splitlines()[0].startswith("# smelter base image: Debian bookworm + Python 3.11")
    assert "FROM smelter/rootfs:bookworm-x" in local
    assert "apt-get" not in local  # debootstrap already brought git
    assert "COPY uv /usr/local/bin/uv" in local
    assert "$" not in local.replace("${", "")  # every placeholder substituted
    registry = bi.render_base_dockerfile("trixie", "python:3.13-slim", "registry")
    assert "FROM python:3.13-slim" in registry
    assert "apt-get install -y --no-install-recommends git ca-certificates" in registry


def test_host_uv_is_found() -> None:
    assert bi.host_uv().name == "uv"


@pytest.mark.docker
def test_bootstrapped_bookworm_has_python_venv_git_and_uv(
    docker_client: docker.DockerClient, base_image: bi.BaseImage
) -> None:
    assert base_image.suite == "bookworm" and base_image.python_version == "3.11"
    assert base_image.tag.startswith("smelter/base:py3.11-bookworm-")
    img = docker_client.images.get(base_image.tag)
    assert img.labels[eng.LABEL] == "1"
    assert img.labels[eng.LABEL_KIND] == eng.KIND_BASE
    assert img.labels[eng.LABEL_PYTHON] == "3.11"
    script = (
        "python --version && python -m venv /tmp/v && /tmp/v/bin/python -c 'import ssl' "
        "&& git --version && uv --version && id -u smelter"
    )
    marker = {"dev.smelter.test-marker": "base-image-check"}
    result = eng.run_container(docker_client, base_image.tag, ["sh", "-c", script], timeout=120,
                               extra_labels=marker)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "Python 3.11." in result.output
    assert "git version" in result.output and "uv " in result.output
    assert result.output.strip().endswith("1000")
    left = docker_client.api.containers(
        all=True, filters={"label": "dev.smelter.test-marker=base-image-check"}
    )
    assert left == []


@pytest.mark.docker
def test_second_bootstrap_is_a_cache_hit(
    docker_client: docker.DockerClient, base_image: bi.BaseImage
) -> None:
    (again,) = bi.bootstrap(("bookworm",), source="local", client=docker_client, say=print)
    assert again.tag == base_image.tag
    assert again.built is False and again.rootfs_cached is True
    assert again.seconds < 30
    listed = {b.tag for b in bi.list_base_images(docker_client)}
    assert base_image.tag in listed


@pytest.mark.docker
def test_reimporting_the_cached_rootfs_gives_the_same_tag(
    docker_client: docker.DockerClient, base_image: bi.BaseImage
) -> None:
    tarball, cached = bi.ensure_rootfs("bookworm", bi.default_cache_dir(), say=print)
    assert cached and tarball.stat().st_size > 50_000_000
    assert bi.import_rootfs(docker_client, "bookworm", tarball) == base_image.rootfs_tag
