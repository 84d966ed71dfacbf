"""Task quality, environments, packing and run.json as small tables, one pure function each."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import polars as pl

from smelter.pipeline.report.frames import frame
from smelter.pipeline.report.funnel import POST_TASK_STAGES
from smelter.pipeline.run_folder import RUN, SHARD_STATS

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
    return frame(rows, schema)


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
        else frame([], {"kind": pl.String, "score": pl.Int64, "tasks": pl.Int64})
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
    return frame(
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
    for doc, where in ((shard_stats, SHARD_STATS), (run_json, RUN)):
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
        ("documents dropped (render/pack rejects)", float(dropped)),
        ("documents dropped (stats.json)", None if stats_dropped is None else float(stats_dropped)),
        ("documents split (stats.json)", None if stats_split is None else float(stats_split)),
    ]
    return frame(
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
    return frame(rows, {"key": pl.String, "value": pl.String})
