"""Benchmark: the demo's wall time on the DirectRunner, and on a Dask cluster of 1 and 2 workers.

Run: ``.venv/bin/python tests/benchmarks/bench_dask.py [--caches cold|warm] [--reuse DIR]``.

- ``--caches cold`` (default): every timed run writes a fresh output folder, so every stage
  really runs; env and instance images are whatever the engine holds (``--warmup`` first
  makes one untimed run so they are warm for all three).
- ``--caches warm``: all three runs re-run one output folder whose stage caches hold every
  outcome (filled by an untimed DirectRunner run, or ``--reuse DIR``, an earlier demo output,
  re-run in place: cache keys hold the demo repository's path, so a copy would miss): no
  stage does work, so the figure is the engine's own overhead.

The cluster is a real ``dask scheduler`` plus ``dask worker --nworkers N --nthreads 1``
(processes) on 127.0.0.1, started and stopped here for each Dask figure. All three run the
real CLI in a child process, so each pays its own start-up, as a user would. On 2 cores
expect no speed-up from a second worker.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLI = [sys.executable, "-m", "smelter.pipeline.cli"]
DASK = [sys.executable, "-m", "dask"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def demo(out: Path, *flags: str) -> tuple[float, int]:
    """Wall seconds of one demo run and the number of tasks it wrote."""
    start = time.perf_counter()
    proc = subprocess.run(
        [*CLI, "demo", "--out", str(out), "--no-progress", *flags], capture_output=True, text=True
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"demo failed ({' '.join(flags) or 'DirectRunner'}):\n{proc.stderr[-3000:]}")
    return wall, len((out / "tasks.jsonl").read_text().splitlines())


def on_dask(out: Path, workers: int, logs: Path) -> tuple[float, int]:
    """The demo through a fresh cluster of ``workers`` worker processes."""
    from distributed import Client

    address = f"tcp://127.0.0.1:{free_port()}"
    port = address.rsplit(":", 1)[1]
    with (logs / f"dask-{workers}.log").open("wb") as log:
        procs = [
            subprocess.Popen(
                [*DASK, "scheduler", "--host", "127.0.0.1", "--port", port, "--no-dashboard"],
                stdout=subprocess.DEVNULL, stderr=log,
            ),
            subprocess.Popen(
                [*DASK, "worker", address, "--nworkers", str(workers), "--nthreads", "1",
                 "--host", "127.0.0.1", "--no-dashboard", "--local-directory", str(logs)],
                stdout=subprocess.DEVNULL, stderr=log,
            ),
        ]  # fmt: skip
    try:
        for _ in range(60):
            try:
                with Client(address, timeout=10) as client:
                    client.wait_for_workers(workers, timeout=120)
                break
            except OSError:
                time.sleep(1)
        return demo(out, "--runner", "DaskRunner", "--dask_client_address", address)
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(60)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--caches", choices=("cold", "warm"), default="cold")
    parser.add_argument("--warmup", action="store_true", help="cold: one untimed run first")
    parser.add_argument("--reuse", metavar="DIR", help="warm: re-run this demo output in place")
    parser.add_argument("--keep", metavar="DIR", help="write the runs here and keep them")
    args = parser.parse_args()
    root = Path(args.keep or tempfile.mkdtemp(prefix="smelter-bench-dask-"))
    root.mkdir(parents=True, exist_ok=True)
    if args.caches == "warm":
        warm = Path(args.reuse) if args.reuse else root / "warm"
        if not args.reuse:
            demo(warm)
        outs = {"direct": warm, "dask-1": warm, "dask-2": warm}
    else:
        if args.warmup:
            demo(root / "warmup")
        outs = {name: root / name for name in ("direct", "dask-1", "dask-2")}
    figures = {
        "DirectRunner": demo(outs["direct"]),
        "Dask, 1 worker": on_dask(outs["dask-1"], 1, root),
        "Dask, 2 workers": on_dask(outs["dask-2"], 2, root),
    }
    print(f"demo wall time on {os.cpu_count()} cores, stage caches {args.caches}")
    for name, (wall, tasks) in figures.items():
        print(f"  {name:<16} {wall:7.1f} s  {tasks} tasks")
    print(json.dumps({k: round(v[0], 1) for k, v in figures.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
