"""Benchmark: the whole demo through the pipeline; prints wall time per stage and env-image reuse.

Run: ``.venv/bin/python tests/benchmarks/bench_demo.py [--workers N] [--keep OUT]``. The stage
caches start empty (a fresh output folder), so every stage really runs; Docker's own layer cache
and the base-image cache are left as they are, which is the steady state of a real deployment.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from smelter.pipeline.cli import main as smelter
from smelter.schemas import Candidate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--keep", metavar="OUT", help="write the run here and keep it")
    args = parser.parse_args()
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
    built = hits = 0
    for entry in (out / ".cache" / "environment").glob("*.json"):
        for kind, body in json.loads(entry.read_text())["outcomes"]:
            if kind == "candidate":
                env = Candidate.model_validate(body).environment
                if env is not None:
                    hits += env.env_cache_hit
                    built += not env.env_cache_hit
    print(f"env images: {built} built, {hits} reused (cache hits)")
    return code


if __name__ == "__main__":
    sys.exit(main())
