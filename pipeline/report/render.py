"""Writing the report: PNG figures, report.md and report.html, and the terminal summary."""

from __future__ import annotations

import dataclasses
import html
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from smelter.pipeline.report.document import (
    Block,
    Code,
    Heading,
    Image,
    Table,
    Text,
    build_document,
    cell,
)
from smelter.pipeline.report.funnel import (
    check_of,
    funnel_steps,
    outcomes_of,
    rejection_reasons,
    steps_with_evidence,
)
from smelter.pipeline.report.load import RunData, missing_parts
from smelter.pipeline.report.plots import (
    plot_environments,
    plot_funnel,
    plot_packing,
    plot_quality,
    plot_task_sizes,
    plot_test_durations,
)
from smelter.pipeline.report.summaries import describe, sequence_length
from smelter.pipeline.run_folder import REPORT


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
            esc = lambda s: cell(s).replace("|", "\\|").replace("\n", " ")  # noqa: E731
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
                    f"<td{' class=n' if num else ''}>{html.escape(cell(v))}</td>"
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
    report_dir = report_dir or data.out_dir / REPORT
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
        t.add_row(*(cell(v) if v is not None else "—" for v in row))
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
            q.add_row(*(cell(v) for v in row))
        console.print(q)
    for m in missing_parts(data.present, data.shard_stats):
        console.print(f"[yellow]missing:[/yellow] {m}")
    for p in data.problems[:10]:
        console.print(f"[red]unreadable:[/red] {p}")
    if files:
        console.print(f"wrote {files.html} and {files.markdown} ({len(files.images)} plots)")
