"""Output records as DataFrames: one fixed schema per frame, and the pure measures behind columns.

Deliberate choices:
- Every frame has an explicit schema, so a folder with no records of a kind still yields a frame
  with the right columns and dtypes, and everything downstream runs unchanged on it.
- Rows are built one record at a time (``*_row``), so the loader can stream records and keep only
  rows (see ``run_folder.iter_records``).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Iterable, Sequence
from typing import Any

import polars as pl

from smelter.schemas import Candidate, Environment, PullRequest, Rejection, Task

STAGE_ALIASES = {
    "mining": "mine",
    "env": "environment",
    "environments": "environment",
    "build": "environment",
    "validation": "validate",
    "cleaning": "clean",
    "render_tokenize": "render",
    "render+tokenize": "render",
    "packing": "pack",
}


# --------------------------------------------------------------------------- frame schemas

PR_SCHEMA: dict[str, Any] = {
    "instance_id": pl.String,
    "repo": pl.String,
    "number": pl.Int64,
    "source": pl.String,
    "merge_style": pl.String,
    "created_at": pl.String,
    "merged_at": pl.String,
    "changed_files": pl.Int64,
    "lines_added": pl.Int64,
    "lines_deleted": pl.Int64,
    "linked_issues": pl.Int64,
}
CANDIDATE_SCHEMA: dict[str, Any] = {
    "instance_id": pl.String,
    "repo": pl.String,
    "pull_number": pl.Int64,
    "has_environment": pl.Boolean,
    "patch_files": pl.Int64,
    "patch_lines": pl.Int64,
    "test_patch_files": pl.Int64,
    "test_patch_lines": pl.Int64,
    "statement_chars": pl.Int64,
}
TASK_SCHEMA: dict[str, Any] = {
    "instance_id": pl.String,
    "repo": pl.String,
    "f2p": pl.Int64,
    "p2p": pl.Int64,
    "patch_files": pl.Int64,
    "patch_hunks": pl.Int64,
    "patch_lines": pl.Int64,
    "test_patch_files": pl.Int64,
    "test_patch_hunks": pl.Int64,
    "test_patch_lines": pl.Int64,
    "flaky": pl.Int64,
    "runs": pl.Int64,
    "validation_seconds": pl.Float64,
    "python_version": pl.String,
    "recipe": pl.String,
    "cleaned": pl.Boolean,
    "statement_used": pl.String,
    "specification_score": pl.Int64,
    "test_alignment_score": pl.Int64,
    "leak_overlap": pl.Float64,
    "model": pl.String,
    "prompt_version": pl.String,
    "raw_chars": pl.Int64,
    "statement_chars": pl.Int64,
    "length_ratio": pl.Float64,
    "edit_similarity": pl.Float64,
    "raw_statement": pl.String,
    "problem_statement": pl.String,
    "patch": pl.String,
    "test_patch": pl.String,
    "fail_to_pass": pl.List(pl.String),
    "pass_to_pass": pl.List(pl.String),
    "flaky_tests": pl.List(pl.String),
}
RUN_SCHEMA: dict[str, Any] = {
    "instance_id": pl.String,
    "repo": pl.String,
    "side": pl.String,
    "attempt": pl.Int64,
    "exit_code": pl.Int64,
    "duration_seconds": pl.Float64,
    "timed_out": pl.Boolean,
    "tests": pl.Int64,
    "passed": pl.Int64,
}
ENV_SCHEMA: dict[str, Any] = {
    "instance_id": pl.String,
    "repo": pl.String,
    "python_version": pl.String,
    "recipe": pl.String,
    "base_image": pl.String,
    "env_image": pl.String,
    "env_hash": pl.String,
    "env_cache_hit": pl.Boolean,
    "image_size_bytes": pl.Int64,
    "build_seconds": pl.Float64,
}
REJECT_SCHEMA: dict[str, Any] = {
    "instance_id": pl.String,
    "repo": pl.String,
    "stage": pl.String,
    "reason": pl.String,
    "detail": pl.String,
}
SHARD_SCHEMA: dict[str, Any] = {
    "shard": pl.String,
    "row": pl.Int64,
    "num_tokens": pl.Int64,
    "seq_len": pl.Int64,
    "docs": pl.Int64,
    "doc_ids": pl.List(pl.String),
    "doc_lengths": pl.List(pl.Int64),
}


def frame(rows: Sequence[dict[str, Any]], schema: dict[str, Any]) -> pl.DataFrame:
    return pl.DataFrame(list(rows), schema=schema, orient="row" if not rows else None)


# --------------------------------------------------------------------------- pure measures


@dataclasses.dataclass(frozen=True)
class DiffStats:
    files: int
    hunks: int
    added: int
    removed: int

    @property
    def lines(self) -> int:
        return self.added + self.removed


_HUNK = re.compile(r"^@@ -\d+(?:,(\d+))? \+\d+(?:,(\d+))? @@")


def diff_stats(patch: str) -> DiffStats:
    """Files, hunks and changed lines of a unified git diff.

    Hunk bodies are consumed by their header counts, so a removed line that reads ``-- x`` or an
    added ``++ y`` is never mistaken for a file header; binary patches count as files only.
    """
    files = hunks = added = removed = 0
    headers = 0
    old_left = new_left = 0
    for line in patch.split("\n"):
        if old_left > 0 or new_left > 0:
            tag = line[:1]
            if tag == "+":
                added += 1
                new_left -= 1
            elif tag == "-":
                removed += 1
                old_left -= 1
            elif tag != "\\":  # "\ No newline at end of file" belongs to no side
                old_left -= 1
                new_left -= 1
            continue
        if line.startswith("diff --git "):
            files += 1
        elif line.startswith("+++ "):
            headers += 1
        elif m := _HUNK.match(line):
            hunks += 1
            old_left = int(m[1]) if m[1] is not None else 1
            new_left = int(m[2]) if m[2] is not None else 1
    return DiffStats(files or headers, hunks, added, removed)


def statement_change(raw: str, final: str, limit: int = 4000) -> tuple[float | None, float]:
    """(length ratio final/raw, edit similarity 0..1) of a cleaned statement against its raw text.

    Similarity is difflib's ratio on the first ``limit`` characters: quadratic in the worst case,
    so capped to keep a report over many thousand tasks fast.
    """
    ratio = len(final) / len(raw) if raw else None
    sim = difflib.SequenceMatcher(None, raw[:limit], final[:limit]).ratio()
    return ratio, sim


def normalize_stage(stage: str) -> str:
    s = stage.strip().lower()
    return STAGE_ALIASES.get(s, s)


def repo_of(instance_id: str) -> str:
    """owner/name from an ``owner__repo-N`` id; empty when the id does not follow the convention."""
    m = re.fullmatch(r"(.+?)__(.+)-\d+", instance_id)
    return f"{m[1]}/{m[2]}" if m else ""


def doc_instance_id(doc_id: str) -> str:
    """The task a shard document came from; split chunks may carry a ``#k`` suffix."""
    return doc_id.split("#", 1)[0]


# --------------------------------------------------------------------------- records -> frames


def pull_request_frame(prs: Iterable[PullRequest]) -> pl.DataFrame:
    rows = [
        {
            "instance_id": p.instance_id,
            "repo": p.repo,
            "number": p.number,
            "source": p.source,
            "merge_style": p.merge_style,
            "created_at": p.created_at,
            "merged_at": p.merged_at,
            "changed_files": len(p.changed_files),
            "lines_added": p.lines_added,
            "lines_deleted": p.lines_deleted,
            "linked_issues": len(p.linked_issues),
        }
        for p in prs
    ]
    return frame(rows, PR_SCHEMA)


def candidate_row(c: Candidate) -> dict[str, Any]:
    code, test = diff_stats(c.patch), diff_stats(c.test_patch)
    return {
        "instance_id": c.instance_id,
        "repo": c.repo,
        "pull_number": c.pull_number,
        "has_environment": c.environment is not None,
        "patch_files": code.files,
        "patch_lines": code.lines,
        "test_patch_files": test.files,
        "test_patch_lines": test.lines,
        "statement_chars": len(c.problem_statement),
    }


def candidate_frame(candidates: Iterable[Candidate]) -> pl.DataFrame:
    return frame([candidate_row(c) for c in candidates], CANDIDATE_SCHEMA)


def task_row(t: Task) -> dict[str, Any]:
    """A task's row: sizes, tests, judge scores and how far cleaning moved the statement."""
    code, test = diff_stats(t.patch), diff_stats(t.test_patch)
    q = t.quality
    raw = q.raw_problem_statement if q else t.problem_statement
    ratio, sim = statement_change(raw, t.problem_statement)
    return {
        "instance_id": t.instance_id,
        "repo": t.repo,
        "f2p": len(t.FAIL_TO_PASS),
        "p2p": len(t.PASS_TO_PASS),
        "patch_files": code.files,
        "patch_hunks": code.hunks,
        "patch_lines": code.lines,
        "test_patch_files": test.files,
        "test_patch_hunks": test.hunks,
        "test_patch_lines": test.lines,
        "flaky": len(t.validation.flaky),
        "runs": len(t.validation.runs),
        "validation_seconds": t.validation.seconds,
        "python_version": t.environment.python_version,
        "recipe": t.environment.recipe,
        "cleaned": q is not None,
        "statement_used": q.used if q else None,
        "specification_score": q.specification_score if q else None,
        "test_alignment_score": q.test_alignment_score if q else None,
        "leak_overlap": q.leak_overlap if q else None,
        "model": q.model if q else None,
        "prompt_version": q.prompt_version if q else None,
        "raw_chars": len(raw),
        "statement_chars": len(t.problem_statement),
        "length_ratio": ratio,
        "edit_similarity": sim,
        "raw_statement": raw,
        "problem_statement": t.problem_statement,
        "patch": t.patch,
        "test_patch": t.test_patch,
        "fail_to_pass": list(t.FAIL_TO_PASS),
        "pass_to_pass": list(t.PASS_TO_PASS),
        "flaky_tests": list(t.validation.flaky),
    }


def task_frame(tasks: Iterable[Task]) -> pl.DataFrame:
    """One row per task (see ``task_row``)."""
    return frame([task_row(t) for t in tasks], TASK_SCHEMA)


def run_rows(t: Task) -> list[dict[str, Any]]:
    """One row per validation run (side, attempt): where test time goes, and timeouts."""
    return [
        {
            "instance_id": t.instance_id,
            "repo": t.repo,
            "side": r.side,
            "attempt": r.attempt,
            "exit_code": r.exit_code,
            "duration_seconds": r.duration_seconds,
            "timed_out": r.timed_out,
            "tests": len(r.statuses),
            "passed": sum(1 for s in r.statuses.values() if s == "passed"),
        }
        for r in t.validation.runs
    ]


def test_run_frame(tasks: Iterable[Task]) -> pl.DataFrame:
    return frame([row for t in tasks for row in run_rows(t)], RUN_SCHEMA)


test_run_frame.__test__ = False  # type: ignore[attr-defined]  # not a pytest test despite its name


def environment_frame(candidates: Iterable[Candidate], tasks: Iterable[Task]) -> pl.DataFrame:
    """Every recorded environment, one per instance; a task's copy wins over its candidate's."""
    envs: dict[str, tuple[str, Environment]] = {}
    for c in candidates:
        if c.environment is not None:
            envs[c.instance_id] = (c.repo, c.environment)
    for t in tasks:
        envs[t.instance_id] = (t.repo, t.environment)
    return frame([env_row(iid, repo, e) for iid, (repo, e) in sorted(envs.items())], ENV_SCHEMA)


def env_row(instance_id: str, repo: str, e: Environment) -> dict[str, Any]:
    return {
        "instance_id": instance_id,
        "repo": repo,
        "python_version": e.python_version,
        "recipe": e.recipe,
        "base_image": e.base_image,
        "env_image": e.env_image,
        "env_hash": e.env_hash,
        "env_cache_hit": e.env_cache_hit,
        "image_size_bytes": e.image_size_bytes,
        "build_seconds": e.build_seconds,
    }


def reject_frame(rejects: Iterable[Rejection]) -> pl.DataFrame:
    rows = [
        {
            "instance_id": r.instance_id,
            "repo": r.repo or repo_of(r.instance_id),
            "stage": normalize_stage(r.stage),
            "reason": r.reason.value,
            "detail": r.detail,
        }
        for r in rejects
    ]
    return frame(rows, REJECT_SCHEMA)
