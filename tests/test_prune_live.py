"""``smelter images prune`` next to a live image build: the build's step containers and its
untagged layers survive.

Regression test for issue 12: a test suite's prune on the same engine deleted a running
pipeline's build containers (labelled dev.smelter=1 through their parent image, no owner label)
and that build died with exit 137. Scoped to this test's own objects: every one of them carries
a ``dev.smelter.repo`` label unique to the test (the step containers inherit it from a parent
image made here), and prune runs with ``--repo`` / ``match`` of that label only.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path

import docker
import docker.errors
import pytest

from smelter.transforms.adapters import docker_engine as eng
from smelter.transforms.adapters import docker_prune as dprune
from smelter.transforms.adapters.base_images import BaseImage
from tests._calc_repo import make_calc_repo

SMELTER = str(Path(sys.executable).with_name("smelter"))


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid  # reaped: no process has it (until the kernel reuses it, minutes later)


@pytest.mark.docker
def test_prune_during_a_build_spares_its_steps_and_removes_dead_owners(
    docker_client: docker.DockerClient, base_image: BaseImage
) -> None:
    repo = f"smelter-test/prune-live-{secrets.token_hex(4)}"
    match = {eng.LABEL_REPO: repo}
    parent = f"smelter-test/prune-live-parent:{repo.rsplit('-', 1)[1]}"
    tag = f"smelter-test/prune-live:{repo.rsplit('-', 1)[1]}"
    # The parent adds our label to the base image's dev.smelter=1; build steps inherit both.
    parent_dockerfile = f'FROM {base_image.tag}\nLABEL {eng.LABEL_REPO}="{repo}"\n'
    eng.build_image(docker_client, dockerfile=parent_dockerfile, tag=parent,
                    image_labels=eng.labels(eng.KIND_BASE, repo=repo))  # fmt: skip
    dead = docker_client.containers.create(
        parent, ["true"],
        labels={**eng.labels(eng.KIND_CHECK, repo=repo), **eng.owner_labels(),
                eng.LABEL_OWNER_PID: str(_dead_pid())},
    )  # fmt: skip
    built: dict[str, object] = {}

    def build() -> None:
        try:
            built["id"], _ = eng.build_image(
                docker_client,
                dockerfile=f"FROM {parent}\nRUN sleep 20\nRUN echo done > /done\n",
                tag=tag, image_labels=eng.labels(eng.KIND_INSTANCE, repo=repo), timeout=300,
            )  # fmt: skip
        except Exception as e:  # reported by the assertion below, with the build's own words
            built["error"] = e

    thread = threading.Thread(target=build)
    try:
        thread.start()
        flt = {"label": [f"{eng.LABEL}=1", f"{eng.LABEL_REPO}={repo}"]}
        deadline = time.monotonic() + 120
        steps: list[dict[str, object]] = []
        while not steps and time.monotonic() < deadline and thread.is_alive():
            steps = [c for c in docker_client.api.containers(filters=flt)
                     if "sleep 20" in str(c.get("Command"))]  # fmt: skip
            time.sleep(0.2)
        assert steps, f"the build step never showed up: {built}"
        assert eng.LABEL_OWNER_HOST not in (steps[0].get("Labels") or {})  # the bug's premise

        # The real command, as a test suite runs it, while the step sleeps.
        proc = subprocess.run([SMELTER, "images", "prune", "--keep-instances", "--repo", repo],
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith("removed 1 containers"), proc.stdout  # the dead owner's
        assert "kept 1 containers" in proc.stdout, proc.stdout  # the build step
        with pytest.raises(docker.errors.NotFound):
            dead.reload()
        # Then prune without pause until the build ends: steps that exited and wait to be
        # committed, and the next step's fresh container, must be spared as well.
        while thread.is_alive():
            dprune.prune(docker_client, match=match, say=print)
            time.sleep(0.1)
        thread.join()
        assert "error" not in built, built.get("error")
        assert built["id"] and eng.image_exists(docker_client, tag)
        assert docker_client.containers.run(tag, ["cat", "/done"], remove=True) == b"done\n"
    finally:
        thread.join(timeout=300)
        for c in docker_client.api.containers(
            all=True, filters={"label": f"{eng.LABEL_REPO}={repo}"}
        ):
            with contextlib.suppress(docker.errors.NotFound):
                docker_client.api.remove_container(c["Id"], force=True)
        for image in (tag, parent):
            with contextlib.suppress(docker.errors.ImageNotFound):
                docker_client.images.remove(image)


def _labelled_parent(
    client: docker.DockerClient, base_image: BaseImage, name: str
) -> tuple[str, dict[str, str]]:
    """(repo label, match) of a parent image whose labels every build step and layer on it
    inherit: dev.smelter=1 and kind=base (from the base image) and a repo unique to the test."""
    repo = f"smelter-test/{name}-{secrets.token_hex(4)}"
    eng.build_image(client, dockerfile=f'FROM {base_image.tag}\nLABEL {eng.LABEL_REPO}="{repo}"\n',
                    tag=f"smelter-test/{name}-parent:{repo.rsplit('-', 1)[1]}",
                    image_labels=eng.labels(eng.KIND_BASE, repo=repo))  # fmt: skip
    return repo, {eng.LABEL_REPO: repo}


def _remove_all(client: docker.DockerClient, repo: str) -> None:
    for c in client.api.containers(all=True, filters={"label": f"{eng.LABEL_REPO}={repo}"}):
        with contextlib.suppress(docker.errors.NotFound):
            client.api.remove_container(c["Id"], force=True)
    # Children first: an image is removable once nothing is built on it.
    for _ in range(3):
        for img in client.api.images(all=True, filters={"label": f"{eng.LABEL_REPO}={repo}"}):
            with contextlib.suppress(docker.errors.APIError):
                for ref in [t for t in img.get("RepoTags") or () if "<none>" not in t] or [
                    img["Id"]
                ]:
                    client.images.remove(ref, force=True)


@pytest.mark.docker
@pytest.mark.slow
def test_prune_all_during_a_build_spares_its_dangling_layers(
    docker_client: docker.DockerClient, base_image: BaseImage
) -> None:
    """Each step of a build is committed as an untagged image that no container holds until
    the next step's container starts from it; ``prune --all`` (which lists base images, whose
    labels those layers inherit) removed one in that gap and the build failed ("No such
    image"). Pruning without pause through a build of many short steps must leave it whole.
    """
    repo, match = _labelled_parent(docker_client, base_image, "prune-layers")
    parent = f"smelter-test/prune-layers-parent:{repo.rsplit('-', 1)[1]}"
    tag = f"smelter-test/prune-layers:{repo.rsplit('-', 1)[1]}"
    steps = 20
    # Each step sleeps: while it runs, the layer under it is the newest untagged image, so the
    # loop below surely meets such layers even on a loaded machine (CI once met none when the
    # steps took no time); the gaps between a commit and the next step's start stay as short.
    dockerfile = f"FROM {parent}\n" + "".join(
        f"RUN sleep 0.5 && echo {i} > /step{i}\n" for i in range(steps)
    )
    built: dict[str, object] = {}

    def build() -> None:
        try:
            built["id"], _ = eng.build_image(
                docker_client, dockerfile=dockerfile, tag=tag, timeout=600,
                image_labels=eng.labels(eng.KIND_INSTANCE, repo=repo),
            )  # fmt: skip
        except Exception as e:  # reported by the assertion below, with the build's own words
            built["error"] = e

    thread = threading.Thread(target=build)
    spared = 0
    try:
        thread.start()
        while thread.is_alive():
            removed = dprune.prune(docker_client, all_images=True, match=match, say=lambda _m: None)
            spared += removed["layers_spared"]
            time.sleep(0.01)
        thread.join()
        assert "error" not in built, built.get("error")
        assert built["id"]  # (the loop's last prune may have taken the tagged image itself)
        assert spared > 0  # the loop did meet the build's untagged layers
    finally:
        thread.join(timeout=600)
        _remove_all(docker_client, repo)


@pytest.mark.docker
def test_dangling_layers_go_once_old(
    docker_client: docker.DockerClient, base_image: BaseImage
) -> None:
    """A failed or superseded build leaves untagged layers: spared while they may belong to a
    build in progress, removed by the first prune after ``BUILD_GRACE_SECONDS``."""
    repo, match = _labelled_parent(docker_client, base_image, "prune-dangling")
    parent = f"smelter-test/prune-dangling-parent:{repo.rsplit('-', 1)[1]}"
    tag = f"smelter-test/prune-dangling:{repo.rsplit('-', 1)[1]}"
    try:
        ids = [
            eng.build_image(docker_client, dockerfile=f"FROM {parent}\nRUN echo {i} > /v\n",
                            tag=tag, image_labels=eng.labels(eng.KIND_INSTANCE, repo=repo))[0]
            for i in (1, 2)
        ]  # fmt: skip
        old = docker_client.images.get(ids[0])
        assert old.tags == []  # the second build took the tag: the first is dangling
        removed = dprune.prune(docker_client, images=True, match=match, say=print)
        assert removed["layers_spared"] == 1 and removed["images"] == 1  # the tagged one went
        old.reload()  # still there
        later = time.time() + dprune.BUILD_GRACE_SECONDS + 60
        removed = dprune.prune(docker_client, images=True, match=match, say=print, now=later)
        assert removed["images"] == 1 and removed["layers_spared"] == 0
        with pytest.raises(docker.errors.ImageNotFound):
            old.reload()
    finally:
        _remove_all(docker_client, repo)


@pytest.mark.docker
def test_prune_all_keeps_env_and_base_images_while_a_run_is_live(
    docker_client: docker.DockerClient, base_image: BaseImage
) -> None:
    """Env and base images carry no owner; a live run builds instance images FROM them, and
    a build whose env image went a moment before fails. ``--all`` takes them only when the
    prune meets nothing of a live run and they are not fresh."""
    repo, match = _labelled_parent(docker_client, base_image, "prune-env")
    parent = f"smelter-test/prune-env-parent:{repo.rsplit('-', 1)[1]}"
    env_tag = f"smelter-test/prune-env:{repo.rsplit('-', 1)[1]}"
    later = time.time() + dprune.BUILD_GRACE_SECONDS + 60
    try:
        eng.build_image(docker_client, dockerfile=f"FROM {parent}\nRUN echo env > /env\n",
                        tag=env_tag, image_labels=eng.labels(eng.KIND_ENV, repo=repo))  # fmt: skip
        removed = dprune.prune(docker_client, all_images=True, match=match, say=print)
        assert removed["base_spared"] == 2 and removed["images"] == 0  # fresh
        live = docker_client.containers.create(
            parent, ["true"], labels={**eng.labels(eng.KIND_CHECK, repo=repo), **eng.owner_labels()}
        )  # this process is alive: a live run shows on the engine
        removed = dprune.prune(docker_client, all_images=True, match=match, say=print, now=later)
        assert removed["containers_spared"] == 1 and removed["base_spared"] == 2
        assert eng.image_exists(docker_client, env_tag) and eng.image_exists(docker_client, parent)
        live.remove(force=True)
        removed = dprune.prune(docker_client, all_images=True, match=match, say=print, now=later)
        assert removed["images"] == 2 and removed["base_spared"] == 0
        assert not eng.image_exists(docker_client, env_tag)
    finally:
        _remove_all(docker_client, repo)


def test_unowned_containers_count_as_build_steps_only_while_recent() -> None:
    """The pure part of the rule, with the engine's timestamps."""
    now = dprune._engine_time("2024-05-01T10:00:00.123456789Z")
    assert now == pytest.approx(1714557600.123456)
    created = {"Id": "x", "Labels": {eng.LABEL: "1"}, "State": "created"}
    assert dprune.maybe_live_build_step(None, {**created, "Created": now - 5}, now)  # type: ignore[arg-type]
    assert not dprune.maybe_live_build_step(None, {**created, "Created": now - 3600}, now)  # type: ignore[arg-type]
    running = {"Id": "x", "Labels": {eng.LABEL: "1"}, "State": "running", "Created": 0}
    assert dprune.maybe_live_build_step(None, running, now)  # type: ignore[arg-type]
    owned = {**running, "Labels": {eng.LABEL: "1", **eng.owner_labels()}}
    assert not dprune.maybe_live_build_step(None, owned, now)  # type: ignore[arg-type]


def test_untagged_images_count_as_build_layers_only_while_recent() -> None:
    now = 1714557600.0
    listed = {"Id": "sha256:x", "RepoTags": ["<none>:<none>"], "Created": int(now) - 5}
    assert dprune.maybe_live_build_layer(listed, now)
    assert not dprune.maybe_live_build_layer({**listed, "Created": int(now) - 3600}, now)
    assert not dprune.maybe_live_build_layer({**listed, "RepoTags": ["smelter/env:x"]}, now)
    inspected = {"RepoTags": [], "Created": "2024-05-01T09:59:58.5Z"}  # Image.attrs form
    assert dprune.maybe_live_build_layer(inspected, now)


def _cli_run(repo: Path, name: str, out: Path) -> list[str]:
    return [
        sys.executable, "-m", "smelter.pipeline.cli", "run", "--repo", str(repo),
        "--repo-name", name, "--out", str(out), "--until", "validate", "--no-progress",
        "--workers", "2", "--mine-max-prs", "2",
        "--validate-reruns-before", "1", "--validate-reruns-after", "1",
    ]  # fmt: skip


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}


def _tasks(out: Path) -> dict[str, list[str]]:
    rows = [json.loads(line) for line in (out / "tasks.jsonl").read_text().splitlines()]
    return {r["instance_id"]: r["FAIL_TO_PASS"] for r in rows}


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.timeout(2400)  # two pipeline runs: 9 minutes at a load average of 11-14 on 2 cores
def test_two_runs_with_prunes_between_and_during_both_finish(
    docker_client: docker.DockerClient, base_image: BaseImage, tmp_path: Path
) -> None:
    """Issue 14, done when: two runs on one engine, with ``smelter images prune`` between them
    and while the second one builds, both finish with all their tasks.

    The prune between removes the first run's kept instance images (it has ended), so the
    second run (its own output folder and stage cache) builds them again, and prunes run
    without pause meanwhile: its aliases, test containers, build steps and untagged layers
    must all survive. Scoped with ``--repo`` to this test's repository (instance build steps
    inherit the repo label from the env image), so nobody else's objects are touched.
    """
    repo_path, prs = make_calc_repo(tmp_path)
    name = f"regtest/prune-runs-{secrets.token_hex(4)}"
    owner, short = name.split("/")
    want = {f"{owner}__{short}-{pr.number}": sorted(pr.fail_to_pass) for pr in prs}
    prune_cli = [SMELTER, "images", "prune", "--repo", name]
    try:
        a = subprocess.run(_cli_run(repo_path, name, tmp_path / "out-a"), env=_clean_env(),
                           capture_output=True, text=True, timeout=1500)  # fmt: skip
        assert a.returncode == 0, a.stderr[-4000:]
        tasks_a = _tasks(tmp_path / "out-a")
        assert len(tasks_a) == 2 and all(want[i] == sorted(f) for i, f in tasks_a.items()), tasks_a

        between = subprocess.run(prune_cli, capture_output=True, text=True, timeout=300)
        assert between.returncode == 0, between.stderr
        assert between.stdout.startswith("removed 0 containers and 2 images"), between.stdout

        errors = tmp_path / "run-b.stderr"  # a file: nobody reads a pipe while the run goes on
        with errors.open("wb") as f:
            b = subprocess.Popen(_cli_run(repo_path, name, tmp_path / "out-b"),
                                 env=_clean_env(), stdout=subprocess.DEVNULL, stderr=f)  # fmt: skip
        flt = {"label": [f"{eng.LABEL}=1", f"{eng.LABEL_REPO}={name}"]}
        during_build = 0
        cli_during_build: subprocess.CompletedProcess[str] | None = None
        try:
            while b.poll() is None:
                steps = [c for c in docker_client.api.containers(filters=flt)
                         if eng.LABEL_OWNER_HOST not in (c.get("Labels") or {})]  # fmt: skip
                if steps and cli_during_build is None:
                    cli_during_build = subprocess.run(prune_cli, capture_output=True, text=True,
                                                      timeout=300)  # fmt: skip
                    during_build += 1
                else:
                    dprune.prune(docker_client, images=True, match={eng.LABEL_REPO: name},
                              say=lambda _m: None)  # fmt: skip
                    during_build += bool(steps)
                time.sleep(0.3)
        finally:
            if b.poll() is None:
                b.kill()
            b.wait()
        assert b.returncode == 0, errors.read_text()[-4000:]
        assert _tasks(tmp_path / "out-b") == tasks_a  # all of them, the same
        assert cli_during_build is not None and cli_during_build.returncode == 0
        assert during_build >= 1, "no prune ran while the second run was building"
    finally:
        _remove_all(docker_client, name)
