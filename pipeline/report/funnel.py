"""The funnel: what became of every mined PR, and whether the output folder adds up.

Deliberate choices:
- The funnel is computed per ``instance_id`` from the records themselves (PRs, candidates, tasks,
  rejects, shard doc ids), here only: ``smelter run`` writes funnel.json with ``funnel_document``
  and ``smelter report`` shows ``funnel_steps`` and ``funnel_check`` of the same outcomes, so the
  two cannot disagree and nothing cross-checks one against the other.
- A PR with no outcome, with two outcomes, or a record of a PR nobody mined is reported loudly: a
  funnel that does not add up means records were lost or duplicated. Only a run stopped on purpose
  (``--until``) excuses the PRs that reached that stage's output and went no further.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl

from smelter.pipeline.report.frames import (
    frame,
    normalize_stage,
    pull_request_frame,
    reject_frame,
)
from smelter.pipeline.report.load import RunData, last_stage_with_output, read_shards
from smelter.pipeline.run_folder import FILES, PULL_REQUESTS, M, iter_records, shard_paths
from smelter.schemas import Candidate, PullRequest, Rejection, Stage, Task

STEPS: tuple[str, ...] = (
    "mined",
    "candidates",
    "environments built",
    "validated",
    "cleaned",
    "packed",
)
"""Funnel steps in order; a record's ``reached`` column is an index into this tuple."""

STAGE_ORDER: tuple[str, ...] = tuple(s.value for s in Stage)


# The last funnel step a record reached when a stage rejected it.
REACHED_WHEN_REJECTED = {
    Stage.MINE.value: 0,
    Stage.SNAPSHOT.value: 0,
    Stage.ENVIRONMENT.value: 1,
    Stage.VALIDATE.value: 2,
    Stage.CLEAN.value: 3,
    Stage.RENDER.value: 4,
    Stage.PACK.value: 4,
}
# Rejections after a task exists: they decide "packed", not whether the PR became a task.
POST_TASK_STAGES = frozenset({Stage.RENDER.value, Stage.PACK.value})


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
    return frame(rows, schema)


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
    until = plan.get("until") if isinstance(plan, dict) else None
    return normalize_stage(until) if isinstance(until, str) else None


def split_pending(outcomes: pl.DataFrame, until: str | None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(lost, stopped) mined PRs with no outcome: ``stopped`` are those a run stopped with
    ``--until`` delivered to that stage's output on purpose; ``lost`` are all the others."""
    pending = outcomes.filter(~pl.col("orphan") & (pl.col("outcome") == "pending"))
    if until not in UNTIL_STEP:
        return pending, pending.head(0)
    stopped = pl.col("reached") >= UNTIL_STEP[until]
    return pending.filter(~stopped), pending.filter(stopped)


def funnel_check(
    outcomes: pl.DataFrame,
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

    pending, stopped = split_pending(outcomes, until)
    if stopped.height:
        notes.append(
            f"{stopped.height} PRs went no further than '{until}': the run was stopped there "
            "on purpose (--until)"
        )
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
            f"{orphans.height} ids appear downstream but not in {PULL_REQUESTS}: "
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
                f"{unpacked.height} tasks are neither packed nor rejected by render or pack: "
                f"{examples(unpacked)}"
            )
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
        data.present,
        run_until(data.run_json),
    )


# --------------------------------------------------------------------------- funnel.json

FUNNEL_STAGES: tuple[str, ...] = (
    "mine",
    "snapshot",
    "environment",
    "validate",
    "clean",
    "render",
    "pack",
)
"""funnel.json's stages: the pipeline's, in run order (``--until`` ends the list)."""


def funnel_document(out_dir: str | os.PathLike[str], until: str = "pack") -> dict[str, Any]:
    """funnel.json: PRs into and out of each stage with rejections by reason, record counts, per
    repository counts, and the ids of PRs that did not add up (``unaccounted``: no outcome, other
    than the ones ``--until`` stopped on purpose; ``duplicated``: more than one outcome).

    The same outcomes as the report's (``instance_outcomes``), read with only the columns they
    need, so the end of a large run does not pay for the report's statement similarities.
    """
    out = Path(out_dir)
    problems: list[str] = []  # unreadable lines: the report names them; the funnel skips them
    present = {name: (out / FILES[name]).is_file() for name in FILES}
    present["shards"] = bool(found := shard_paths(out))

    def records(name: str, model: type[M]) -> Iterator[M]:
        if present[name]:
            yield from iter_records(out / FILES[name], model, problems)

    ids = {"instance_id": pl.String, "repo": pl.String}
    prs = pull_request_frame(records("pull_requests", PullRequest))
    candidates = frame(
        [
            {
                "instance_id": c.instance_id,
                "repo": c.repo,
                "has_environment": c.environment is not None,
            }
            for c in records("candidates", Candidate)
        ],
        {**ids, "has_environment": pl.Boolean},
    )
    tasks = frame(
        [{"instance_id": t.instance_id, "repo": t.repo} for t in records("tasks", Task)], ids
    )
    rejects = reject_frame(records("rejects", Rejection))
    shards, _ = read_shards(found)
    outcomes = instance_outcomes(
        prs, candidates, tasks, rejects, shards, prs_known=present["pull_requests"]
    )
    stop = normalize_stage(until)
    check = funnel_check(outcomes, present, stop)

    counted = rejection_reasons(rejects)
    stages = []
    last = FUNNEL_STAGES.index(stop) if stop in FUNNEL_STAGES else len(FUNNEL_STAGES) - 1
    n_in = check.mined
    for stage in FUNNEL_STAGES[: last + 1]:
        here = counted.filter(pl.col("stage") == stage).sort("reason")
        rejected = dict(here.select("reason", "count").iter_rows())
        n_out = n_in - sum(rejected.values())
        stages.append({"stage": stage, "in": n_in, "out": n_out, "rejected": rejected})
        n_in = n_out

    per_repo: dict[str, dict[str, int]] = {}
    for repo, n in prs.group_by("repo").len().iter_rows():
        per_repo.setdefault(repo, {})["mined"] = n
    for repo, n in tasks.group_by("repo").len().iter_rows():
        per_repo.setdefault(repo or "?", {})["tasks"] = n
    for repo, stage, reason, n in rejection_reasons(rejects, by_repo=True).iter_rows():
        per_repo.setdefault(repo or "?", {})[f"{stage}:{reason}"] = n

    lost, _ = split_pending(outcomes, stop)
    multiple = outcomes.filter(pl.col("outcome") == "multiple")
    return {
        "stages": stages,
        "files": {
            "pull_requests": prs.height,
            "candidates": candidates.height,
            "tasks": tasks.height,
        },
        "repos": {repo: dict(sorted(c.items())) for repo, c in sorted(per_repo.items())},
        "unaccounted": sorted(lost.get_column("instance_id").to_list()),
        "duplicated": sorted(multiple.get_column("instance_id").to_list()),
    }
