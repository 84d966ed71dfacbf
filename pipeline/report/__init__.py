"""`smelter report OUT_DIR`: the funnel, task quality, environments and packing of one run.

Every number comes from a small pure function that takes DataFrames and returns a DataFrame
(aggregation in polars). The notebook (``notebooks/task_quality.ipynb``) and the CLI
(``pipeline/cmd_report.py``) call exactly these functions, so what a notebook shows and what the
report prints cannot drift apart. This module re-exports only the names those two use; everything
else is imported from the module that defines it:

- ``frames``: output records as DataFrames with fixed schemas, and the measures behind columns
- ``load``: one output folder read into a ``RunData``; what is missing or unreadable
- ``funnel``: per-PR outcomes, the funnel steps and the check that they add up
- ``summaries``: task quality, environments, packing and run.json tables
- ``plots``: the figures
- ``document``: the report as blocks (heading, text, table, image, code)
- ``render``: PNGs, report.md, report.html and the terminal summary
"""

from __future__ import annotations

from smelter.pipeline.report.funnel import (
    check_of,
    funnel_by_repo,
    funnel_steps,
    outcomes_of,
    rejection_reasons,
    steps_with_evidence,
)
from smelter.pipeline.report.load import load_output, missing_parts
from smelter.pipeline.report.plots import (
    figure_png,
    plot_environments,
    plot_funnel,
    plot_packing,
    plot_quality,
    plot_task_sizes,
    plot_test_durations,
)
from smelter.pipeline.report.render import print_summary, write_report
from smelter.pipeline.report.summaries import (
    cleaning_summary,
    environment_summary,
    environments_by_recipe,
    example_tasks,
    filter_rejects,
    filter_tasks,
    flaky_tests,
    judge_scores,
    packing_summary,
    python_versions,
    sequence_length,
    shard_tokens,
    task_sizes,
    test_durations,
)

__all__ = [
    "check_of",
    "cleaning_summary",
    "environment_summary",
    "environments_by_recipe",
    "example_tasks",
    "figure_png",
    "filter_rejects",
    "filter_tasks",
    "flaky_tests",
    "funnel_by_repo",
    "funnel_steps",
    "judge_scores",
    "load_output",
    "missing_parts",
    "outcomes_of",
    "packing_summary",
    "plot_environments",
    "plot_funnel",
    "plot_packing",
    "plot_quality",
    "plot_task_sizes",
    "plot_test_durations",
    "print_summary",
    "python_versions",
    "rejection_reasons",
    "sequence_length",
    "shard_tokens",
    "steps_with_evidence",
    "task_sizes",
    "test_durations",
    "write_report",
]
