"""The demo through the real Beam pipeline and CLI: funnel against DEMO_PRS, resume, no rework."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from smelter.pipeline.demo.prs import DEMO_PRS
from smelter.schemas import Candidate, PullRequest, Rejection

CLI = [sys.executable, "-m", "smelter.pipeline.cli"]


def read(path: Path, model):
    return [model.model_validate_json(line) for line in path.read_text().splitlines() if line]


def ticks(out: Path, stage: str) -> collections.Counter[str]:
    counter: collections.Counter[str] = collections.Counter()
    for f in (out / ".progress").glob(f"{stage}.*.ticks"):
        counter.update(f.read_text())
    return counter


def mine(repo, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *CLI,
            "mine",
            "--repo",
            str(repo.path),
            "--repo-name",
            repo.name,
            "--out",
            str(out),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )


# Every test here runs the real CLI over the demo repository (tens of seconds): not in make unit.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mined(demo_repo, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("mined")
    proc = mine(demo_repo, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "smelter funnel" in proc.stdout
    return out


def test_demo_funnel_matches_expected_fates(mined: Path) -> None:
    prs = {p.number: p for p in read(mined / "pull_requests.jsonl", PullRequest)}
    rejects = {r.instance_id: r for r in read(mined / "rejects.jsonl", Rejection)}
    candidates = {c.pull_number: c for c in read(mined / "candidates.jsonl", Candidate)}
    for pr in DEMO_PRS:
        if pr.mine is not None:
            assert rejects[pr.instance_id].stage == "mine", pr.number
            assert rejects[pr.instance_id].reason == pr.mine, pr.number
            assert pr.number not in prs
        elif pr.snapshot is not None:
            assert rejects[pr.instance_id].reason == pr.snapshot, pr.number
        else:
            c = candidates[pr.number]
            assert sorted(c.code_files) == sorted(pr.code_files), pr.number
            assert sorted(c.test_files) == sorted(pr.test_files), pr.number
            assert c.patch and c.test_patch
    funnel = json.loads((mined / "funnel.json").read_text())
    stages = {s["stage"]: s for s in funnel["stages"]}
    expected_mined = sum(1 for p in DEMO_PRS if p.mine is None)
    assert stages["mine"]["in"] == len(DEMO_PRS)
    assert stages["mine"]["out"] == expected_mined == len(prs)
    assert stages["snapshot"]["out"] == sum(1 for p in DEMO_PRS if p.kept_after_snapshot)
    assert not funnel["duplicated"]


def test_run_manifest_has_config_and_no_secrets(mined: Path) -> None:
    run = json.loads((mined / "run.json").read_text())
    assert run["plan"]["until"] == "snapshot"
    assert "mine" in run["plan"]["config"]
    assert run["wall_seconds"] > 0


def test_rerun_does_no_repeated_work(demo_repo, mined: Path) -> None:
    before = (mined / "candidates.jsonl").read_text().splitlines()
    proc = mine(demo_repo, mined)
    assert proc.returncode == 0, proc.stderr[-3000:]
    snap = ticks(mined, "snapshot")
    assert snap["c"] == len(before) and snap["o"] == 0 and snap["r"] == 0, snap
    assert sorted((mined / "candidates.jsonl").read_text().splitlines()) == sorted(before)


def test_killed_run_resumes_without_recomputing_finished_records(
    demo_repo,
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [
            *CLI,
            "mine",
            "--repo",
            str(demo_repo.path),
            "--repo-name",
            demo_repo.name,
            "--out",
            str(out),
            "--no-progress",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    cache = out / ".cache" / "snapshot"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if cache.exists() and any(cache.glob("*.json")):
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole process group: workers too
    proc.wait()
    finished = {p.name for p in cache.glob("*.json")}
    assert finished, "the run was killed before it finished any record"
    assert not list(cache.glob("*.tmp")) or True  # torn writes are allowed; they are misses

    again = mine(demo_repo, out, "--no-progress")
    assert again.returncode == 0, again.stderr[-3000:]
    snap = ticks(out, "snapshot")
    expected = sum(1 for p in DEMO_PRS if p.mine is None)
    assert snap["c"] == len(finished)
    assert snap["c"] + snap["o"] + snap["r"] == expected
