"""Record contracts: pydantic models mirrored by JSON Schema files shipped as package data."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

from smelter.schemas.records import (
    RECORDS,
    Candidate,
    Comment,
    Dockerfiles,
    EnvAttempt,
    Environment,
    LinkedIssue,
    Provenance,
    PullRequest,
    Quality,
    Reason,
    Record,
    Rejection,
    Sample,
    ShardRow,
    Stage,
    Task,
    TestRun,
    TestStatus,
    Validation,
)


@cache
def load_schema(name: str) -> dict[str, Any]:
    """The JSON Schema of record ``name`` (a key of RECORDS), read from package data."""
    text = resources.files("smelter.schemas").joinpath(f"{name}.schema.json").read_text()
    return json.loads(text)


__all__ = [
    "RECORDS",
    "Candidate",
    "Comment",
    "Dockerfiles",
    "EnvAttempt",
    "Environment",
    "LinkedIssue",
    "Provenance",
    "PullRequest",
    "Quality",
    "Reason",
    "Record",
    "Rejection",
    "Sample",
    "ShardRow",
    "Stage",
    "Task",
    "TestRun",
    "TestStatus",
    "Validation",
    "load_schema",
]
