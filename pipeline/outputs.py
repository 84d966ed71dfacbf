"""The end of a run: its funnel (computed by ``report.funnel``), progress display and manifests.

Deliberate choices:
- The funnel is computed from the written files, not from in-flight counters, so it is the same
  whether the run was fresh, resumed or served from cache; ``smelter report`` shows the same
  outcomes, computed by the same code.
- Every mined PR must end as a task or as exactly one rejection; a record that is neither, or
  both, is reported as a defect (``unaccounted`` / ``duplicated``), never silently absorbed.
"""

from __future__ import annotations

import collections
import json
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table


def compute_funnel(out_dir: Path, until: str = "pack") -> dict[str, Any]:
    """funnel.json's document: the report's funnel (``report.funnel.funnel_document``).

    Imported here, when a run ends, so that ``smelter --help`` never loads polars.
    """
    from smelter.pipeline.report.funnel import funnel_document

    return funnel_document(out_dir, until)


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
