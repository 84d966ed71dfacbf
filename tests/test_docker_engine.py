"""The engine adapter: retry classification, labels, tar contexts; real containers and prune."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
from pathlib import Path

import docker
import docker.errors
import pytest
import requests

from smelter.transforms.adapters import docker_engine as eng
from smelter.transforms.adapters import docker_prune as dprune
from smelter.transforms.adapters.base_images import BaseImage
from smelter.transforms.errors import Retryable


def test_labels_always_mark_smelter_and_kind() -> None:
    assert eng.labels(eng.KIND_ENV, repo="o/r", env_hash="h") == {
        "dev.smelter": "1", "dev.smelter.kind": "env", "dev.smelter.repo": "o/r",
        "dev.smelter.env-hash": "h",
    }  # fmt: skip


def test_retry_retries_transient_errors_then_gives_up() -> None:
    calls, sleeps = [], []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise requests.exceptions.ConnectionError("reset")
        return "ok"

    assert eng.retry(flaky, sleep=sleeps.append) == "ok"
    assert sleeps == [0.5, 1.0]

    def down() -> None:
        raise requests.exceptions.ConnectionError("refused")

    with pytest.raises(Retryable, match="kept failing"):
        eng.retry(down, attempts=3, sleep=lambda _s: None)


def test_retry_does_not_retry_client_errors() -> None:
    calls = []

    def missing() -> None:
        calls.append(1)
        raise docker.errors.ImageNotFound("No such image: x")

    with pytest.raises(docker.errors.ImageNotFound):
        eng.retry(missing, sleep=lambda _s: None)
    assert len(calls) == 1


def test_tar_files_is_deterministic() -> None:
    a = eng.tar_files({"b.txt": "2", "a/x.txt": b"1"})
    assert a == eng.tar_files({"a/x.txt": b"1", "b.txt": "2"})


def test_owner_alive() -> None:
    assert eng.owner_alive({}) is False  # no owner recorded: a leftover
    me = eng.owner_labels()
    assert eng.owner_alive(me) is True
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    assert eng.owner_alive({**me, eng.LABEL_OWNER_PID: dead}) is False
    assert eng.owner_alive({**me, eng.LABEL_OWNER_HOST: "elsewhere"}) is True


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return int(done.stdout)


def test_alias_tags_name_their_content_tag_and_owner() -> None:
    owner = eng.new_owner()
    content = "smelter/instance:acme-calc-1-0123456789abcdef"
    a, b = eng.alias_tag(content, owner), eng.alias_tag(content, owner)
    assert a != b and len(a.rpartition(":")[2]) <= 128  # one alias per record, a valid tag
    assert eng.content_tag(a) == eng.content_tag(b) == content
    assert eng.owner_of(a) == owner and eng.owner_of(content) is None
    # Other tags are their own content tags, dots and registry ports included.
    for tag in ("python:3.11-slim", "localhost:5000/x/y:1.2.3", "smelter/instance:x.y.z"):
        assert eng.content_tag(tag) == tag and eng.owner_of(tag) is None


def test_owner_token_alive_by_host_and_pid() -> None:
    assert eng.owner_token_alive(eng.new_owner()) is True  # this process
    assert eng.owner_token_alive(eng.new_owner(pid=_dead_pid())) is False  # a killed run
    assert eng.owner_token_alive(eng.new_owner(host="elsewhere", pid=_dead_pid())) is True
    assert eng.owner_token_alive(eng.new_owner(pid=9_999_999_999)) is False


def test_tag_lock_excludes_and_leaves_no_file(tmp_path: Path) -> None:
    inside: list[int] = []
    overlaps: list[int] = []

    def hold(n: int) -> None:
        for _ in range(20):
            with eng.tag_lock("smelter/instance:x-1", tmp_path):
                inside.append(n)
                if len(inside) > 1:
                    overlaps.append(n)
                time.sleep(0.001)
                inside.remove(n)

    threads = [threading.Thread(target=hold, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert overlaps == [] and list(tmp_path.iterdir()) == []


@pytest.mark.docker
def test_ensure_engine_reports_a_running_engine(docker_client: docker.DockerClient) -> None:
    assert "answers" in eng.ensure_engine(start=False)


@pytest.mark.docker
def test_run_container_copies_files_in_and_always_removes(
    docker_client: docker.DockerClient, base_image: BaseImage
) -> None:
    marker = {"dev.smelter.test-marker": "run-container"}
    res = eng.run_container(
        docker_client, base_image.tag, ["sh", "-c", "cat /in/x.txt; exit 3"],
        files={"/in/x.txt": "hello"}, extra_labels=marker,
    )  # fmt: skip
    assert (res.exit_code, res.output.strip(), res.timed_out) == (3, "hello", False)
    slow = eng.run_container(docker_client, base_image.tag, ["sleep", "60"], timeout=2,
                             extra_labels=marker)  # fmt: skip
    assert slow.timed_out and slow.exit_code is None and slow.seconds < 30
    left = docker_client.api.containers(
        all=True, filters={"label": "dev.smelter.test-marker=run-container"}
    )
    assert left == []


@pytest.mark.docker
def test_network_none_has_no_network(
    docker_client: docker.DockerClient, base_image: BaseImage
) -> None:
    script = "python -c \"import socket; socket.create_connection(('pypi.org', 443), 3)\""
    res = eng.run_container(docker_client, base_image.tag, ["sh", "-c", script], timeout=60)
    assert res.exit_code != 0


@pytest.mark.docker
def test_prune_removes_dead_owners_leftovers_and_spares_live_ones(
    docker_client: docker.DockerClient, base_image: BaseImage
) -> None:
    tag = {"dev.smelter.test-marker": "prune"}
    live = docker_client.containers.create(
        base_image.tag, ["true"], labels={**eng.labels(eng.KIND_CHECK), **eng.owner_labels(), **tag}
    )
    dead = docker_client.containers.create(
        base_image.tag, ["true"],
        labels={**eng.labels(eng.KIND_CHECK), **eng.owner_labels(), **tag,
                eng.LABEL_OWNER_PID: "999999999"},
    )  # fmt: skip
    try:
        dprune.prune(docker_client, match=tag, say=print)  # scoped: other tests' containers live
        ids = {c["Id"] for c in docker_client.api.containers(
            all=True, filters={"label": "dev.smelter.test-marker=prune"})}  # fmt: skip
        assert live.id in ids and dead.id not in ids
    finally:
        for c in (live, dead):
            with contextlib.suppress(docker.errors.NotFound):
                c.remove(force=True)


@pytest.mark.docker
def test_prune_images_removes_unused_instance_images_only(
    docker_client: docker.DockerClient, base_image: BaseImage
) -> None:
    marker = {"dev.smelter.test-marker": "prune-images"}
    tag = "smelter/instance:prune-test"
    eng.build_image(
        docker_client, dockerfile=f"FROM {base_image.tag}\nRUN echo x > /x\n", tag=tag,
        image_labels={**eng.labels(eng.KIND_INSTANCE), **marker},
    )  # fmt: skip
    user = docker_client.containers.create(
        tag, ["true"], labels={**eng.labels(eng.KIND_CHECK), **eng.owner_labels(), **marker}
    )
    try:
        dprune.prune(docker_client, images=True, match=marker, say=print)
        assert eng.image_exists(docker_client, tag)  # a live owner's container still uses it
    finally:
        user.remove(force=True)
    result = dprune.prune(docker_client, images=True, match=marker, say=print)
    assert result["images"] == 1 and not eng.image_exists(docker_client, tag)
    assert eng.image_exists(docker_client, base_image.tag)  # never a base without --all


@pytest.mark.docker
def test_aliases_hold_an_image_and_prune_spares_live_runs_only(
    docker_client: docker.DockerClient, base_image: BaseImage
) -> None:
    marker = {"dev.smelter.test-marker": "prune-aliases"}
    content = "smelter/instance:prune-alias-test"
    image_id, _ = eng.build_image(
        docker_client, dockerfile=f"FROM {base_image.tag}\nRUN echo alias > /x\n", tag=content,
        image_labels={**eng.labels(eng.KIND_INSTANCE), **marker},
    )  # fmt: skip
    live = eng.acquire_alias(docker_client, content, eng.new_owner())
    other_live = eng.acquire_alias(docker_client, content, eng.new_owner())
    killed = eng.acquire_alias(docker_client, content, eng.new_owner(pid=_dead_pid()))
    assert live and other_live and killed
    assert eng.acquire_alias(docker_client, "smelter/instance:never-built", "x") is None
    try:
        # One run removing its alias leaves the image to the others.
        assert eng.remove_image(docker_client, live, force=False)
        assert eng.image_exists(docker_client, other_live)
        # Prune: the killed run's alias goes; the live run's alias and the content tag stay.
        result = dprune.prune(docker_client, images=True, match=marker, say=print)
        assert result["spared"] == 1 and result["images"] == 0
        assert set(docker_client.images.get(image_id).tags) == {content, other_live}
        # The last alias takes the content tag and so the image with it.
        assert eng.remove_image(docker_client, other_live, force=False)
        assert not eng.image_exists(docker_client, image_id)
        assert not eng.remove_image(docker_client, other_live)  # already gone: False
        # What a SIGKILLed run left behind (content tag + its alias) goes entirely.
        image_id, _ = eng.build_image(
            docker_client, dockerfile=f"FROM {base_image.tag}\nRUN echo alias > /x\n",
            tag=content, image_labels={**eng.labels(eng.KIND_INSTANCE), **marker},
        )  # fmt: skip
        assert eng.acquire_alias(docker_client, content, eng.new_owner(pid=_dead_pid()))
        result = dprune.prune(docker_client, images=True, match=marker, say=print)
        assert result["images"] == 1 and not eng.image_exists(docker_client, image_id)
    finally:
        for img in docker_client.images.list(filters={"label": "dev.smelter.test-marker"
                                                                "=prune-aliases"}):  # fmt: skip
            docker_client.images.remove(img.id, force=True)
