"""kill -9 of `smelter run` during validation: nothing of the run goes on, the next run collects
what it left and completes, and a run after that rebuilds no image whose validation is cached.

Real things only: a one-PR repository built here, the real CLI in a subprocess (Beam's
multi-process DirectRunner, so worker processes whose parent is a shell, not the run), the real
engine. Only the run's main process is killed, as a crash would; its workers must follow.
Docker's event stream is the witness: a container created and removed between two polls of
``docker ps -a`` still shows in it, and so does every image build (a ``tag`` event of the
content tag itself, not of an alias).
"""

from __future__ import annotations

import collections
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import docker
import pytest

from smelter.schemas import Task
from smelter.transforms.adapters import docker_engine as eng
from smelter.transforms.adapters.base_images import BaseImage
from smelter.transforms.validate.images import KEPT_SUFFIX, kept_tag
from tests._calc_repo import make_one_pr_repo

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(1800)]

CLI = [sys.executable, "-m", "smelter.pipeline.cli"]
WATCH_SECONDS = 20  # how long after the kill we watch for containers of the run


def cli(repo: Path, name: str, out: Path) -> list[str]:
    return [
        *CLI, "run", "--repo", str(repo), "--repo-name", name, "--out", str(out),
        "--until", "validate", "--no-progress", "--workers", "2",
    ]  # fmt: skip


def env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}


def ticks(out: Path) -> dict[str, collections.Counter[str]]:
    counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for f in (out / ".progress").glob("*.ticks"):
        counts[f.name.split(".", 1)[0]].update(f.read_text())
    return counts


class EventLog:
    """Engine events about one instance, streamed live from creation until ``close``.

    Live, not queried afterwards: the engine keeps only its last 256 events for ``since``
    queries, and on a shared engine those are gone within minutes.
    """

    def __init__(self, instance_id: str) -> None:
        self.events: list[dict] = []
        self._client = docker.from_env()
        self._stream = self._client.events(
            decode=True, filters={"label": [f"{eng.LABEL_INSTANCE}={instance_id}"]}
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        with contextlib.suppress(Exception):  # the stream ends with an error when closed
            for e in self._stream:
                self.events.append(e)

    def since(self, since_ns: int, kind: str, actions: tuple[str, ...]) -> list[dict]:
        return [
            e for e in list(self.events)
            if e.get("Type") == kind and e.get("Action") in actions
            and int(e.get("timeNano", 0)) >= since_ns
        ]  # fmt: skip

    def builds(self, since_ns: int) -> list[str]:
        """Instance images built since then: tags of a content tag itself, not of an alias
        (nor of the kept tag validation adds to a kept task's image)."""
        names = [
            e["Actor"]["Attributes"].get("name", "")
            for e in self.since(since_ns, "image", ("tag",))
        ]
        return [n for n in names if eng.owner_of(n) is None and not n.endswith(KEPT_SUFFIX)]

    def describe(self, since_ns: int) -> list[tuple[str, str, str]]:
        """(type, action, name) of every event since then: the story of a failed assertion."""
        return [
            (e.get("Type", ""), e.get("Action", ""), e["Actor"]["Attributes"].get("name", ""))
            for e in list(self.events) if int(e.get("timeNano", 0)) >= since_ns
        ]  # fmt: skip

    def close(self) -> None:
        self._stream.close()
        self._thread.join(5)
        self._client.close()


def session_processes(sid: int) -> list[int]:
    """Live processes of session ``sid`` (the run and everything it started)."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":  # fields[3]: session id; [0]: state
            alive.append(int(stat.parent.name))
    return alive


def leftovers(client: docker.DockerClient, instance_id: str) -> tuple[list[str], list[str]]:
    flt = {"label": [f"{eng.LABEL_INSTANCE}={instance_id}"]}
    containers = [c["Id"][:12] for c in client.api.containers(all=True, filters=flt)]
    images = [t for img in client.images.list(filters=flt) for t in img.tags or [img.short_id]]
    return containers, sorted(images)


def test_kill_9_during_validation_then_resume_rebuilds_nothing_validated(
    tmp_path: Path, docker_client: docker.DockerClient, base_image: BaseImage
) -> None:
    name = f"crash/onepr{secrets.token_hex(3)}"
    instance_id = f"{name.replace('/', '__')}-1"
    repo, out = tmp_path / "repo", tmp_path / "out"
    make_one_pr_repo(
        repo,
        "    time.sleep(2)  # every run lasts a while: the kill lands mid-way\n"
        "    assert add(1, 2) == 3\n",
    )

    log = EventLog(instance_id)
    try:
        check_runs(repo, name, out, instance_id, docker_client, log)
    finally:
        log.close()
        for tag in leftovers(docker_client, instance_id)[1]:  # the kept task's image: ours
            with contextlib.suppress(docker.errors.APIError):
                eng.remove_image(docker_client, tag)


def check_runs(
    repo: Path, name: str, out: Path, instance_id: str, client: docker.DockerClient, log: EventLog
) -> None:
    # -- run A, killed (main process only) once its first validation container exists
    errors = out.parent / "run-a.stderr"
    with errors.open("wb") as f:  # a file, not a pipe nobody reads while the run goes on
        proc = subprocess.Popen(cli(repo, name, out), env=env(), start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=f)  # fmt: skip
    test_filter = {"label": [f"{eng.LABEL_INSTANCE}={instance_id}",
                             f"{eng.LABEL_KIND}={eng.KIND_TEST}"]}  # fmt: skip
    try:
        deadline = time.monotonic() + 1200
        while not client.api.containers(all=True, filters=test_filter):
            assert proc.poll() is None, errors.read_text()[-3000:]
            assert time.monotonic() < deadline, "validation never started"
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        gone_ns = time.time_ns()  # the run has exited (and is reaped): it is gone from here on
        assert log.builds(0), "the event log saw no build of run A's image"
        time.sleep(WATCH_SECONDS)
        created = {e["id"] for e in log.since(gone_ns, "container", ("create",))}
        started = {e["id"] for e in log.since(gone_ns, "container", ("start",))}
        destroyed = {e["id"] for e in log.since(gone_ns, "container", ("destroy",))}
        # A container whose creation was in flight when the run died may appear, but never
        # starts: the worker checks the run between create and start. (Orphaned workers made
        # and started new containers for a minute.)
        assert not created & started, log.describe(gone_ns)
        # A start in flight at the kill may land; nothing more than the runs of one task in
        # flight (validate_parallel_runs = 2), and those are removed by the dying worker.
        assert len(created | started) <= 2, log.describe(gone_ns)
        assert (created | started) <= destroyed, log.describe(gone_ns)
        # The workers went with the run (their parent shell too), not a minute later.
        assert session_processes(proc.pid) == []
    finally:
        if session_processes(proc.pid):  # a failed assertion must not leave workers running
            os.killpg(proc.pid, signal.SIGKILL)
    stale_temp = sorted(out.glob("beam-temp-*"))

    # -- run B on the same folder: collects run A's leftovers and completes
    b_start = time.time_ns()
    run_b = subprocess.run(cli(repo, name, out), env=env(), capture_output=True, text=True,
                           timeout=1500)  # fmt: skip
    (out.parent / "run-b.stderr").write_text(run_b.stderr)  # kept with the test's tmp_path
    (out.parent / "events.txt").write_text("\n".join(map(str, log.describe(0))))
    assert run_b.returncode == 0, run_b.stdout[-3000:] + run_b.stderr[-5000:]
    if stale_temp:
        assert "beam-temp" in run_b.stderr and not list(out.glob("beam-temp-*"))
    tasks = (out / "tasks.jsonl").read_text().splitlines()
    (task,) = [Task.model_validate_json(t) for t in tasks]
    assert task.FAIL_TO_PASS == ["tests/test_core.py::test_add_negative"]
    # Nothing of A's or B's stays but the kept task's image, under its content and kept tags
    # (what `smelter export --harness-images` builds on).
    kept = sorted([task.environment.instance_image, kept_tag(task.environment.instance_image)])
    assert leftovers(client, instance_id) == ([], kept)
    # Run A never finished validating: B had to build the image again (and this proves the
    # build counter sees builds at all).
    assert len(log.builds(b_start)) == 1, (log.describe(b_start), run_b.stderr[-3000:])

    # -- run C: everything cached; nothing is built again for it
    c_start = time.time_ns()
    run_c = subprocess.run(cli(repo, name, out), env=env(), capture_output=True, text=True,
                           timeout=1500)  # fmt: skip
    assert run_c.returncode == 0, run_c.stdout[-3000:] + run_c.stderr[-5000:]
    assert log.builds(c_start) == []
    t = ticks(out)
    assert t["environment"] == collections.Counter({"c": 1}), t["environment"]
    assert t["validate"] == collections.Counter({"c": 1}), t["validate"]
    assert (out / "tasks.jsonl").read_text().splitlines() == tasks
    assert leftovers(client, instance_id) == ([], kept)
