"""The report as a list of blocks (heading, text, table, image, code), built from a loaded folder.

Deliberate choice: one small document model renders to both Markdown and HTML (``render``), so
the two reports always say the same thing.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import polars as pl

from smelter.pipeline.report.funnel import (
    check_of,
    funnel_by_repo,
    funnel_steps,
    outcomes_of,
    rejection_reasons,
    steps_with_evidence,
)
from smelter.pipeline.report.load import RunData, missing_parts
from smelter.pipeline.report.summaries import (
    CLEANING_COLUMNS,
    cleaning_summary,
    describe,
    environment_summary,
    environments_by_recipe,
    example_tasks,
    flaky_tests,
    judge_scores,
    key_values,
    packing_summary,
    python_versions,
    sequence_length,
    shard_tokens,
    task_sizes,
    test_durations,
)
from smelter.pipeline.run_folder import FILES, RUN, SHARD_STATS


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


def cell(v: Any) -> str:
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
        b.append(Text(f"No tasks ({FILES['tasks']} missing or empty).", "missing"))
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
        b.append(Text(f"No shards ({FILES['shards']} missing or empty).", "missing"))
    else:
        max_len, where = sequence_length(data.shards, data.shard_stats, data.run_json)
        b.append(Text(f"Sequence length {max_len} (from {where})."))
        b.append(Table(packing_summary(data.shards, max_len, data.rejects, data.shard_stats)))
        b.append(Table(shard_tokens(data.shards, max_len), "per shard"))
        if "packing" in images:
            b.append(Image(images["packing"], "fill distribution and tokens per shard"))
    if data.shard_stats:
        b.append(Table(key_values(data.shard_stats), SHARD_STATS))

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
                    f"spec={cell(row['specification_score'])} "
                    f"align={cell(row['test_alignment_score'])}"
                )
            )
            b.append(Code(_clip(row["raw_statement"], 40), "statement before cleaning"))
            b.append(Code(_clip(row["problem_statement"], 40), "statement after cleaning"))
            b.append(Code(_clip(row["patch"]), "patch", "diff"))
            b.append(Code("\n".join(row["fail_to_pass"][:20]), "FAIL_TO_PASS tests"))

    # run
    if data.run_json:
        b.append(Heading("Run"))
        b.append(Table(key_values(data.run_json), f"{RUN} (config, versions, stage seconds)"))
    return b
