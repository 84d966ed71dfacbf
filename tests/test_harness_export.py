"""Issue 15's done-when, measured on the demo with the real ``swebench`` 5.x CLI and real Docker.

- ``smelter demo`` (the session's shared ``demo_out`` run: no extra demo run here), then
  ``smelter export D --dest X --harness-images``, then the command that export prints
  (``harness.evaluate_command``): gold resolves every demo task, an empty patch none. No other
  step: validation keeps the instance images of the tasks it keeps, and the flat JSONL names
  the harness images, which carry the fix for the demo's Latin-1 source file.
- ``--docker-archive``: the archives are loaded into a second Docker engine this test starts
  (its own data root, exec root and socket, no bridge, no images of ours), and the same command
  with ``DOCKER_HOST`` pointing there resolves every task with gold.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import jsonlines
import pytest

from smelter.pipeline.demo.prs import DEMO_PRS
from smelter.pipeline.publish.harness import evaluate_argv, evaluate_command, harness_image_name
from smelter.pipeline.publish.images import ARCHIVE_MANIFEST

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(3600)]

CLI = [sys.executable, "-m", "smelter.pipeline.cli"]


def _env(**extra: str) -> dict[str, str]:
    """The environment a user's shell would have: the venv's bin (``swebench``) on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return {**env, **extra}


def _smelter(*args: str) -> str:
    proc = subprocess.run([*CLI, *args], capture_output=True, text=True, env=_env(), timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def _printed_command(stdout: str) -> str:
    (line,) = [ln for ln in stdout.splitlines() if ln.startswith("evaluate with: ")]
    return line.removeprefix("evaluate with: ")


def _swebench(argv: list[str], cwd: Path, run_id: str, model: str, **env: str) -> dict:
    """Run a swebench command as a user would and read its final report.

    The final report lists every image on the engine and then inspects each; one removed in
    between (another run sharing the engine) raises. Finished instances keep their
    report.json, so running the command again only redoes the listing.
    """
    cwd.mkdir(parents=True, exist_ok=True)
    for attempt in range(3):
        proc = subprocess.run(
            argv, cwd=cwd, capture_output=True, text=True, env=_env(**env), timeout=3000
        )
        report = cwd / f"{model}.{run_id}.json"
        if proc.returncode == 0 and report.is_file():
            return json.loads(report.read_text())
        assert attempt < 2, proc.stdout[-4000:] + proc.stderr[-4000:]
    raise AssertionError("unreachable")


def _demo_ids(x: Path) -> list[str]:
    with jsonlines.open(x / "tasks.jsonl") as rows:
        return sorted(r["instance_id"] for r in rows)


def test_demo_export_then_printed_command_resolves_gold_and_no_empty_patch(
    demo_out: Path, tmp_path: Path
) -> None:
    x = tmp_path / "X"
    started = time.monotonic()
    stdout = _smelter("export", str(demo_out), "--dest", str(x), "--harness-images")
    command = _printed_command(stdout)
    assert command == evaluate_command(x)
    ids = _demo_ids(x)
    assert ids and len(ids) == sum(p.valid for p in DEMO_PRS)
    with jsonlines.open(x / "tasks.jsonl") as rows:
        assert {r["image"] for r in rows} == {harness_image_name(i) for i in ids}

    gold = _swebench(shlex.split(command), tmp_path / "gold", "smelter-gold", "gold")
    assert gold["resolved_ids"] == ids, gold
    assert gold["error_ids"] == [] and gold["unresolved_ids"] == []

    empty = tmp_path / "empty.jsonl"
    with jsonlines.open(empty, "w") as w:
        w.write_all(
            {"instance_id": i, "model_patch": "", "model_name_or_path": "empty"} for i in ids
        )
    argv = evaluate_argv(x / "tasks.jsonl", empty, run_id="smelter-empty")
    report = _swebench(argv, tmp_path / "empty", "smelter-empty", "empty")
    assert report["resolved_ids"] == [] and report["empty_patch_ids"] == ids, report
    print(
        f"done-when: gold {len(gold['resolved_ids'])}/{len(ids)}, empty "
        f"{len(report['resolved_ids'])}/{len(ids)}, {time.monotonic() - started:.0f}s"
    )


@pytest.fixture
def fresh_engine() -> Iterator[str]:
    """A second Docker engine of its own (data root, exec root, socket; no bridge, no
    iptables): nothing of ours is on it. Yields its DOCKER_HOST; stopped and removed after.

    Short paths under /tmp: a unix socket path must fit in 108 bytes.
    """
    root = Path(tempfile.mkdtemp(prefix="smelter-dd-", dir="/tmp"))
    data, exec_root = root / "data", root / "exec"
    host = f"unix://{root}/docker.sock"
    argv = ["dockerd", "--data-root", str(data), "--host", host, "--exec-root", str(exec_root)]
    argv += ["--pidfile", str(root / "pid"), "--bridge=none", "--iptables=false"]
    argv += ["--containerd-namespace", f"smelter-{root.name}"]
    argv += ["--containerd-plugins-namespace", f"smelter-{root.name}-plugins"]
    log = open(root / "dockerd.log", "wb")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(120):
            probe = subprocess.run(
                ["docker", "info", "--format", "{{.Images}}"],
                capture_output=True,
                text=True,
                env=_env(DOCKER_HOST=host),
            )
            if probe.returncode == 0:
                break
            assert proc.poll() is None, (root / "dockerd.log").read_text()[-3000:]
            time.sleep(0.5)
        assert probe.returncode == 0 and probe.stdout.strip() == "0", probe.stderr
        yield host
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(root, ignore_errors=True)


def test_docker_archives_resolve_gold_in_a_fresh_engine(
    demo_out: Path, tmp_path: Path, fresh_engine: str
) -> None:
    x, archives = tmp_path / "X", tmp_path / "archives"
    stdout = _smelter("export", str(demo_out), "--dest", str(x), "--docker-archive", str(archives))
    manifest = json.loads((archives / ARCHIVE_MANIFEST).read_text())
    ids = _demo_ids(x)
    assert sorted(i for a in manifest["archives"] for i in a["tasks"]) == ids
    # as a user on the other machine would: the docker CLI, one archive at a time
    for entry in manifest["archives"]:
        load = subprocess.run(
            ["docker", "load", "-i", str(archives / entry["file"])],
            capture_output=True,
            text=True,
            env=_env(DOCKER_HOST=fresh_engine),
        )
        assert load.returncode == 0, load.stderr
    command = shlex.split(_printed_command(stdout))
    gold = _swebench(command, tmp_path / "gold", "smelter-gold", "gold", DOCKER_HOST=fresh_engine)
    assert gold["resolved_ids"] == ids, gold
    assert gold["error_ids"] == [] and gold["unresolved_ids"] == []
    n = len(manifest["archives"])
    print(f"fresh engine: gold {len(gold['resolved_ids'])}/{len(ids)} from {n} archive(s)")
