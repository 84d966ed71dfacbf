"""`smelter demo` end to end on a real Docker engine: every demo PR ends where DEMO_PRS says.

One run of the real CLI (Beam DirectRunner, multi-process; the session's ``demo_out`` fixture,
shared with test_harness_export) feeds every test here: the funnel,
the FAIL_TO_PASS / PASS_TO_PASS lists per PR, cleaning, shards, the report and the published
dataset, and a second run that must be served entirely from the stage caches.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from smelter.pipeline.demo.prs import DEMO_PRS, DEMO_PRS_BY_NUMBER
from smelter.schemas import Rejection, ShardRow, Task

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(3600)]

CLI = [sys.executable, "-m", "smelter.pipeline.cli"]
STAGES = ("mine", "snapshot", "environment", "validate", "clean", "render")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=3000, env=env)


def read(path: Path, model):
    return [model.model_validate_json(line) for line in path.read_text().splitlines() if line]


def ticks(out: Path) -> dict[str, collections.Counter[str]]:
    counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for f in (out / ".progress").glob("*.ticks"):
        counts[f.name.split(".", 1)[0]].update(f.read_text())
    return counts


def test_every_demo_pr_ends_where_expected(demo_out: Path) -> None:
    tasks = {t.provenance.pull_number: t for t in read(demo_out / "tasks.jsonl", Task)}
    rejects = {r.instance_id: r for r in read(demo_out / "rejects.jsonl", Rejection)}
    for pr in DEMO_PRS:
        if pr.mine or pr.snapshot or pr.validate:
            expected_stage = "mine" if pr.mine else "snapshot" if pr.snapshot else "validate"
            got = rejects.get(pr.instance_id)
            assert got is not None, f"#{pr.number} should be rejected at {expected_stage}"
            assert (got.stage, got.reason) == (
                expected_stage,
                pr.mine or pr.snapshot or pr.validate,
            )
            assert pr.number not in tasks
            continue
        assert pr.number in tasks, f"#{pr.number} rejected: {rejects.get(pr.instance_id)}"
        task = tasks[pr.number]
        assert sorted(pr.fail_to_pass) == task.FAIL_TO_PASS, pr.number
        assert sorted(pr.pass_to_pass) == task.PASS_TO_PASS, pr.number
        assert task.validation.flaky == sorted(pr.flaky), pr.number
        assert task.environment.instance_image and task.environment.dockerfiles.instance
        assert task.validation.test_script
        v = task.validation
        assert len([r for r in v.runs if not r.selected]) == 5  # 2 before + 3 after, defaults
        # plus the flakiness reruns of the fail-to-pass candidates (1 + 1 for the 1% bound)
        assert (v.extra_runs_before, v.extra_runs_after) == (1, 1), pr.number
        assert len(v.runs) == 7 and v.flaky_risk < v.flaky_bound == 0.01, pr.number
    # Nothing lost, nothing counted twice: each PR is a task or exactly one rejection.
    ended = collections.Counter([*(t.instance_id for t in tasks.values()), *rejects])
    assert sorted(ended) == sorted(pr.instance_id for pr in DEMO_PRS)
    assert set(ended.values()) == {1}


def test_funnel_file_adds_up(demo_out: Path) -> None:
    funnel = json.loads((demo_out / "funnel.json").read_text())
    stages = {s["stage"]: s for s in funnel["stages"]}
    valid = sum(1 for p in DEMO_PRS if p.valid)
    assert stages["mine"]["in"] == len(DEMO_PRS)
    assert stages["validate"]["out"] == valid
    assert stages["clean"]["out"] == valid == funnel["files"]["tasks"]
    for row in funnel["stages"]:
        assert row["out"] == row["in"] - sum(row["rejected"].values())
    assert not funnel["unaccounted"] and not funnel["duplicated"]


def test_noisy_statement_is_cleaned_and_raw_kept(demo_out: Path) -> None:
    task = next(t for t in read(demo_out / "tasks.jsonl", Task) if t.provenance.pull_number == 19)
    assert task.quality is not None
    assert "<!--" in task.quality.raw_problem_statement
    assert "<!--" not in task.problem_statement
    assert "- [ ]" not in task.problem_statement
    assert task.quality.normalizer_version == "normalize_v1"


def test_shards_hold_every_task_once_without_truncation(demo_out: Path) -> None:
    stats = json.loads((demo_out / "shards" / "stats.json").read_text())
    rows = []
    for shard in sorted((demo_out / "shards").glob("*.parquet")):
        rows += [ShardRow.model_validate(r) for r in pq.read_table(shard).to_pylist()]
    doc_ids = [d for r in rows for d in r.doc_ids]
    tasks = read(demo_out / "tasks.jsonl", Task)
    assert sorted(doc_ids) == sorted(t.instance_id for t in tasks)
    for row in rows:
        assert sum(row.doc_lengths) == row.num_tokens == len(row.input_ids)
    assert stats["sequences"] == len(rows)


def test_report_and_publish_work_on_the_demo_output(
    demo_out: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    proc = run_cli("report", str(demo_out), "--strict")  # --strict: the funnel must add up
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    html = next((demo_out / "report").glob("*.html"))
    assert "funnel" in html.read_text().lower()
    dest = tmp_path / "hf"
    proc = run_cli("publish", str(demo_out), "--dest", str(dest))
    assert proc.returncode == 0, proc.stderr[-3000:]
    import datasets

    tasks = datasets.load_dataset(str(dest), "tasks", split="test")
    assert len(tasks) == sum(1 for p in DEMO_PRS if p.valid)
    by_id = {row["instance_id"]: row for row in tasks}
    pr11 = DEMO_PRS_BY_NUMBER[11]
    assert json.loads(by_id[pr11.instance_id]["FAIL_TO_PASS"]) == list(pr11.fail_to_pass)


def test_second_run_is_served_from_the_stage_caches(demo_out: Path) -> None:
    before = sorted((demo_out / "tasks.jsonl").read_text().splitlines())
    proc = run_cli("demo", "--out", str(demo_out), "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    counts = ticks(demo_out)
    # Mining rescans history (cheap), so it runs again. The environment stage has its cached
    # outcomes but serves one only while its instance image exists (EnvironmentFn.reuse);
    # validation removed every instance image (the default), so it rebuilds them, from cached
    # env layers. With the images kept it is a cache hit (tests/test_environment_cache.py).
    for stage in ("snapshot", "validate", "clean", "render"):
        assert counts[stage]["o"] == counts[stage]["r"] == 0, (stage, counts[stage])
        assert counts[stage]["c"] > 0, stage
    assert sorted((demo_out / "tasks.jsonl").read_text().splitlines()) == before
