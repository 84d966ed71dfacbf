"""Reading one output folder into a ``RunData`` of frames.

Deliberate choice: every part of the output folder is optional. A run that stopped after mining
still loads; what is missing is named (``missing_parts``), never raised. Unreadable lines are
counted as problems, not fatal.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import polars as pl
from pydantic import BaseModel

from smelter.pipeline.report.frames import (
    CANDIDATE_SCHEMA,
    ENV_SCHEMA,
    RUN_SCHEMA,
    SHARD_SCHEMA,
    TASK_SCHEMA,
    candidate_row,
    env_row,
    frame,
    pull_request_frame,
    reject_frame,
    run_rows,
    task_row,
)
from smelter.pipeline.run_folder import FILES, SHARDS, TASKS, iter_records, read_json, shard_paths
from smelter.schemas import Candidate, PullRequest, Rejection, Task

M = TypeVar("M", bound=BaseModel)

# The parts of the output folder (run_folder.FILES) the report reads, and what it lacks without
# each. funnel.json is not one: the report computes the funnel that file was written from.
PART_EFFECT = {
    "pull_requests": "PRs mined are inferred from the other files",
    "candidates": "the snapshot stage's output is unknown",
    "tasks": "no task quality, no examples",
    "rejects": "rejection reasons are unknown",
    "run": "no config or stage timings",
    "shards": "no packing section",
    "shard_stats": "packing figures come from the shards alone",
}


def read_shards(paths: Sequence[Path]) -> tuple[pl.DataFrame, list[str]]:
    """Shard rows without their token arrays (only their length is read), plus problems found."""
    frames, problems = [], []
    for path in paths:
        try:
            lf = pl.scan_parquet(path)
            names = lf.collect_schema().names()
            cols = [
                pl.lit(path.name).alias("shard"),
                pl.int_range(pl.len(), dtype=pl.Int64).alias("row"),
                (
                    pl.col("num_tokens").cast(pl.Int64)
                    if "num_tokens" in names
                    else pl.col("doc_lengths").list.sum().cast(pl.Int64)
                ).alias("num_tokens"),
                (
                    pl.col("input_ids").list.len().cast(pl.Int64)
                    if "input_ids" in names
                    else pl.lit(None, pl.Int64)
                ).alias("seq_len"),
                pl.col("doc_ids").list.len().cast(pl.Int64).alias("docs"),
                pl.col("doc_ids").cast(pl.List(pl.String)),
                pl.col("doc_lengths").cast(pl.List(pl.Int64)),
            ]
            frames.append(lf.select(cols).collect())
        except Exception as e:
            problems.append(f"{SHARDS}/{path.name}: unreadable ({type(e).__name__}: {e})")
    if not frames:
        return frame([], SHARD_SCHEMA), problems
    return pl.concat(frames, how="vertical").cast(SHARD_SCHEMA), problems  # type: ignore[arg-type]


# --------------------------------------------------------------------------- loading


@dataclasses.dataclass(frozen=True)
class RunData:
    """Everything the report reads from one output folder, as DataFrames."""

    out_dir: Path
    pull_requests: pl.DataFrame
    candidates: pl.DataFrame
    tasks: pl.DataFrame
    runs: pl.DataFrame
    environments: pl.DataFrame
    rejects: pl.DataFrame
    shards: pl.DataFrame
    run_json: dict[str, Any] | None
    shard_stats: dict[str, Any] | None
    present: dict[str, bool]
    problems: tuple[str, ...]

    def task(self, instance_id: str) -> Task:
        """The full Task record, for opening one task in a notebook."""
        for t in iter_records(self.out_dir / TASKS, Task, []):
            if t.instance_id == instance_id:
                return t
        raise KeyError(instance_id)


def load_output(out_dir: str | os.PathLike[str]) -> RunData:
    """Read every part of an output folder that exists; absent parts become empty frames."""
    out = Path(out_dir)
    problems: list[str] = []
    present = {name: False for name in PART_EFFECT}

    def records(name: str, model: type[M]) -> Iterator[M]:
        path = out / FILES[name]
        if path.is_file():
            present[name] = True
            yield from iter_records(path, model, problems)

    # One pass per file, keeping rows rather than records (see iter_records).
    prs = pull_request_frame(records("pull_requests", PullRequest))
    cand_rows: list[dict[str, Any]] = []
    envs: dict[str, dict[str, Any]] = {}
    for c in records("candidates", Candidate):
        cand_rows.append(candidate_row(c))
        if c.environment is not None:
            envs[c.instance_id] = env_row(c.instance_id, c.repo, c.environment)
    task_rows: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    for t in records("tasks", Task):
        task_rows.append(task_row(t))
        runs.extend(run_rows(t))
        envs[t.instance_id] = env_row(t.instance_id, t.repo, t.environment)
    rejects = reject_frame(records("rejects", Rejection))

    docs: dict[str, dict[str, Any] | None] = {}
    for name in ("run", "shard_stats"):
        path = out / FILES[name]
        present[name] = path.is_file()
        docs[name] = read_json(path, problems) if present[name] else None

    shards_found = shard_paths(out)
    present["shards"] = bool(shards_found)
    shards, probs = read_shards(shards_found)
    problems.extend(probs)

    return RunData(
        out_dir=out,
        pull_requests=prs,
        candidates=frame(cand_rows, CANDIDATE_SCHEMA),
        tasks=frame(task_rows, TASK_SCHEMA),
        runs=frame(runs, RUN_SCHEMA),
        environments=frame([envs[k] for k in sorted(envs)], ENV_SCHEMA),
        rejects=rejects,
        shards=shards,
        run_json=docs["run"],
        shard_stats=docs["shard_stats"],
        present=present,
        problems=tuple(problems),
    )


def missing_parts(present: dict[str, bool], shard_stats: dict[str, Any] | None = None) -> list[str]:
    """One line per absent part of the output folder and what the report lacks because of it."""
    effect = dict(PART_EFFECT)
    if shard_stats is not None and shard_stats.get("sequences") == 0:
        effect["shards"] = "the pack stage wrote no sequence (stats.json: 0 sequences)"
    return [f"{FILES[name]} — {effect[name]}" for name, ok in present.items() if not ok]


def last_stage_with_output(present: dict[str, bool]) -> str | None:
    for name, stage in (
        ("shards", "pack"),
        ("tasks", "validate/clean"),
        ("candidates", "snapshot"),
        ("pull_requests", "mine"),
    ):
        if present.get(name):
            return stage
    return None
