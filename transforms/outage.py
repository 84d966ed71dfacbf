"""Telling an outage from a result: when one infrastructure reason ends most of a stage's records.

Deliberate choices:
- A run whose clean stage rejected every task as ``llm_error`` (a wrong URL scheme, a server
  down, a format it refuses) is not a small dataset: it is a broken run, and exiting 0 hides it
  from a batch scheduler. Past ``outage_share`` of one stage's input, for one reason in
  ``INFRASTRUCTURE_REASONS``, the run ends non-zero with one line naming the stage, the reason,
  the count and the first record's detail.
- Decided on the funnel after the run, not mid-run: every record is still written, and these
  reasons are never put in the stage caches, so the same command resumes after the fix and
  redoes only the failed records.
- Pure over the funnel (``compute_funnel``'s shape) plus the rejects file for the detail.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from smelter.schemas import Reason

INFRASTRUCTURE_REASONS = (Reason.LLM_ERROR, Reason.ENGINE_ERROR)


def find_outage(funnel: Mapping[str, Any], share: float) -> tuple[str, str, int, int] | None:
    """(stage, reason, failed, records in) of the first stage where more than ``share`` of its
    records failed for one infrastructure reason; None when there is none."""
    for row in funnel.get("stages", []):
        n_in = int(row.get("in") or 0)
        for reason, count in sorted(row.get("rejected", {}).items()):
            if reason in INFRASTRUCTURE_REASONS and n_in and count / n_in > share:
                return str(row["stage"]), str(reason), int(count), n_in
    return None


def first_detail(rejects: Path, stage: str, reason: str) -> str:
    """Detail of the first rejection of ``stage`` for ``reason`` in a rejects JSONL file."""
    try:
        with rejects.open(encoding="utf-8") as f:
            for line in f:
                doc = json.loads(line)
                if doc.get("stage") == stage and doc.get("reason") == reason:
                    return str(doc.get("detail", "")).replace("\n", " ")[:200]
    except (OSError, ValueError):
        pass
    return ""


def outage_line(funnel: Mapping[str, Any], out_dir: str | Path, share: float) -> str | None:
    """The one line a failed run ends with, or None when no outage was seen."""
    found = find_outage(funnel, share)
    if found is None:
        return None
    stage, reason, count, n_in = found
    detail = first_detail(Path(out_dir) / "rejects.jsonl", stage, reason)
    return (
        f"{stage}: {count} of {n_in} records failed with {reason} (more than {share:.0%}): "
        f"an outage, not a result{f' ({detail})' if detail else ''}; fix it and run the same "
        "command again: finished records come from the cache"
    )
