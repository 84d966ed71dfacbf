"""`smelter report OUT_DIR`: the funnel, task quality, environments and packing of one run.

Deliberate choices:
- Every number comes from a small pure function that takes DataFrames and returns a DataFrame
  (aggregation in polars). The notebook and the tests call exactly these functions, so what a
  notebook shows and what the report prints cannot drift apart.
- The funnel is recomputed per ``instance_id`` from the records themselves (PRs, candidates,
  tasks, rejects, shard doc ids); ``funnel.json`` is only cross-checked against them. A PR with no
  outcome, with two outcomes, or a record of a PR nobody mined is reported loudly: a funnel that
  does not add up means records were lost or duplicated.
- Every part of the output folder is optional. A run that stopped after mining still gets a
  report; what is missing is named, never raised. Unreadable lines are counted, not fatal.
- Figures use matplotlib's object API on an Agg canvas (no pyplot global state), so reports render
  headless, in worker processes and in notebooks alike.
- One small document model (heading, text, table, image, code) renders to both Markdown and HTML,
  so the two reports always say the same thing.
"""

from __future__ import annotations

import dataclasses
import difflib
import html
import io
import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import jsonlines
import polars as pl
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from pydantic import BaseModel, ValidationError

from smelter.schemas import Candidate, Environment, PullRequest, Rejection, Task

M = TypeVar("M", bound=BaseModel)

# --------------------------------------------------------------------------- vocabulary

STEPS: tuple[str, ...] = (
    "mined",
    "candidates",
    "environments built",
    "validated",
    "cleaned",
    "packed",
)
"""Funnel steps in order; a record's ``reached`` column is an index into this tuple."""

STAGE_ORDER: tuple[str, ...] = (
    "mine",
    "snapshot",
    "environment",
    "validate",
    "clean",
    "render",
    "tokenize",
    "pack",
)
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
# The last funnel step a record reached when a stage rejected it.
REACHED_WHEN_REJECTED = {
    "mine": 0,
    "snapshot": 0,
    "environment": 1,
    "validate": 2,
    "clean": 3,
    "render": 4,
    "tokenize": 4,
    "pack": 4,
}
# Rejections after a task exists: they decide "packed", not whether the PR became a task.
POST_TASK_STAGES = frozenset({"render", "tokenize", "pack"})

PARTS: dict[str, str] = {
    "pull_requests": "pull_requests.jsonl",
    "candidates": "candidates.jsonl",
    "tasks": "tasks.jsonl",
    "rejects": "rejects.jsonl",
    "funnel": "funnel.json",
    "run": "run.json",
    "shards": "shards/*.parquet",
    "shard_stats": "shards/stats.json",
}
PART_EFFECT = {
    "pull_requests": "PRs mined are inferred from the other files",
    "candidates": "the snapshot stage's output is unknown",
    "tasks": "no task quality, no examples",
    "rejects": "rejection reasons are unknown",
    "funnel": "nothing to cross-check the funnel against",
    "run": "no config or stage timings",
    "shards": "no packing section",
    "shard_stats": "packing figures come from the shards alone",
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


def _frame(rows: Sequence[dict[str, Any]], schema: dict[str, Any]) -> pl.DataFrame:
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
    return _frame(rows, PR_SCHEMA)


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
    return _frame([candidate_row(c) for c in candidates], CANDIDATE_SCHEMA)


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
    return _frame([task_row(t) for t in tasks], TASK_SCHEMA)


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
    return _frame([row for t in tasks for row in run_rows(t)], RUN_SCHEMA)


test_run_frame.__test__ = False  # type: ignore[attr-defined]  # not a pytest test despite its name


def environment_frame(candidates: Iterable[Candidate], tasks: Iterable[Task]) -> pl.DataFrame:
    """Every recorded environment, one per instance; a task's copy wins over its candidate's."""
    envs: dict[str, tuple[str, Environment]] = {}
    for c in candidates:
        if c.environment is not None:
            envs[c.instance_id] = (c.repo, c.environment)
    for t in tasks:
        envs[t.instance_id] = (t.repo, t.environment)
    return _frame([env_row(iid, repo, e) for iid, (repo, e) in sorted(envs.items())], ENV_SCHEMA)


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
    return _frame(rows, REJECT_SCHEMA)


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
            problems.append(f"shards/{path.name}: unreadable ({type(e).__name__}: {e})")
    if not frames:
        return _frame([], SHARD_SCHEMA), problems
    return pl.concat(frames, how="vertical").cast(SHARD_SCHEMA), problems  # type: ignore[arg-type]


def read_records(path: Path, model: type[M]) -> tuple[list[M], list[str]]:
    """Records of one JSONL file; a line that is not JSON or not a valid record is a problem."""
    problems: list[str] = []
    return list(iter_records(path, model, problems)), problems


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


def _read_json(path: Path, problems: list[str]) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        problems.append(f"{path.name}: unreadable ({e})")
        return None
    if not isinstance(doc, dict):
        problems.append(f"{path.name}: expected a JSON object")
        return None
    return doc


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
    funnel_json: dict[str, Any] | None
    run_json: dict[str, Any] | None
    shard_stats: dict[str, Any] | None
    present: dict[str, bool]
    problems: tuple[str, ...]

    def task(self, instance_id: str) -> Task:
        """The full Task record, for opening one task in a notebook."""
        for t in iter_records(self.out_dir / PARTS["tasks"], Task, []):
            if t.instance_id == instance_id:
                return t
        raise KeyError(instance_id)


def load_output(out_dir: str | os.PathLike[str]) -> RunData:
    """Read every part of an output folder that exists; absent parts become empty frames."""
    out = Path(out_dir)
    problems: list[str] = []
    present = {name: False for name in PARTS}

    def records(name: str, model: type[M]) -> Iterator[M]:
        path = out / PARTS[name]
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
    for name in ("funnel", "run", "shard_stats"):
        path = out / PARTS[name]
        present[name] = path.is_file()
        docs[name] = _read_json(path, problems) if present[name] else None

    shard_paths = sorted((out / "shards").glob("*.parquet"))
    present["shards"] = bool(shard_paths)
    shards, probs = read_shards(shard_paths)
    problems.extend(probs)

    return RunData(
        out_dir=out,
        pull_requests=prs,
        candidates=_frame(cand_rows, CANDIDATE_SCHEMA),
        tasks=_frame(task_rows, TASK_SCHEMA),
        runs=_frame(runs, RUN_SCHEMA),
        environments=_frame([envs[k] for k in sorted(envs)], ENV_SCHEMA),
        rejects=rejects,
        shards=shards,
        funnel_json=docs["funnel"],
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
    return [f"{PARTS[name]} — {effect[name]}" for name, ok in present.items() if not ok]


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


# --------------------------------------------------------------------------- funnel

OUTCOME_SCHEMA: dict[str, Any] = {
    "instance_id": pl.String,
    "repo": pl.String,
    "outcome": pl.String,
    "stage": pl.String,
    "reason": pl.String,
    "reached": pl.Int64,
    "outcomes": pl.Int64,
    "orphan": pl.Boolean,
    "in_candidates": pl.Boolean,
    "is_task": pl.Boolean,
    "packed": pl.Boolean,
    "post_stage": pl.String,
    "post_reason": pl.String,
}


def _stage_rank(stage: pl.Expr) -> pl.Expr:
    return stage.replace_strict(
        {s: i for i, s in enumerate(STAGE_ORDER)}, default=len(STAGE_ORDER), return_dtype=pl.Int64
    )


def _reached_when_rejected(stage: pl.Expr) -> pl.Expr:
    return stage.replace_strict(REACHED_WHEN_REJECTED, default=0, return_dtype=pl.Int64)


def instance_outcomes(
    pull_requests: pl.DataFrame,
    candidates: pl.DataFrame,
    tasks: pl.DataFrame,
    rejects: pl.DataFrame,
    shards: pl.DataFrame,
    *,
    prs_known: bool = True,
) -> pl.DataFrame:
    """One row per PR: its outcome (task | rejected | pending | multiple), stage, reason, reached.

    Mined PRs are ``pull_requests`` plus mine-stage rejections (a filter may reject a PR before it
    is written). ``orphan`` marks an id that appears downstream but was never mined; with
    ``prs_known=False`` (no pull_requests.jsonl) every id seen counts as mined.
    """
    ids = lambda df: df.select("instance_id", "repo")  # noqa: E731
    mine_rejects = rejects.filter(pl.col("stage") == "mine")
    mined = pl.concat([ids(pull_requests), ids(mine_rejects)])
    everything = pl.concat([mined, ids(candidates), ids(tasks), ids(rejects)], how="vertical")
    universe = (
        everything.filter(pl.col("instance_id") != "")
        .group_by("instance_id", maintain_order=True)
        .agg(pl.col("repo").filter(pl.col("repo") != "").first())
        .with_columns(pl.col("repo").fill_null(""))
    )
    mined_ids = mined.get_column("instance_id")
    universe = universe.with_columns(
        orphan=~pl.col("instance_id").is_in(mined_ids.implode()) if prs_known else pl.lit(False)
    )

    pre = (
        rejects.filter(~pl.col("stage").is_in(list(POST_TASK_STAGES)))
        .with_columns(rank=_stage_rank(pl.col("stage")))
        .sort("rank")
        .group_by("instance_id")
        .agg(
            n_rej=pl.len(),
            stage=pl.col("stage").first(),
            reason=pl.col("reason").first(),
        )
    )
    post = (
        rejects.filter(pl.col("stage").is_in(list(POST_TASK_STAGES)))
        .group_by("instance_id")
        .agg(post_stage=pl.col("stage").first(), post_reason=pl.col("reason").first())
    )
    n_task = tasks.group_by("instance_id").agg(n_task=pl.len())
    packed_ids = (
        shards.select(pl.col("doc_ids").explode().alias("doc"))
        .drop_nulls()
        .select(pl.col("doc").str.split("#").list.first().alias("instance_id"))
        .unique()
        .with_columns(packed=pl.lit(True))
    )
    cand_ids = candidates.group_by("instance_id").agg(
        in_candidates=pl.lit(True), cand_env=pl.col("has_environment").any()
    )

    df = (
        universe.join(pre, on="instance_id", how="left")
        .join(post, on="instance_id", how="left")
        .join(n_task, on="instance_id", how="left")
        .join(packed_ids, on="instance_id", how="left")
        .join(cand_ids, on="instance_id", how="left")
        .with_columns(
            pl.col("n_rej", "n_task").fill_null(0),
            pl.col("packed", "in_candidates", "cand_env").fill_null(False),
        )
        .with_columns(
            outcomes=pl.col("n_rej") + pl.col("n_task"),
            is_task=pl.col("n_task") > 0,
        )
    )
    task_reached = pl.when(pl.col("packed")).then(5).otherwise(4)
    df = df.with_columns(
        outcome=pl.when(pl.col("outcomes") == 0)
        .then(pl.lit("pending"))
        .when(pl.col("outcomes") > 1)
        .then(pl.lit("multiple"))
        .when(pl.col("is_task"))
        .then(pl.lit("task"))
        .otherwise(pl.lit("rejected")),
        reached=pl.when(pl.col("is_task"))
        .then(task_reached)
        .when(pl.col("n_rej") > 0)
        .then(_reached_when_rejected(pl.col("stage")))
        .when(pl.col("cand_env"))
        .then(2)
        .when(pl.col("in_candidates"))
        .then(1)
        .otherwise(0),
    )
    return df.select(list(OUTCOME_SCHEMA)).cast(OUTCOME_SCHEMA)


def outcomes_of(data: RunData) -> pl.DataFrame:
    return instance_outcomes(
        data.pull_requests,
        data.candidates,
        data.tasks,
        data.rejects,
        data.shards,
        prs_known=data.present["pull_requests"],
    )


def steps_with_evidence(present: dict[str, bool], rejects: pl.DataFrame) -> set[str]:
    """Funnel steps the output folder can speak about; the others print as 'no output'."""
    stages = set(rejects.get_column("stage").unique().to_list())
    have: set[str] = set()
    if present.get("pull_requests") or stages:
        have.add("mined")
    if present.get("candidates") or stages - {"mine"} or present.get("tasks"):
        have.add("candidates")
    if present.get("tasks") or stages & {"environment", "validate", "clean"}:
        have.add("environments built")
    if present.get("tasks") or stages & {"validate", "clean"}:
        have.add("validated")
    if present.get("tasks") or "clean" in stages:
        have.add("cleaned")
    if present.get("shards") or stages & POST_TASK_STAGES:
        have.add("packed")
    return have


def funnel_steps(outcomes: pl.DataFrame, evidence: set[str] | None = None) -> pl.DataFrame:
    """PRs reaching each step, rejected on the way to it, and pending (no outcome) before it."""
    rows = []
    prev: int | None = None
    for k, step in enumerate(STEPS):
        known = evidence is None or step in evidence
        count = outcomes.filter(pl.col("reached") >= k).height if known else None
        lost_here = outcomes.filter(pl.col("reached") == k - 1) if k else outcomes.head(0)
        if k == len(STEPS) - 1:
            rejected = lost_here.filter(pl.col("post_stage").is_not_null()).height
            pending = lost_here.height - rejected
        else:
            rejected = lost_here.filter(pl.col("outcome") == "rejected").height
            pending = lost_here.filter(pl.col("outcome") == "pending").height
        rows.append(
            {
                "step": step,
                "count": count,
                "dropped": (prev - count) if (prev is not None and count is not None) else None,
                "rejected": rejected if k and known else None,
                "pending": pending if k and known else None,
            }
        )
        prev = count if count is not None else prev
    schema = {
        "step": pl.String,
        "count": pl.Int64,
        "dropped": pl.Int64,
        "rejected": pl.Int64,
        "pending": pl.Int64,
    }
    return _frame(rows, schema)


def funnel_by_repo(outcomes: pl.DataFrame) -> pl.DataFrame:
    """Per repository: PRs at each funnel step, tasks, rejected and unresolved."""
    aggs = [(pl.col("reached") >= k).sum().alias(step) for k, step in enumerate(STEPS)]
    return (
        outcomes.group_by("repo")
        .agg(
            *aggs,
            rejected=(pl.col("outcome") == "rejected").sum(),
            pending=(pl.col("outcome") == "pending").sum(),
            multiple=(pl.col("outcome") == "multiple").sum(),
        )
        .with_columns(pl.exclude("repo").cast(pl.Int64))
        .sort("repo")
    )


def rejection_reasons(rejects: pl.DataFrame, by_repo: bool = False) -> pl.DataFrame:
    """Rejections counted by (repo,) stage and reason, in pipeline order, largest first."""
    keys = ["repo", "stage", "reason"] if by_repo else ["stage", "reason"]
    return (
        rejects.group_by(keys)
        .agg(count=pl.len().cast(pl.Int64))
        .with_columns(rank=_stage_rank(pl.col("stage")))
        .sort(
            [*(["repo"] if by_repo else []), "rank", "count", "reason"],
            descending=[*([False] if by_repo else []), False, True, False],
        )
        .drop("rank")
    )


@dataclasses.dataclass(frozen=True)
class FunnelCheck:
    """Does every mined PR end as exactly one task or one rejection?"""

    mined: int
    tasks: int
    rejected: int
    pending: int
    multiple: int
    orphans: int
    messages: tuple[str, ...]
    notes: tuple[str, ...] = ()

    @property
    def balanced(self) -> bool:
        return not self.messages

    @property
    def summary(self) -> str:
        extra = "".join(
            f" + {n} {label}"
            for n, label in ((self.pending, "pending"), (self.multiple, "with several outcomes"))
            if n
        )
        return f"{self.mined} mined = {self.tasks} tasks + {self.rejected} rejected{extra}"


# The funnel step a run stopped with ``--until STAGE`` delivers its PRs to.
UNTIL_STEP = {"mine": 0, "snapshot": 1, "environment": 2, "validate": 3}


def run_until(run_json: dict[str, Any] | None) -> str | None:
    """The ``--until`` stage recorded in run.json (``plan.until``), if the run stopped early."""
    if not run_json:
        return None
    plan = run_json.get("plan")
    until = plan.get("until") if isinstance(plan, dict) else run_json.get("until")
    return normalize_stage(until) if isinstance(until, str) else None


def funnel_check(
    outcomes: pl.DataFrame,
    rejects: pl.DataFrame,
    funnel_json: dict[str, Any] | None = None,
    present: dict[str, bool] | None = None,
    until: str | None = None,
) -> FunnelCheck:
    """Every way the funnel can fail to add up, each as one line naming example instance ids.

    With ``until`` (the run's ``--until`` stage), PRs that reached that stage's output and went no
    further are expected: they become a note, not a failure.
    """
    present = present or {}
    mined_rows = outcomes.filter(~pl.col("orphan"))
    count = lambda o: mined_rows.filter(pl.col("outcome") == o).height  # noqa: E731
    messages: list[str] = []
    notes: list[str] = []

    def examples(df: pl.DataFrame) -> str:
        ids = df.get_column("instance_id").head(3).to_list()
        return ", ".join(ids) + (", …" if df.height > 3 else "")

    pending = mined_rows.filter(pl.col("outcome") == "pending")
    if until in UNTIL_STEP and pending.height:
        stopped = pending.filter(pl.col("reached") >= UNTIL_STEP[until])
        if stopped.height:
            notes.append(
                f"{stopped.height} PRs went no further than '{until}': the run was stopped there "
                "on purpose (--until)"
            )
        pending = pending.filter(pl.col("reached") < UNTIL_STEP[until])
    if pending.height:
        last = last_stage_with_output(present)
        why = (
            f" (the output folder has no stage output after '{last}': the run did not finish)"
            if not present.get("tasks")
            else ""
        )
        messages.append(f"{pending.height} PRs have no outcome{why}: {examples(pending)}")
    multiple = outcomes.filter(pl.col("outcome") == "multiple")
    if multiple.height:
        messages.append(
            f"{multiple.height} PRs have more than one outcome (task and/or several rejections): "
            f"{examples(multiple)}"
        )
    orphans = outcomes.filter(pl.col("orphan"))
    if orphans.height:
        messages.append(
            f"{orphans.height} ids appear downstream but not in pull_requests.jsonl: "
            f"{examples(orphans)}"
        )
    if present.get("candidates"):
        skipped = outcomes.filter(pl.col("is_task") & ~pl.col("in_candidates"))
        if skipped.height:
            messages.append(f"{skipped.height} tasks have no candidate: {examples(skipped)}")
    if present.get("shards"):
        unpacked = outcomes.filter(
            pl.col("is_task") & ~pl.col("packed") & pl.col("post_stage").is_null()
        )
        if unpacked.height:
            messages.append(
                f"{unpacked.height} tasks are neither packed nor rejected by render/tokenize/pack: "
                f"{examples(unpacked)}"
            )
    messages.extend(funnel_json_mismatches(funnel_json, rejects, mined_rows.height))
    return FunnelCheck(
        mined=mined_rows.height,
        tasks=count("task"),
        rejected=count("rejected"),
        pending=count("pending"),
        multiple=count("multiple"),
        orphans=orphans.height,
        messages=tuple(messages),
        notes=tuple(notes),
    )


def check_of(data: RunData, outcomes: pl.DataFrame | None = None) -> FunnelCheck:
    """``funnel_check`` with everything it needs taken from a loaded output folder."""
    return funnel_check(
        outcomes if outcomes is not None else outcomes_of(data),
        data.rejects,
        data.funnel_json,
        data.present,
        run_until(data.run_json),
    )


def funnel_json_mismatches(
    funnel_json: dict[str, Any] | None, rejects: pl.DataFrame, mined: int | None = None
) -> list[str]:
    """Where the pipeline's own funnel.json disagrees with rejects.jsonl, the PRs, or itself."""
    if not funnel_json:
        return []
    out: list[str] = []
    counted = {
        (s, r): n
        for s, r, n in rejection_reasons(rejects).select("stage", "reason", "count").iter_rows()
    }
    stages = funnel_json.get("stages")
    if not isinstance(stages, list):
        return ["funnel.json has no 'stages' list"]
    first = stages[0] if stages and isinstance(stages[0], dict) else {}
    if mined is not None and isinstance(first.get("in"), int) and first["in"] != mined:
        out.append(f"funnel.json: {first['in']} PRs into '{first.get('stage')}', records: {mined}")
    for entry in stages:
        if not isinstance(entry, dict) or "stage" not in entry:
            out.append(f"funnel.json: malformed stage entry {entry!r:.80}")
            continue
        stage = normalize_stage(str(entry["stage"]))
        rejected = entry.get("rejected") or {}
        n_in, n_out = entry.get("in"), entry.get("out")
        if isinstance(n_in, int) and isinstance(n_out, int):
            total = sum(int(v) for v in rejected.values())
            if n_in - n_out != total:
                out.append(
                    f"funnel.json stage {stage}: in {n_in} - out {n_out} != {total} rejected"
                )
        for reason, n in rejected.items():
            got = counted.get((stage, reason), 0)
            if int(n) != got:
                out.append(f"funnel.json stage {stage}: {reason} = {n}, rejects.jsonl has {got}")
        for (s, reason), n in counted.items():
            if s == stage and reason not in rejected:
                out.append(f"funnel.json stage {stage}: {reason} missing, rejects.jsonl has {n}")
    return out


# --------------------------------------------------------------------------- task quality


def _num(value: Any) -> float | None:
    """A polars scalar result (median, max, …) as a float; None for an empty or null column."""
    return None if value is None else float(value)


def describe(df: pl.DataFrame, columns: Sequence[str]) -> pl.DataFrame:
    """n / min / median / mean / p90 / max of numeric columns, one row per column."""
    rows = []
    for c in columns:
        s = df.get_column(c).drop_nulls().cast(pl.Float64)
        rows.append(
            {
                "metric": c,
                "n": s.len(),
                "min": s.min() if s.len() else None,
                "median": s.median() if s.len() else None,
                "mean": s.mean() if s.len() else None,
                "p90": s.quantile(0.9, "nearest") if s.len() else None,
                "max": s.max() if s.len() else None,
            }
        )
    schema = {
        "metric": pl.String,
        "n": pl.Int64,
        "min": pl.Float64,
        "median": pl.Float64,
        "mean": pl.Float64,
        "p90": pl.Float64,
        "max": pl.Float64,
    }
    return _frame(rows, schema)


TASK_SIZE_COLUMNS = (
    "f2p",
    "p2p",
    "patch_files",
    "patch_hunks",
    "patch_lines",
    "test_patch_files",
    "test_patch_hunks",
    "test_patch_lines",
    "flaky",
)
CLEANING_COLUMNS = (
    "raw_chars",
    "statement_chars",
    "length_ratio",
    "edit_similarity",
    "leak_overlap",
)


def task_sizes(tasks: pl.DataFrame) -> pl.DataFrame:
    return describe(tasks, TASK_SIZE_COLUMNS)


def test_durations(runs: pl.DataFrame) -> pl.DataFrame:
    """Per side (before/after): runs, timeouts and the spread of test-run seconds."""
    return (
        runs.group_by("side")
        .agg(
            runs=pl.len().cast(pl.Int64),
            timed_out=pl.col("timed_out").sum().cast(pl.Int64),
            median_s=pl.col("duration_seconds").median(),
            p90_s=pl.col("duration_seconds").quantile(0.9, "nearest"),
            max_s=pl.col("duration_seconds").max(),
            total_s=pl.col("duration_seconds").sum(),
        )
        .sort("side", descending=True)  # before, then after
    )


test_durations.__test__ = False  # type: ignore[attr-defined]


def flaky_tests(tasks: pl.DataFrame) -> pl.DataFrame:
    """(instance_id, repo, test) of every test that flipped between validation reruns."""
    return (
        tasks.select("instance_id", "repo", pl.col("flaky_tests").alias("test"))
        .explode("test")
        .drop_nulls("test")
    )


def judge_scores(tasks: pl.DataFrame) -> pl.DataFrame:
    """How many tasks got each judge score (0..3), per score kind; unscored tasks as null."""
    parts = [
        tasks.group_by(pl.col(col).alias("score"))
        .agg(tasks=pl.len().cast(pl.Int64))
        .with_columns(kind=pl.lit(col))
        for col in ("specification_score", "test_alignment_score")
    ]
    return (
        pl.concat(parts).select("kind", "score", "tasks").sort(["kind", "score"], nulls_last=True)
        if tasks.height
        else _frame([], {"kind": pl.String, "score": pl.Int64, "tasks": pl.Int64})
    )


def cleaning_summary(tasks: pl.DataFrame) -> pl.DataFrame:
    """Which statement each task uses (raw / normalized / rewritten) and how much it changed."""
    return (
        tasks.with_columns(pl.col("statement_used").fill_null("not cleaned"))
        .group_by("statement_used")
        .agg(
            tasks=pl.len().cast(pl.Int64),
            median_length_ratio=pl.col("length_ratio").median(),
            median_similarity=pl.col("edit_similarity").median(),
            unchanged=(pl.col("raw_statement") == pl.col("problem_statement")).sum().cast(pl.Int64),
        )
        .sort("statement_used")
    )


def filter_tasks(
    tasks: pl.DataFrame,
    repo: str | None = None,
    min_specification_score: int | None = None,
    min_test_alignment_score: int | None = None,
    text: str | None = None,
) -> pl.DataFrame:
    """Drill-down filter for the notebook: by repository, minimum judge scores, statement text."""
    out = tasks
    if repo:
        out = out.filter(pl.col("repo") == repo)
    if min_specification_score is not None:
        out = out.filter(pl.col("specification_score") >= min_specification_score)
    if min_test_alignment_score is not None:
        out = out.filter(pl.col("test_alignment_score") >= min_test_alignment_score)
    if text:
        out = out.filter(pl.col("problem_statement").str.contains(text, literal=True))
    return out


def filter_rejects(
    rejects: pl.DataFrame,
    repo: str | None = None,
    stage: str | None = None,
    reason: str | None = None,
) -> pl.DataFrame:
    out = rejects
    for col, value in (("repo", repo), ("stage", stage), ("reason", reason)):
        if value:
            out = out.filter(pl.col(col) == value)
    return out


def example_tasks(tasks: pl.DataFrame, n: int = 3) -> pl.DataFrame:
    """A handful of tasks to read: per repository the one cleaning changed most, in turn."""
    return (
        tasks.sort(["edit_similarity", "instance_id"], nulls_last=True)
        .with_columns(_turn=pl.int_range(pl.len()).over("repo"))
        .sort(["_turn", "edit_similarity", "instance_id"], nulls_last=True)
        .drop("_turn")
        .head(n)
    )


# --------------------------------------------------------------------------- environments


def environments_by_recipe(envs: pl.DataFrame) -> pl.DataFrame:
    return (
        envs.group_by("recipe")
        .agg(
            built=pl.len().cast(pl.Int64),
            env_images=pl.col("env_hash").n_unique().cast(pl.Int64),
            cache_hits=pl.col("env_cache_hit").sum().cast(pl.Int64),
            median_build_s=pl.col("build_seconds").median(),
        )
        .sort(["built", "recipe"], descending=[True, False])
    )


def python_versions(envs: pl.DataFrame) -> pl.DataFrame:
    return (
        envs.group_by("python_version")
        .agg(environments=pl.len().cast(pl.Int64))
        .sort("python_version")
    )


def environment_summary(
    envs: pl.DataFrame, rejects: pl.DataFrame, outcomes: pl.DataFrame | None = None
) -> pl.DataFrame:
    """Build success overall, cache hits, image sizes.

    With ``outcomes`` the built count is the funnel's (every PR past the environment stage, also
    those validation rejected later, whose Environment the output folder does not keep); without
    it, only the environments recorded on tasks and candidates.
    """
    failed = rejects.filter(pl.col("stage") == "environment").height
    recorded = envs.height
    built = outcomes.filter(pl.col("reached") >= 2).height if outcomes is not None else recorded
    sizes = envs.get_column("image_size_bytes").drop_nulls().cast(pl.Float64)
    mb = lambda v: v / 1e6 if v is not None else None  # noqa: E731
    bs = envs.get_column("build_seconds")
    rows: list[tuple[str, float | None]] = [
        ("environments built", float(built)),
        ("environments recorded (tasks, candidates)", float(recorded)),
        ("environment-stage rejections", float(failed)),
        ("build success rate", built / (built + failed) if built + failed else None),
        ("distinct env images", float(envs.get_column("env_hash").n_unique())),
        ("env cache hits", float(envs.get_column("env_cache_hit").sum())),
        ("median image size MB", mb(_num(sizes.median()))),
        ("max image size MB", mb(_num(sizes.max()))),
        ("median build seconds", _num(bs.median())),
    ]
    return _frame(
        [{"metric": k, "value": v} for k, v in rows], {"metric": pl.String, "value": pl.Float64}
    )


# --------------------------------------------------------------------------- packing

_MAX_LEN_KEYS = (
    "max_len",
    "pack_max_len",
    "seq_len",
    "sequence_length",
    "max_seq_len",
    "max_length",
    "pack_sequence_length",
    "pack_seq_len",
)


def _find_number(doc: Any, keys: Sequence[str], positive: bool = True) -> int | None:
    """First int under any of ``keys`` anywhere in a nested JSON document (breadth first)."""
    queue = [doc]
    while queue:
        node = queue.pop(0)
        if isinstance(node, dict):
            for k in keys:
                v = node.get(k)
                if isinstance(v, int) and not isinstance(v, bool) and (v > 0 or not positive):
                    return v
            queue.extend(node.values())
        elif isinstance(node, list):
            queue.extend(node)
    return None


def sequence_length(
    shards: pl.DataFrame, shard_stats: dict[str, Any] | None, run_json: dict[str, Any] | None
) -> tuple[int | None, str]:
    """The packing length and where it came from: stats.json, run.json, else the rows' length."""
    for doc, where in ((shard_stats, "shards/stats.json"), (run_json, "run.json")):
        n = _find_number(doc, _MAX_LEN_KEYS) if doc else None
        if n:
            return n, where
    seq = shards.get_column("seq_len").drop_nulls()
    if seq.len():
        return int(_num(seq.max()) or 0), "longest sequence in the shards"
    return None, "unknown"


def with_fill(shards: pl.DataFrame, max_len: int | None) -> pl.DataFrame:
    return shards.with_columns(
        fill=(pl.col("num_tokens") / max_len) if max_len else pl.lit(None, pl.Float64)
    )


def packing_summary(
    shards: pl.DataFrame,
    max_len: int | None,
    rejects: pl.DataFrame,
    shard_stats: dict[str, Any] | None = None,
) -> pl.DataFrame:
    """Sequences against the lower bound, fill, documents, and documents split or dropped."""
    tokens = int(shards.get_column("num_tokens").sum())
    # A document split into chunks shows up in several sequences (chunk ids may carry "#k").
    per_doc = (
        shards.select("shard", "row", pl.col("doc_ids").alias("doc"))
        .explode("doc")
        .drop_nulls("doc")
        .with_columns(pl.col("doc").str.split("#").list.first())
        .group_by("doc")
        .agg(rows=pl.struct("shard", "row").n_unique())
    )
    split = per_doc.filter(pl.col("rows") > 1).height
    dropped = rejects.filter(pl.col("stage").is_in(list(POST_TASK_STAGES))).height
    fill = with_fill(shards, max_len).get_column("fill").drop_nulls()
    stats_dropped = _find_number(shard_stats, ("documents_dropped", "dropped"), positive=False)
    stats_split = _find_number(shard_stats, ("documents_split", "split"), positive=False)
    rows: list[tuple[str, float | None]] = [
        ("shards", float(shards.get_column("shard").n_unique())),
        ("sequences", float(shards.height)),
        ("tokens", float(tokens)),
        ("sequence length", float(max_len) if max_len else None),
        ("lower bound ceil(tokens/length)", float(-(-tokens // max_len)) if max_len else None),
        ("mean fill", _num(fill.mean())),
        ("p10 fill", _num(fill.quantile(0.1, "nearest"))),
        ("documents", float(per_doc.height)),
        ("documents split", float(split)),
        ("documents dropped (render/tokenize/pack rejects)", float(dropped)),
        ("documents dropped (stats.json)", None if stats_dropped is None else float(stats_dropped)),
        ("documents split (stats.json)", None if stats_split is None else float(stats_split)),
    ]
    return _frame(
        [{"metric": k, "value": v} for k, v in rows], {"metric": pl.String, "value": pl.Float64}
    )


def shard_tokens(shards: pl.DataFrame, max_len: int | None = None) -> pl.DataFrame:
    """Per shard file: sequences, tokens, documents and mean fill."""
    return (
        with_fill(shards, max_len)
        .group_by("shard")
        .agg(
            sequences=pl.len().cast(pl.Int64),
            tokens=pl.col("num_tokens").sum().cast(pl.Int64),
            documents=pl.col("docs").sum().cast(pl.Int64),
            mean_fill=pl.col("fill").mean(),
        )
        .sort("shard")
    )


# --------------------------------------------------------------------------- run.json


def key_values(doc: dict[str, Any] | None, limit: int = 40) -> pl.DataFrame:
    """A JSON document flattened to dotted keys and their scalar values, for a glance table."""
    rows: list[dict[str, str]] = []

    def walk(prefix: str, node: Any) -> None:
        if len(rows) >= limit:
            return
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(node, list) and node and all(isinstance(x, dict) for x in node):
            for i, v in enumerate(node):
                walk(f"{prefix}[{i}]", v)
        else:
            value = json.dumps(node) if isinstance(node, list) else str(node)
            rows.append({"key": prefix, "value": value if len(value) < 120 else value[:117] + "…"})

    walk("", doc or {})
    return _frame(rows, {"key": pl.String, "value": pl.String})


# --------------------------------------------------------------------------- figures

PALETTE = ("#2b6cb0", "#dd6b20", "#38a169", "#805ad5", "#e53e3e", "#319795", "#d69e2e", "#718096")


def _figure(rows: int = 1, cols: int = 1, size: tuple[float, float] = (8, 4)) -> tuple[Figure, Any]:
    fig = Figure(figsize=size, dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, axes


def figure_png(fig: Figure) -> bytes:
    """PNG bytes of a figure, e.g. for ``IPython.display.Image`` in a notebook."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _hist(
    ax: Any,
    values: Sequence[float],
    title: str,
    xlabel: str,
    color: str,
    value_range: tuple[float, float] | None = None,
) -> None:
    if len(values):
        lo, hi = min(values), max(values)
        if all(float(v).is_integer() for v in values) and hi - lo <= 30:
            # Small integer counts (tests per task): one bar per value, never a smeared bin.
            counts = Counter(int(v) for v in values)
            xs = list(range(int(lo), int(hi) + 1))
            ax.bar(xs, [counts[x] for x in xs], width=0.8, color=color)
            if len(xs) <= 12:
                ax.set_xticks(xs)
            else:
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        else:
            ax.hist(values, bins=20, range=value_range, color=color, edgecolor="white")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("tasks")


def plot_funnel(steps: pl.DataFrame, reasons: pl.DataFrame) -> Figure:
    """Left: PRs remaining at each step. Right: rejections by reason, coloured by stage."""
    fig, axes = _figure(1, 2, (11, 4.2))
    ax = axes[0][0]
    known = steps.filter(pl.col("count").is_not_null())
    labels = known.get_column("step").to_list()[::-1]
    counts = known.get_column("count").to_list()[::-1]
    bars = ax.barh(labels, counts, color=PALETTE[0])
    ax.bar_label(bars, padding=3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("PRs remaining at each step")
    ax.set_xlabel("PRs")
    ax.margins(x=0.15)
    ax = axes[0][1]
    if reasons.height:
        stages = reasons.get_column("stage").unique(maintain_order=True).to_list()
        colors = {s: PALETTE[i % len(PALETTE)] for i, s in enumerate(stages)}
        rlabels = [f"{s}: {r}" for s, r in reasons.select("stage", "reason").iter_rows()][::-1]
        rcounts = reasons.get_column("count").to_list()[::-1]
        rcolors = [colors[s] for s in reasons.get_column("stage").to_list()][::-1]
        bars = ax.barh(rlabels, rcounts, color=rcolors)
        ax.bar_label(bars, padding=3)
        ax.margins(x=0.15)
    else:
        ax.text(0.5, 0.5, "no rejections", ha="center", va="center", transform=ax.transAxes)
    ax.set_title("Rejections by stage: reason")
    ax.set_xlabel("PRs")
    return fig


def plot_task_sizes(tasks: pl.DataFrame) -> Figure:
    fig, axes = _figure(2, 2, (10, 6.5))
    specs = (
        ("f2p", "FAIL_TO_PASS tests per task", "tests"),
        ("p2p", "PASS_TO_PASS tests per task", "tests"),
        ("patch_lines", "Patch size", "changed lines"),
        ("test_patch_lines", "Test patch size", "changed lines"),
    )
    for i, (col, title, xlabel) in enumerate(specs):
        values = tasks.get_column(col).drop_nulls().to_list()
        _hist(axes[i // 2][i % 2], values, title, xlabel, PALETTE[i])
    return fig


def plot_test_durations(runs: pl.DataFrame) -> Figure:
    fig, axes = _figure(1, 1, (7, 3.8))
    ax = axes[0][0]
    sides = [s for s in ("before", "after") if s in set(runs.get_column("side").to_list())]
    data = [
        runs.filter(pl.col("side") == s).get_column("duration_seconds").to_list() for s in sides
    ]
    if sides:
        ax.boxplot(
            data,
            tick_labels=[f"{s} fix\n({len(d)} runs)" for s, d in zip(sides, data, strict=True)],
            vert=False,
        )
    else:
        ax.text(0.5, 0.5, "no validation runs", ha="center", va="center", transform=ax.transAxes)
    ax.set_title("Test-run duration per validation run")
    ax.set_xlabel("seconds")
    return fig


def plot_quality(tasks: pl.DataFrame) -> Figure:
    """Left: judge scores per kind. Right: statement length ratio against edit similarity."""
    fig, axes = _figure(1, 2, (11, 4))
    ax = axes[0][0]
    width = 0.38
    for i, col in enumerate(("specification_score", "test_alignment_score")):
        counts = [tasks.filter(pl.col(col) == s).height for s in range(4)]
        ax.bar(
            [s + (i - 0.5) * width for s in range(4)], counts, width, label=col, color=PALETTE[i]
        )
    unscored = tasks.filter(pl.col("specification_score").is_null()).height
    ax.set_xticks(range(4))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(f"Judge scores ({unscored} tasks unscored)")
    ax.set_xlabel("score (0 = bad, 3 = good)")
    ax.set_ylabel("tasks")
    ax.legend(fontsize=8)
    ax = axes[0][1]
    pts = tasks.drop_nulls(["length_ratio", "edit_similarity"])
    if pts.height:
        ax.scatter(
            pts.get_column("length_ratio"),
            pts.get_column("edit_similarity"),
            color=PALETTE[2],
            alpha=0.7,
        )
        ax.axvline(1.0, color="#999999", lw=0.8, ls="--")
    else:
        ax.text(0.5, 0.5, "no statements", ha="center", va="center", transform=ax.transAxes)
    ax.set_title("How much cleaning changed statements")
    ax.set_xlabel("length ratio (cleaned / raw)")
    ax.set_ylabel("edit similarity to raw")
    ax.set_ylim(-0.05, 1.05)
    return fig


def plot_environments(envs: pl.DataFrame) -> Figure:
    fig, axes = _figure(1, 3, (12, 3.8))
    for ax, col, title in (
        (axes[0][0], "recipe", "Environments by recipe"),
        (axes[0][1], "python_version", "Python versions"),
    ):
        counts = envs.group_by(col).agg(n=pl.len()).sort(col)
        if counts.height:
            bars = ax.bar(
                [str(x) for x in counts.get_column(col).to_list()],
                counts.get_column("n").to_list(),
                color=PALETTE[3],
            )
            ax.bar_label(bars)
            ax.tick_params(axis="x", labelrotation=20)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(title)
        ax.set_ylabel("environments")
    sizes = [s / 1e6 for s in envs.get_column("image_size_bytes").drop_nulls().to_list()]
    _hist(axes[0][2], sizes, "Instance image size", "MB", PALETTE[5])
    axes[0][2].set_ylabel("images")
    return fig


def plot_packing(shards: pl.DataFrame, max_len: int | None) -> Figure:
    fig, axes = _figure(1, 2, (11, 3.8))
    fill = with_fill(shards, max_len).get_column("fill").drop_nulls().to_list()
    _hist(
        axes[0][0], fill, f"Sequence fill (length {max_len})", "fill ratio", PALETTE[0], (0.0, 1.0)
    )
    axes[0][0].set_ylabel("sequences")
    per = shard_tokens(shards, max_len)
    ax = axes[0][1]
    tokens = per.get_column("tokens").to_list()
    if len(tokens) > 20:  # hundreds of shards: their spread, not one unreadable bar each
        _hist(ax, tokens, "Tokens per shard", "tokens", PALETTE[1])
        ax.set_ylabel("shards")
        return fig
    if tokens:
        bars = ax.bar(per.get_column("shard").to_list(), tokens, color=PALETTE[1])
        ax.bar_label(bars)
        ax.tick_params(axis="x", labelrotation=20)
    ax.set_title("Tokens per shard")
    ax.set_ylabel("tokens")
    return fig


# --------------------------------------------------------------------------- document model


@dataclasses.dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclasses.dataclass(frozen=True)
class Text:
    text: str
    kind: str = "p"  # p | warning | ok | missing


@dataclasses.dataclass(frozen=True)
class Table:
    df: pl.DataFrame
    caption: str = ""


@dataclasses.dataclass(frozen=True)
class Image:
    path: Path
    alt: str


@dataclasses.dataclass(frozen=True)
class Code:
    text: str
    summary: str = ""  # non-empty: collapsible in HTML
    lang: str = ""


Block = Heading | Text | Table | Image | Code


def _cell(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        if v.is_integer() and abs(v) < 1e15:
            return f"{int(v):,}"
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    if isinstance(v, list):
        return ", ".join(map(str, v))
    return str(v)


def _clip(text: str, max_lines: int = 60, max_chars: int = 4000) -> str:
    lines = text.split("\n")
    out = "\n".join(lines[:max_lines])[:max_chars]
    return out + ("\n… (truncated)" if out != text else "")


def render_figures(data: RunData, image_dir: Path) -> dict[str, Path]:
    """Write every plot that has data to ``image_dir``; returns name -> PNG path."""
    image_dir.mkdir(parents=True, exist_ok=True)
    outcomes = outcomes_of(data)
    evidence = steps_with_evidence(data.present, data.rejects)
    max_len, _ = sequence_length(data.shards, data.shard_stats, data.run_json)
    figures: dict[str, Figure] = {}
    if outcomes.height:
        figures["funnel"] = plot_funnel(
            funnel_steps(outcomes, evidence), rejection_reasons(data.rejects)
        )
    if data.tasks.height:
        figures["task_sizes"] = plot_task_sizes(data.tasks)
        figures["quality"] = plot_quality(data.tasks)
    if data.runs.height:
        figures["test_durations"] = plot_test_durations(data.runs)
    if data.environments.height:
        figures["environments"] = plot_environments(data.environments)
    if data.shards.height:
        figures["packing"] = plot_packing(data.shards, max_len)
    paths = {}
    for name, fig in figures.items():
        path = image_dir / f"{name}.png"
        fig.savefig(path)
        paths[name] = path
    return paths


def build_document(data: RunData, images: dict[str, Path], examples: int = 3) -> list[Block]:
    """The report as blocks; pure given the data and the already rendered images."""
    b: list[Block] = [Heading(f"smelter report: {data.out_dir.name or data.out_dir}", 1)]
    b.append(Text(f"Output folder: `{data.out_dir}`"))
    missing = missing_parts(data.present, data.shard_stats)
    if missing:
        b.append(Heading("Missing"))
        b.append(
            Text("These parts of the output folder are absent, so the report lacks:", "missing")
        )
        b.extend(Text(f"- {m}", "missing") for m in missing)
    if data.problems:
        b.append(Heading("Unreadable records"))
        b.extend(Text(f"- {p}", "warning") for p in data.problems[:20])
        if len(data.problems) > 20:
            b.append(Text(f"- … and {len(data.problems) - 20} more", "warning"))

    # funnel
    outcomes = outcomes_of(data)
    evidence = steps_with_evidence(data.present, data.rejects)
    check = check_of(data, outcomes)
    b.append(Heading("Funnel"))
    if not outcomes.height:
        b.append(Text("No PRs in this output folder: nothing was mined.", "missing"))
    else:
        if check.balanced:
            b.append(Text(f"The funnel adds up: {check.summary}.", "ok"))
        else:
            b.append(Text(f"THE FUNNEL DOES NOT ADD UP: {check.summary}.", "warning"))
            b.extend(Text(f"- {m}", "warning") for m in check.messages)
        b.extend(Text(f"- {n}", "missing") for n in check.notes)
        b.append(
            Table(
                funnel_steps(outcomes, evidence),
                "PRs at each step; 'rejected' and 'pending' (no outcome) explain the drop "
                "from the previous step; — = no output for that step",
            )
        )
        if "funnel" in images:
            b.append(Image(images["funnel"], "funnel and rejection reasons"))
        reasons = rejection_reasons(data.rejects)
        if reasons.height:
            b.append(Heading("Rejections by stage and reason", 3))
            b.append(Table(reasons))
        b.append(Heading("Per repository", 3))
        b.append(Table(funnel_by_repo(outcomes)))
        by_repo = rejection_reasons(data.rejects, by_repo=True)
        if by_repo.height and by_repo.get_column("repo").n_unique() > 1:
            b.append(Table(by_repo, "rejections per repository"))

    # task quality
    b.append(Heading("Task quality"))
    if not data.tasks.height:
        b.append(Text("No tasks (tasks.jsonl missing or empty).", "missing"))
    else:
        b.append(
            Text(
                f"{data.tasks.height} tasks from "
                f"{data.tasks.get_column('repo').n_unique()} repositories."
            )
        )
        b.append(
            Table(
                task_sizes(data.tasks),
                "tests per task and patch sizes (files, hunks, changed lines)",
            )
        )
        if "task_sizes" in images:
            b.append(Image(images["task_sizes"], "F2P/P2P counts and patch sizes"))
        b.append(Heading("Test durations", 3))
        if data.runs.height:
            b.append(Table(test_durations(data.runs), "seconds per validation run"))
            if "test_durations" in images:
                b.append(Image(images["test_durations"], "test-run durations"))
        else:
            b.append(Text("No validation runs recorded on the tasks.", "missing"))
        flaky = flaky_tests(data.tasks)
        b.append(Heading("Flaky tests", 3))
        if flaky.height:
            b.append(
                Text(
                    f"{flaky.height} flaky tests in "
                    f"{flaky.get_column('instance_id').n_unique()} tasks "
                    "(excluded from FAIL_TO_PASS / PASS_TO_PASS):"
                )
            )
            b.append(Table(flaky.head(30)))
        else:
            b.append(Text("No test flipped between reruns."))
        b.append(Heading("Judge scores and cleaning", 3))
        cleaned = data.tasks.filter(pl.col("cleaned")).height
        b.append(Text(f"{cleaned} of {data.tasks.height} tasks went through the cleaner."))
        b.append(Table(judge_scores(data.tasks), "tasks per judge score (— = not scored)"))
        b.append(
            Table(
                cleaning_summary(data.tasks),
                "statement used, and how far it moved from the raw text",
            )
        )
        b.append(Table(describe(data.tasks, CLEANING_COLUMNS)))
        if "quality" in images:
            b.append(Image(images["quality"], "judge scores and statement change"))

    # environments
    b.append(Heading("Environments"))
    if (
        not data.environments.height
        and not data.rejects.filter(pl.col("stage") == "environment").height
    ):
        b.append(
            Text("No environments recorded (no tasks, no environment-stage rejections).", "missing")
        )
    else:
        b.append(
            Text(
                "Environment details are recorded on tasks (and on candidates when the "
                "environment stage wrote them); builds of PRs rejected later count in the "
                "funnel only."
            )
        )
        b.append(Table(environment_summary(data.environments, data.rejects, outcomes)))
        b.append(Table(environments_by_recipe(data.environments), "built by recipe rung"))
        b.append(Table(python_versions(data.environments)))
        env_fail = rejection_reasons(data.rejects.filter(pl.col("stage") == "environment"))
        if env_fail.height:
            b.append(Table(env_fail, "environment-stage failures"))
        if "environments" in images:
            b.append(Image(images["environments"], "recipes, python versions, image sizes"))

    # packing
    b.append(Heading("Packing"))
    if not data.shards.height:
        b.append(Text("No shards (shards/*.parquet missing or empty).", "missing"))
    else:
        max_len, where = sequence_length(data.shards, data.shard_stats, data.run_json)
        b.append(Text(f"Sequence length {max_len} (from {where})."))
        b.append(Table(packing_summary(data.shards, max_len, data.rejects, data.shard_stats)))
        b.append(Table(shard_tokens(data.shards, max_len), "per shard"))
        if "packing" in images:
            b.append(Image(images["packing"], "fill distribution and tokens per shard"))
    if data.shard_stats:
        b.append(Table(key_values(data.shard_stats), "shards/stats.json"))

    # examples
    ex = example_tasks(data.tasks, examples)
    if ex.height:
        b.append(Heading("Example tasks"))
        for row in ex.iter_rows(named=True):
            b.append(Heading(row["instance_id"], 3))
            b.append(
                Text(
                    f"repo {row['repo']} · FAIL_TO_PASS {row['f2p']} · PASS_TO_PASS {row['p2p']} · "
                    f"statement used: {row['statement_used'] or 'not cleaned'} · scores "
                    f"spec={_cell(row['specification_score'])} "
                    f"align={_cell(row['test_alignment_score'])}"
                )
            )
            b.append(Code(_clip(row["raw_statement"], 40), "statement before cleaning"))
            b.append(Code(_clip(row["problem_statement"], 40), "statement after cleaning"))
            b.append(Code(_clip(row["patch"]), "patch", "diff"))
            b.append(Code("\n".join(row["fail_to_pass"][:20]), "FAIL_TO_PASS tests"))

    # run
    if data.run_json:
        b.append(Heading("Run"))
        b.append(Table(key_values(data.run_json), "run.json (config, versions, stage seconds)"))
    return b


def render_markdown(blocks: Sequence[Block], base: Path) -> str:
    out: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            out.append(f"{'#' * block.level} {block.text}\n")
        elif isinstance(block, Text):
            prefix = {"warning": "**⚠** ", "missing": "", "ok": "✅ "}.get(block.kind, "")
            sep = "" if block.text.startswith("- ") else "\n"
            out.append(
                f"{prefix}{block.text}{sep}" if not block.text.startswith("- ") else block.text
            )
        elif isinstance(block, Table):
            df = block.df
            if block.caption:
                out.append(f"\n*{block.caption}*\n")
            if not df.height:
                out.append("(none)\n")
                continue
            esc = lambda s: _cell(s).replace("|", "\\|").replace("\n", " ")  # noqa: E731
            out.append("| " + " | ".join(df.columns) + " |")
            out.append("|" + "|".join("---" for _ in df.columns) + "|")
            out.extend("| " + " | ".join(esc(v) for v in row) + " |" for row in df.iter_rows())
            out.append("")
        elif isinstance(block, Image):
            out.append(f"\n![{block.alt}]({_rel(block.path, base)})\n")
        elif isinstance(block, Code):
            fence = "~~~~" if "```" in block.text else "```"
            if block.summary:
                out.append(f"**{block.summary}**\n")
            out.append(f"{fence}{block.lang}\n{block.text}\n{fence}\n")
    return "\n".join(out) + "\n"


def _rel(path: Path, base: Path) -> str:
    return Path(os.path.relpath(path.resolve(), base.resolve())).as_posix()


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#1a202c}
h1{border-bottom:2px solid #2b6cb0}h2{margin-top:2em;border-bottom:1px solid #cbd5e0}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
td,th{border:1px solid #cbd5e0;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#edf2f7}td.n{text-align:right;font-variant-numeric:tabular-nums}
caption{caption-side:top;text-align:left;font-style:italic;color:#4a5568}
.warning{background:#fff5f5;border-left:4px solid #e53e3e;padding:.3em .8em;margin:.2em 0}
.missing{background:#fffaf0;border-left:4px solid #dd6b20;padding:.3em .8em;margin:.2em 0}
.ok{background:#f0fff4;border-left:4px solid #38a169;padding:.3em .8em}
img{max-width:100%;border:1px solid #e2e8f0}
pre{background:#f7fafc;border:1px solid #e2e8f0;padding:.6em;overflow-x:auto;font-size:.85em}
"""


def render_html(blocks: Sequence[Block], base: Path) -> str:
    title = next((b.text for b in blocks if isinstance(b, Heading)), "smelter report")
    out = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
        f"</title><style>{CSS}</style></head><body>"
    ]
    code_re = re.compile(r"`([^`]+)`")
    for block in blocks:
        if isinstance(block, Heading):
            out.append(f"<h{block.level}>{html.escape(block.text)}</h{block.level}>")
        elif isinstance(block, Text):
            text = block.text[2:] if block.text.startswith("- ") else block.text
            body = code_re.sub(r"<code>\1</code>", html.escape(text))
            out.append(
                f"<div class='{block.kind}'>{body}</div>" if block.kind != "p" else f"<p>{body}</p>"
            )
        elif isinstance(block, Table):
            df = block.df
            cap = f"<caption>{html.escape(block.caption)}</caption>" if block.caption else ""
            if not df.height:
                out.append(f"<table>{cap}<tr><td>(none)</td></tr></table>")
                continue
            numeric = [dt.is_numeric() for dt in df.dtypes]
            head = "".join(f"<th>{html.escape(c)}</th>" for c in df.columns)
            rows = "".join(
                "<tr>"
                + "".join(
                    f"<td{' class=n' if num else ''}>{html.escape(_cell(v))}</td>"
                    for v, num in zip(row, numeric, strict=True)
                )
                + "</tr>"
                for row in df.iter_rows()
            )
            out.append(f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif isinstance(block, Image):
            out.append(
                f"<p><img src='{html.escape(_rel(block.path, base))}' "
                f"alt='{html.escape(block.alt)}'></p>"
            )
        elif isinstance(block, Code):
            pre = f"<pre>{html.escape(block.text)}</pre>"
            out.append(
                f"<details><summary>{html.escape(block.summary)}</summary>{pre}</details>"
                if block.summary
                else pre
            )
    out.append("</body></html>")
    return "\n".join(out)


@dataclasses.dataclass(frozen=True)
class ReportFiles:
    markdown: Path
    html: Path
    images: dict[str, Path]


def write_report(
    data: RunData,
    report_dir: Path | None = None,
    md_path: Path | None = None,
    html_path: Path | None = None,
    examples: int = 3,
) -> ReportFiles:
    """Render PNGs into ``report_dir`` (default OUT_DIR/report) and write report.md/.html."""
    report_dir = report_dir or data.out_dir / "report"
    md_path = md_path or report_dir / "report.md"
    html_path = html_path or report_dir / "report.html"
    images = render_figures(data, report_dir)
    blocks = build_document(data, images, examples)
    md_path.parent.mkdir(parents=True, exist_ok=True)
    html_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text(render_markdown(blocks, md_path.parent))
    html_path.write_text(render_html(blocks, html_path.parent))
    return ReportFiles(md_path, html_path, images)


# --------------------------------------------------------------------------- terminal + CLI


def print_summary(data: RunData, files: ReportFiles | None = None, console: Any = None) -> None:
    """The funnel, top rejection reasons and what is missing, as rich tables."""
    from rich.console import Console
    from rich.panel import Panel
    from rich.table import Table as RichTable

    console = console or Console()
    outcomes = outcomes_of(data)
    evidence = steps_with_evidence(data.present, data.rejects)
    check = check_of(data, outcomes)

    t = RichTable(title=f"Funnel: {data.out_dir}")
    for col in ("step", "count", "dropped", "rejected", "pending"):
        t.add_column(col, justify="left" if col == "step" else "right")
    for row in funnel_steps(outcomes, evidence).iter_rows():
        t.add_row(*(_cell(v) if v is not None else "—" for v in row))
    console.print(t)
    if outcomes.height and check.balanced:
        console.print(f"[green]funnel adds up:[/green] {check.summary}")
        for note in check.notes:
            console.print(f"[yellow]note:[/yellow] {note}")
    elif outcomes.height:
        console.print(
            Panel(
                "\n".join(check.messages),
                style="bold red",
                title=f"FUNNEL DOES NOT ADD UP: {check.summary}",
            )
        )

    reasons = rejection_reasons(data.rejects)
    if reasons.height:
        r = RichTable(title="Rejections")
        for col in ("stage", "reason", "count"):
            r.add_column(col, justify="right" if col == "count" else "left")
        for stage, reason, n in reasons.head(15).iter_rows():
            r.add_row(stage, reason, f"{n:,}")
        console.print(r)
    if data.tasks.height:
        s = describe(data.tasks, ("f2p", "p2p", "patch_lines", "test_patch_lines", "flaky"))
        q = RichTable(title=f"Tasks: {data.tasks.height}")
        for col in s.columns:
            q.add_column(col, justify="left" if col == "metric" else "right")
        for row in s.iter_rows():
            q.add_row(*(_cell(v) for v in row))
        console.print(q)
    for m in missing_parts(data.present, data.shard_stats):
        console.print(f"[yellow]missing:[/yellow] {m}")
    for p in data.problems[:10]:
        console.print(f"[red]unreadable:[/red] {p}")
    if files:
        console.print(f"wrote {files.html} and {files.markdown} ({len(files.images)} plots)")
