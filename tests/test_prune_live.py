"""``smelter images prune`` next to a live image build: the build's step containers survive.

Regression test for issue 12: a test suite's prune on the same engine deleted a running
pipeline's build containers (labelled dev.smelter=1 through their parent image, no owner label)
and that build died with exit 137. Scoped to this test's own objects: every one of them carries
a ``dev.smelter.repo`` label unique to the test (the step containers inherit it from a parent
image made here), and prune runs with ``--repo`` / ``match`` of that label only.
"""

from __future__ import annotations

import contextlib
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path

import docker
import docker.errors
import pytest

from smelter.transforms import docker_engine as eng
from smelter.transforms.base_images import BaseImage

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
            eng.prune(docker_client, match=match, say=print)
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


def test_unowned_containers_count_as_build_steps_only_while_recent() -> None:
    """The pure part of the rule, with the engine's timestamps."""
    now = eng._engine_time("2024-05-01T10:00:00.123456789Z")
    assert now == pytest.approx(1714557600.123456)
    created = {"Id": "x", "Labels": {eng.LABEL: "1"}, "State": "created"}
    assert eng.maybe_live_build_step(None, {**created, "Created": now - 5}, now)  # type: ignore[arg-type]
    assert not eng.maybe_live_build_step(None, {**created, "Created": now - 3600}, now)  # type: ignore[arg-type]
    running = {"Id": "x", "Labels": {eng.LABEL: "1"}, "State": "running", "Created": 0}
    assert eng.maybe_live_build_step(None, running, now)  # type: ignore[arg-type]
    owned = {**running, "Labels": {eng.LABEL: "1", **eng.owner_labels()}}
    assert not eng.maybe_live_build_step(None, owned, now)  # type: ignore[arg-type]
