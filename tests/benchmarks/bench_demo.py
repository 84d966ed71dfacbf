"""Benchmark: the whole demo through the pipeline; prints wall time per stage and env-image reuse.

Run: ``.venv/bin/python tests/benchmarks/bench_demo.py [--cold] [--workers N] [--keep OUT]``.
The stage caches start empty (a fresh output folder), so every stage really runs. By default the
env images already on the engine are reused (the steady state of a deployment); ``--cold`` first
removes the demo repository's env and instance images, so dependencies are installed again.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from smelter.pipeline.cli import main as smelter
from smelter.schemas import Task


def read_tasks(path: Path) -> list[Task]:
    return [Task.model_validate_json(line) for line in path.read_text().splitlines() if line]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--keep", metavar="OUT", help="write the run here and keep it")
    parser.add_argument("--cold", action="store_true", help="remove the demo's images first")
    args = parser.parse_args()
    if args.cold:
        from smelter.pipeline.demo.prs import REPO_NAME

        smelter(["images", "prune", "--all", "--repo", REPO_NAME])
    out = Path(args.keep or tempfile.mkdtemp(prefix="smelter-bench-demo-"))
    argv = ["demo", "--out", str(out), "--no-progress"]
    if args.workers:
        argv += ["--workers", str(args.workers)]
    start = time.perf_counter()
    code = smelter(argv)
    wall = time.perf_counter() - start
    run = json.loads((out / "run.json").read_text())
    print(f"\nexit code {code}; wall time {wall:.1f} s (pipeline {run['wall_seconds']:.1f} s)")
    print(f"{'stage':<12} {'busy seconds':>12}   (sum over records of time inside the stage)")
    for stage, seconds in run["stage_seconds"].items():
        print(f"{stage:<12} {seconds:>12.1f}")
    # The environment stage keeps no outcome cache (Docker's cache is its resume mechanism), so
    # the facts come from the tasks; PRs that validation rejected carry no environment record.
    envs = [t.environment for t in read_tasks(out / "tasks.jsonl")]
    hits = sum(e.env_cache_hit for e in envs)
    print(f"env images (validated tasks): {len(envs) - hits} built, {hits} reused (cache hits)")
    if envs:
        per_pr = sorted(e.build_seconds for e in envs)
        print(
            f"environment build seconds per PR: median {per_pr[len(per_pr) // 2]:.1f}, "
            f"max {per_pr[-1]:.1f}"
        )
    return code


if __name__ == "__main__":
    sys.exit(main())
