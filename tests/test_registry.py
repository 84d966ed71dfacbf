"""``--image-registry`` against a real registry (Debian's ``docker-registry`` on 127.0.0.1).

Run A builds the env image and pushes it, and pushes the kept task's instance image; the task
names the registry. With every local copy of those images removed and a fresh output folder
(a worker on another machine, with no stage cache), run B pulls the env image instead of
building it: the same image id (a pulled image keeps its config digest; a rebuild would not),
and the record says so. The task's published image pulls after local removal.

Scoped to this test's objects: the repository name is unique to the test, so the env and
instance tags (which start with its slug) are too, and only those are removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import pytest

from smelter.transforms.adapters import docker_engine as eng
from smelter.transforms.adapters import registry as reg
from smelter.transforms.adapters.base_images import BaseImage
from tests._calc_repo import ONE_PR_BUGGY, make_one_pr_repo

CLI = [sys.executable, "-m", "smelter.pipeline.cli"]
PREFIX = "smelter-test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[reg.Registry]:
    """A real registry on 127.0.0.1 storing in ``tmp_path`` (package installed when missing)."""
    addr = f"127.0.0.1:{free_port()}"
    config = tmp_path / "registry.yml"
    config.write_text(reg.registry_config(str(tmp_path / "registry-data"), addr))
    proc = reg.start_local_registry(str(config), str(tmp_path / "registry.log"))
    try:
        yield reg.Registry(addr, PREFIX)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run(repo: Path, name: str, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    cmd = [*CLI, "run", "--repo", str(repo), "--repo-name", name, "--out", str(out),
           "--until", "validate", "--no-progress", "--workers", "1", *extra]  # fmt: skip
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1500)


def tasks(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "tasks.jsonl").read_text().splitlines()]


def remove_local(client: docker.DockerClient, slug: str) -> list[str]:
    """Remove every local image with a tag naming this test's repository; the tags removed."""
    removed = []
    for img in client.images.list(filters={"label": f"{eng.LABEL}=1"}):
        for t in img.tags:
            if slug in t:
                with contextlib.suppress(docker.errors.ImageNotFound):
                    client.images.remove(t, force=True)
                removed.append(t)
    return removed


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.timeout(2400)  # two pipeline runs: 13 minutes at a load average of 17 on 2 cores
def test_env_images_travel_through_the_registry_and_tasks_name_it(
    docker_client: docker.DockerClient,
    base_image: BaseImage,
    registry: reg.Registry,
    tmp_path: Path,
) -> None:
    token = secrets.token_hex(4)
    name = f"regtest/calc-{token}"
    slug = f"regtest-calc-{token}"
    repo = tmp_path / "calc"
    make_one_pr_repo(repo)
    flag = ["--image-registry", str(registry)]
    try:
        # -- run A: builds, pushes the env image and the kept task's instance image
        started = time.monotonic()
        a = run(repo, name, tmp_path / "out-a", *flag)
        seconds_a = time.monotonic() - started
        assert a.returncode == 0, a.stderr[-4000:]
        assert f"image registry {registry} answers" in a.stderr
        (task_a,) = tasks(tmp_path / "out-a")
        env_a = task_a["environment"]
        assert env_a["env_cache_hit"] is False  # built here
        image = env_a["instance_image"]
        assert image.startswith(f"{registry}/instance:{slug}-"), image
        catalog = registry.catalog()
        assert f"{PREFIX}/env" in catalog and f"{PREFIX}/instance" in catalog, catalog
        env_id = docker_client.images.get(env_a["env_image"]).id
        # The registry names were temporary: local tags are the content tags only.
        assert not [t for i in docker_client.images.list() for t in i.tags if str(registry) in t]

        # -- another machine: no local images of this repository, no stage cache
        removed = remove_local(docker_client, slug)
        assert env_a["env_image"] in removed
        assert not eng.image_exists(docker_client, env_a["env_image"])
        started = time.monotonic()
        b = run(repo, name, tmp_path / "out-b", *flag)
        seconds_b = time.monotonic() - started
        assert b.returncode == 0, b.stderr[-4000:]
        (task_b,) = tasks(tmp_path / "out-b")
        env_b = task_b["environment"]
        assert env_b["env_image"] == env_a["env_image"]
        assert env_b["env_cache_hit"] is True  # pulled, not built
        assert docker_client.images.get(env_b["env_image"]).id == env_id  # the very image
        assert (
            task_b["FAIL_TO_PASS"]
            == task_a["FAIL_TO_PASS"]
            == ["tests/test_core.py::test_add_negative"]
        )
        assert env_b["instance_image"].startswith(f"{registry}/instance:{slug}-")
        print(f"run A (build + push) {seconds_a:.1f}s, run B (pull) {seconds_b:.1f}s")

        # -- the published name resolves from the registry alone
        remove_local(docker_client, slug)
        for published in {env_a["instance_image"], env_b["instance_image"]}:
            with contextlib.suppress(docker.errors.ImageNotFound):
                docker_client.images.remove(published)
            pulled = subprocess.run(["docker", "pull", published], capture_output=True,
                                    text=True, timeout=300)  # fmt: skip
            assert pulled.returncode == 0, pulled.stderr
            out = docker_client.containers.run(
                published, ["cat", "/testbed/src/calc/core.py"], remove=True, network_mode="none"
            )
            assert out.decode() == ONE_PR_BUGGY  # the source at base_commit
    finally:
        remove_local(docker_client, slug)
        for img in docker_client.images.list():
            for t in img.tags:
                if t.startswith(f"{registry}/"):
                    with contextlib.suppress(docker.errors.ImageNotFound):
                        docker_client.images.remove(t, force=True)


def test_bad_registry_form_is_one_line(tmp_path: Path) -> None:
    repo = tmp_path / "calc"
    make_one_pr_repo(repo)
    p = run(repo, "regtest/calc", tmp_path / "out", "--image-registry", "smelter-test")
    assert p.returncode == 2 or p.returncode == 1, p.stderr
    assert "Traceback" not in p.stderr
    assert "--image-registry 'smelter-test': expected HOST:PORT/prefix" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr


@pytest.mark.slow  # a real subprocess run: seconds (make unit skips it)
def test_registry_that_does_not_answer_is_one_line(tmp_path: Path) -> None:
    repo = tmp_path / "calc"
    make_one_pr_repo(repo)
    dead = f"127.0.0.1:{free_port()}/smelter-test"  # nothing listens there
    p = run(repo, "regtest/calc", tmp_path / "out", "--image-registry", dead)
    assert p.returncode == 1, p.stderr
    assert "Traceback" not in p.stderr
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith(f"smelter: error: --image-registry {dead}: no registry answers"), last
    assert not (tmp_path / "out" / "tasks.jsonl").exists()


def test_help_names_the_option() -> None:
    p = subprocess.run([*CLI, "run", "--help"], capture_output=True, text=True, timeout=120)
    text = " ".join(p.stdout.split())
    assert "--image-registry REGISTRY HOST:PORT/prefix of a Docker registry" in text


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("127.0.0.1:5000/smelter", ("127.0.0.1:5000", "smelter")),
        ("localhost:5000/a/b", ("localhost:5000", "a/b")),
        ("registry.example.com/team/smelter", ("registry.example.com", "team/smelter")),
    ],
)
def test_registry_names(text: str, parsed: tuple[str, str]) -> None:
    r = reg.Registry.parse(text)
    assert (r.host, r.prefix) == parsed
    assert r.name("smelter/env:acme-calc-0123").endswith(f"{parsed[1]}/env:acme-calc-0123")
    # An alias names its content tag's image: the registry gets the content tag, never the
    # run's alias.
    alias = eng.alias_tag("smelter/instance:x-1", eng.new_owner())
    assert r.name(alias) == f"{text}/instance:x-1"


@pytest.mark.parametrize("text", ["smelter", "foo/bar", "127.0.0.1:5000", "http://h:1/x", "h:1/UP"])
def test_registry_forms_refused(text: str) -> None:
    with pytest.raises(ValueError, match="expected HOST:PORT/prefix"):
        reg.Registry.parse(text)
