"""The report's figures, one function per figure, each taking the frames it draws.

Deliberate choice: figures use matplotlib's object API on an Agg canvas (no pyplot global state),
so reports render headless, in worker processes and in notebooks alike.
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Sequence
from typing import Any

import polars as pl
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from smelter.pipeline.report.summaries import shard_tokens, with_fill

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
