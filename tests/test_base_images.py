"""Base images: pure helpers, the lazy provider, and the real bootstrapped images (Docker)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import docker
import pytest

from smelter.transforms.adapters import base_images as bi
from smelter.transforms.adapters import docker_engine as eng
from smelter.transforms.errors import Fatal


def test_suite_python_mapping() -> None:
    assert bi.python_for_suite("bullseye") == "3.9"
    assert bi.python_for_suite("bookworm") == "3.11"
    assert bi.python_for_suite("trixie") == "3.13"
    assert bi.python_for_suite("forky") == "3.14"
    assert bi.suite_for_python("3.14") == "forky"
    assert bi.DEFAULT_SUITES == ("bullseye", "bookworm", "trixie", "forky")
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


def test_debootstrap_command_passes_a_script_for_suites_the_host_does_not_know() -> None:
    cmd = bi.debootstrap_command("forky", "/r", ["git"], bi.DEFAULT_MIRROR, "/s/sid")
    assert cmd[-3:] == ["/r", bi.DEFAULT_MIRROR, "/s/sid"]


def test_debootstrap_script_falls_back_to_sid(tmp_path: Path) -> None:
    (tmp_path / "sid").write_text("# the sid script\n")
    (tmp_path / "bookworm").write_text("# bookworm\n")
    assert bi.debootstrap_script("bookworm", tmp_path) is None  # debootstrap knows it
    assert bi.debootstrap_script("forky", tmp_path) == str(tmp_path / "sid")
    assert bi.debootstrap_script("forky", tmp_path / "missing") is None  # let debootstrap say


def test_base_dockerfile_checks_the_suites_python_and_uv() -> None:
    text = bi.render_base_dockerfile("bullseye", "smelter/rootfs:bullseye-x", "local")
    assert "assert v == '3.9'" in text  # a moving suite's python3 fails the build, not a PR
    assert "uv venv -q --python python3 /tmp/uv-check" in text
    assert "import ensurepip, venv, ssl, sqlite3, ctypes" in text
    assert 'Acquire::Check-Valid-Until "false";' in text  # forky's week-long Release expires
    registry = bi.render_base_dockerfile("forky", "python:3.14-slim", "registry")
    assert "ln -s /usr/local/bin/python3 /usr/bin/python3" in registry


def test_base_dockerfile_local_and_registry() -> None:
    local = bi.render_base_dockerfile("bookworm", "smelter/rootfs:bookworm-x", "local")
    assert local.splitlines()[0].startswith("# smelter base image: Debian bookworm + Python 3.11")
    assert "FROM smelter/rootfs:bookworm-x" in local
    assert "apt-get" not in local  # debootstrap already brought git: no apt step
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


# --------------------------------------------------------------------------- the lazy provider


def test_provider_construction_touches_no_engine_and_offers_every_suite(tmp_path: Path) -> None:
    # Nothing listens on the discard port: any engine call would fail, and none is made.
    dead = docker.DockerClient(base_url="tcp://127.0.0.1:9", version="1.41", timeout=2)
    provider = bi.BaseProvider(client=dead, cache_dir=tmp_path / "cache")
    assert provider.versions() == ["3.9", "3.11", "3.13", "3.14"]
    assert list(provider) == provider.versions() and len(provider) == 4
    assert "3.9" in provider and "3.12" not in provider  # `in` never bootstraps
    assert provider.suite_for("3.13") == "trixie"
    with pytest.raises(bi.BaseUnavailable, match=r"ships Python 3\.12 \(configured: 3\.9, "):
        provider.get_base("3.12")
    with pytest.raises(KeyError):
        provider["3.12"]
    assert not (tmp_path / "cache").exists()  # no lock, no rootfs, nothing
    dead.close()


def test_provider_rejects_bad_config_at_once(tmp_path: Path) -> None:
    dead = docker.DockerClient(base_url="tcp://127.0.0.1:9", version="1.41", timeout=2)
    with pytest.raises(Fatal, match="unknown Debian suite 'sid'"):
        bi.BaseProvider(("bookworm", "sid"), client=dead, cache_dir=tmp_path)
    with pytest.raises(Fatal, match="auto, local or registry, not 'hub'"):
        bi.BaseProvider(client=dead, cache_dir=tmp_path, source="hub")
    dead.close()


@pytest.mark.docker
def test_provider_returns_a_present_suite_without_debootstrap(
    docker_client: docker.DockerClient, base_image: bi.BaseImage, tmp_path: Path
) -> None:
    # An empty cache and bootstrapping off: the image can only come from the engine.
    provider = bi.BaseProvider(client=docker_client, cache_dir=tmp_path, bootstrap_missing=False)
    started = time.monotonic()
    got = provider.get_base("3.11")
    assert got.suite == "bookworm" and got.python_version == "3.11"
    assert got.tag == base_image.tag  # the newest bookworm base: the session's
    assert provider["3.11"] is got  # remembered: no second engine query
    assert time.monotonic() - started < 30
    assert not (tmp_path / "rootfs").exists()
    assert provider.present()["3.11"] == got


@pytest.mark.docker
def test_provider_without_bootstrap_is_a_clear_error_remembered(
    docker_client: docker.DockerClient, base_image: bi.BaseImage, tmp_path: Path
) -> None:
    # Only registry-made bases count here, and the session's bookworm base is a local one.
    provider = bi.BaseProvider(("bookworm",), client=docker_client, cache_dir=tmp_path,
                               source="registry", bootstrap_missing=False)  # fmt: skip
    with pytest.raises(bi.BaseUnavailable) as first:
        provider.get_base("3.11")
    assert "smelter images bootstrap --suite bookworm" in str(first.value)
    assert isinstance(first.value, Fatal)  # unhandled, it stops the run with one line
    with pytest.raises(bi.BaseUnavailable) as again:
        provider["3.11"]
    assert str(again.value) == str(first.value)


@pytest.mark.docker
def test_provider_waits_for_the_suites_lock(
    docker_client: docker.DockerClient, base_image: bi.BaseImage, tmp_path: Path
) -> None:
    """Another worker bootstrapping bookworm holds its lock: get_base waits, then reuses it."""
    provider = bi.BaseProvider(client=docker_client, cache_dir=tmp_path, bootstrap_missing=False)
    got: list[bi.BaseImage] = []
    with bi.file_lock(tmp_path / "locks" / "base-bookworm.lock"):
        worker = threading.Thread(target=lambda: got.append(provider.get_base("3.11")))
        worker.start()
        worker.join(timeout=2)
        assert worker.is_alive() and got == []  # blocked on the lock, not building
    worker.join(timeout=60)
    assert [g.tag for g in got] == [base_image.tag]


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.parametrize(("suite", "python"), [("bookworm", "3.11"), ("bullseye", "3.9")])
def test_suite_base_has_a_working_python_uv_venv_and_git(
    docker_client: docker.DockerClient, base_image: bi.BaseImage, suite: str, python: str
) -> None:
    """bullseye is bootstrapped here when missing (about 80 s once; the rootfs is cached):
    old projects (a 2019 setuptools PR) need its 3.9."""
    provider = bi.BaseProvider((suite,), client=docker_client, source="local")
    image = provider.get_base(python)
    assert image.suite == suite and image.tag.startswith(f"smelter/base:py{python}-{suite}-")
    script = (
        "python3 --version && uv venv -q --python /usr/bin/python3 /tmp/v "
        "&& /tmp/v/bin/python -c 'import ssl, sqlite3, ctypes, venv; print(\"imports ok\")' "
        "&& git init -q /tmp/r && git -C /tmp/r -c user.name=t -c user.email=t@e "
        "commit -q --allow-empty -m x && git -C /tmp/r log --oneline | wc -l "
        "&& test -s /etc/apt/sources.list -o -d /etc/apt/sources.list.d"
    )
    marker = {"dev.smelter.test-marker": f"suite-check-{suite}"}
    result = eng.run_container(docker_client, image.tag, ["sh", "-c", script], timeout=120,
                               extra_labels=marker)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"Python {python}." in result.output and "imports ok" in result.output
    assert result.output.strip().endswith("1")  # one commit: git works
