"""Report benchmark: seconds and peak memory of `smelter report` on a large synthetic output folder.

Run: ``.venv/bin/python tests/benchmarks/bench_report.py --tasks 20000``

What is measured:
- An output folder written with the record models (the builders of tests/test_report.py): N
  tasks with realistic patches, validation runs and cleaned statements, as many rejections, and
  packed shards holding every task; then, timed separately: loading (JSONL validation, diff
  statistics, statement similarity), the funnel trace and its check, the aggregations, the PNGs,
  and the whole ``write_report``. The folder is built in a child process, so the peak RSS printed
  (``resource``) is the report's alone.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # tests.*, run as a script

import jsonlines
import polars as pl

from smelter.pipeline import report as rp
from smelter.pipeline.report import render
from smelter.schemas import Reason, Rejection
from tests.test_report import candidate, pull_request, shard_row, task

REASONS = (
    ("mine", Reason.NO_TEST_CHANGES),
    ("snapshot", Reason.PATCH_DOES_NOT_APPLY),
    ("environment", Reason.INSTALL_FAILED),
    ("validate", Reason.PASSES_BEFORE),
    ("clean", Reason.UNDER_SPECIFIED),
)


def build(out: Path, n_tasks: int, max_len: int = 4096) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "shards").mkdir()
    repos = [f"org{k}__proj{k}" for k in range(20)]
    task_ids = [f"{repos[i % 20]}-{i + 1}" for i in range(n_tasks)]
    rej_ids = [f"{repos[i % 20]}-{n_tasks + i + 1}" for i in range(n_tasks)]
    with (
        jsonlines.open(out / "pull_requests.jsonl", "w") as prs,
        jsonlines.open(out / "candidates.jsonl", "w") as cands,
        jsonlines.open(out / "tasks.jsonl", "w") as tasks,
    ):
        for iid in task_ids:
            prs.write(pull_request(iid).model_dump(mode="json"))
            cands.write(candidate(iid).model_dump(mode="json"))
            tasks.write(task(iid).model_dump(mode="json"))
        for iid in rej_ids:
            prs.write(pull_request(iid).model_dump(mode="json"))
    with jsonlines.open(out / "rejects.jsonl", "w") as w:
        for k, iid in enumerate(rej_ids):
            stage, reason = REASONS[k % len(REASONS)]
            w.write(Rejection(instance_id=iid, stage=stage, reason=reason).model_dump(mode="json"))
    rows, current, used = [], [], 0
    for k, iid in enumerate(task_ids):
        length = 200 + (k * 7919) % 3000
        if used + length > max_len:
            rows.append(shard_row(current).model_dump())
            current, used = [], 0
        current.append((iid, length))
        used += length
    rows.append(shard_row(current).model_dump())
    for s in range(0, len(rows), 1024):
        pl.DataFrame(rows[s : s + 1024]).write_parquet(out / "shards" / f"part-{s // 1024}.parquet")
    (out / "shards" / "stats.json").write_text(json.dumps({"max_len": max_len}))


def timed(label: str, fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    print(f"  {label:<28} {time.perf_counter() - start:8.2f} s")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=5000, help="tasks (and as many rejections)")
    ap.add_argument("--build-only", metavar="DIR", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.build_only:
        build(Path(args.build_only), args.tasks)
        return
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        start = time.perf_counter()
        cmd = [sys.executable, __file__, "--tasks", str(args.tasks), "--build-only", str(out)]
        subprocess.run(cmd, check=True)
        size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 1e6
        print(
            f"output folder: {args.tasks} tasks + {args.tasks} rejections, {size:.0f} MB, "
            f"built in {time.perf_counter() - start:.1f} s"
        )
        data = timed("load_output", rp.load_output, out)
        outcomes = timed("instance_outcomes", rp.outcomes_of, data)
        check = timed("funnel_check", rp.check_of, data, outcomes)
        timed(
            "aggregations",
            lambda: [
                rp.funnel_by_repo(outcomes),
                rp.rejection_reasons(data.rejects, True),
                rp.task_sizes(data.tasks),
                rp.test_durations(data.runs),
                rp.judge_scores(data.tasks),
                rp.environments_by_recipe(data.environments),
                rp.packing_summary(data.shards, 4096, data.rejects),
            ],
        )
        timed("figures", render.render_figures, data, Path(tmp) / "figs")
        timed("write_report (all)", rp.write_report, data)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"  funnel: {check.summary} (balanced={check.balanced})")
        print(f"  peak RSS {peak:.0f} MB")


if __name__ == "__main__":
    main()
