"""The files of one ``smelter run --out`` folder, named in one place, and typed readers for them.

Deliberate choices:
- Code that reads an output folder back (``smelter report``, the end-of-run funnel) names its
  files through the constants here instead of re-spelling them, so a renamed file is one edit.
- Readers stream and never raise on a bad line: a line that is not JSON, or not a valid record,
  is appended to ``problems`` with its file and line, and the rest of the file is read.
- Only the standard library, jsonlines and the record models: ``smelter run`` imports this at
  start-up, so polars and matplotlib stay out.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import jsonlines
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)

PULL_REQUESTS = "pull_requests.jsonl"
CANDIDATES = "candidates.jsonl"
TASKS = "tasks.jsonl"
REJECTS = "rejects.jsonl"
FUNNEL = "funnel.json"
RUN = "run.json"
SHARDS = "shards"
SHARD_STATS = f"{SHARDS}/stats.json"
REPORT = "report"

FILES: dict[str, str] = {
    "pull_requests": PULL_REQUESTS,
    "candidates": CANDIDATES,
    "tasks": TASKS,
    "rejects": REJECTS,
    "funnel": FUNNEL,
    "run": RUN,
    "shards": f"{SHARDS}/*.parquet",
    "shard_stats": SHARD_STATS,
}
"""Every part of an output folder by name; all optional (a run may stop after any stage)."""


def shard_paths(out_dir: Path) -> list[Path]:
    """The packed shard files, in name order."""
    return sorted((out_dir / SHARDS).glob("*.parquet"))


def iter_records(path: Path, model: type[M], problems: list[str]) -> Iterator[M]:
    """Stream the valid records of a JSONL file, appending one line per bad line to ``problems``.

    Streaming keeps one record in memory at a time: a report over 100k tasks holds their rows,
    not their pydantic objects (whose validation runs alone weigh several times the file).
    """
    with jsonlines.open(path) as reader:
        line = 0
        while True:
            line += 1
            try:
                obj = reader.read(skip_empty=True)
            except EOFError:
                break
            except jsonlines.InvalidLineError as e:
                problems.append(f"{path.name} line {e.lineno}: not JSON")
                continue
            try:
                record = model.model_validate(obj)
            except ValidationError as e:
                first = e.errors()[0]
                where = ".".join(str(x) for x in first["loc"])
                problems.append(f"{path.name} record {line}: {where}: {first['msg']}")
                continue
            yield record


def read_json(path: Path, problems: list[str]) -> dict[str, Any] | None:
    """A JSON object file; unreadable or not an object is a problem and None."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        problems.append(f"{path.name}: unreadable ({e})")
        return None
    if not isinstance(doc, dict):
        problems.append(f"{path.name}: expected a JSON object")
        return None
    return doc
