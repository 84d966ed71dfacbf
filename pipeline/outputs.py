"""Reading a run's output folder back: the funnel, the run manifest, the end-of-run summary.

Deliberate choices:
- The funnel is computed from the written files, not from in-flight counters, so it is the same
  whether the run was fresh, resumed or served from cache, and ``smelter report`` can recompute it.
- Every mined PR must end as a task or as exactly one rejection; a record that is neither, or
  both, is reported as a defect (``unaccounted`` / ``duplicated``), never silently absorbed.
"""

from __future__ import annotations

import collections
import json
import os
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from smelter.pipeline.run_folder import CANDIDATES, PULL_REQUESTS, REJECTS, TASKS
from smelter.schemas import PullRequest, Rejection

STAGE_ORDER = ("mine", "snapshot", "environment", "validate", "clean", "render", "pack")


def iter_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    if not path.exists():
        return
    with path.open() as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def count_lines(path: Path) -> int:
    return sum(1 for _ in iter_jsonl(path))


def compute_funnel(out_dir: Path, until: str = "pack") -> dict[str, Any]:
    """Per-stage in/out/rejected counts, overall and per repository, plus consistency checks."""
    rejects = [Rejection.model_validate(d) for d in iter_jsonl(out_dir / REJECTS)]
    prs = [PullRequest.model_validate(d) for d in iter_jsonl(out_dir / PULL_REQUESTS)]
    task_ids = [d["instance_id"] for d in iter_jsonl(out_dir / TASKS)]
    candidates = count_lines(out_dir / CANDIDATES)
    by_stage: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    repo_of = {pr.instance_id: pr.repo for pr in prs}
    per_repo: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for r in rejects:
        by_stage[r.stage][r.reason.value] += 1
        per_repo[r.repo or repo_of.get(r.instance_id, "?")][f"{r.stage}:{r.reason.value}"] += 1
    for pr in prs:
        per_repo[pr.repo]["mined"] += 1
    for tid in task_ids:
        per_repo[repo_of.get(tid, "?")]["tasks"] += 1

    stages = []
    last = STAGE_ORDER.index(until) if until in STAGE_ORDER else len(STAGE_ORDER) - 1
    n_in = len(prs) + sum(by_stage["mine"].values())
    for stage in STAGE_ORDER[: last + 1]:
        rejected = dict(sorted(by_stage.get(stage, {}).items()))
        n_out = n_in - sum(rejected.values())
        stages.append({"stage": stage, "in": n_in, "out": n_out, "rejected": rejected})
        n_in = n_out

    checks = {"pull_requests": len(prs), "candidates": candidates, "tasks": len(task_ids)}
    ended = collections.Counter(task_ids) + collections.Counter(
        r.instance_id for r in rejects if r.stage not in ("mine", "render", "pack")
    )
    final_stage_ids = {pr.instance_id for pr in prs}
    unaccounted = sorted(final_stage_ids - set(ended)) if until in ("clean", "validate") else []
    duplicated = sorted(i for i, n in ended.items() if n > 1)
    return {
        "stages": stages,
        "files": checks,
        "repos": {repo: dict(sorted(c.items())) for repo, c in sorted(per_repo.items())},
        "unaccounted": unaccounted,
        "duplicated": duplicated,
    }


def funnel_table(funnel: dict[str, Any]) -> Table:
    table = Table(title="smelter funnel", title_justify="left")
    table.add_column("stage")
    table.add_column("in", justify="right")
    table.add_column("out", justify="right")
    table.add_column("rejected (reason: count)")
    for row in funnel["stages"]:
        reasons = ", ".join(f"{k}: {v}" for k, v in row["rejected"].items()) or "-"
        table.add_row(row["stage"], str(row["in"]), str(row["out"]), reasons)
    return table


class ProgressWatcher:
    """Draws per-stage progress from the tick files StageFns append to (see common.StageFn)."""

    def __init__(
        self, progress_dir: str | None, stages: Iterable[str], console: Console, show: bool = True
    ) -> None:
        self._dir = Path(progress_dir) if progress_dir else None
        self._show = show
        self._stages = list(stages)
        self._console = console
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = time.monotonic()

    def counts(self) -> dict[str, collections.Counter[str]]:
        out: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        if not self._dir or not self._dir.exists():
            return out
        for path in self._dir.glob("*.ticks"):
            stage = path.name.split(".", 1)[0]
            try:
                out[stage].update(path.read_text())
            except OSError:
                continue
        return out

    def _table(self) -> Table:
        counts = self.counts()
        elapsed = time.monotonic() - self._started
        table = Table(title=f"running… {elapsed:5.0f}s", title_justify="left", box=None)
        for col in ("stage", "done", "ok", "rejected", "cached"):
            table.add_column(col, justify="right" if col != "stage" else "left")
        for stage in self._stages:
            c = counts.get(stage, collections.Counter())
            done = c["o"] + c["r"] + c["c"]
            table.add_row(stage, str(done), str(c["o"]), str(c["r"]), str(c["c"]))
        return table

    def __enter__(self) -> ProgressWatcher:
        if self._dir:
            self._dir.mkdir(parents=True, exist_ok=True)
            for old in self._dir.glob("*.ticks"):
                old.unlink()
        if self._dir and self._show and self._console.is_terminal:
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        with Live(self._table(), console=self._console, refresh_per_second=2) as live:
            while not self._stop.wait(0.5):
                live.update(self._table())
            live.update(self._table())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)


def write_json(path: Path, doc: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)
