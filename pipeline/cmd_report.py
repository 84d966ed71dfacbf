"""``smelter report OUT_DIR``: the command line of ``smelter.pipeline.report``.

Deliberate choice: the report module imports polars and matplotlib (about a second); this module
imports neither, so ``smelter --help`` stays fast and the report library loads only when a report
is written.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from smelter.transforms.errors import Fatal


def cmd_report(args: argparse.Namespace) -> int:
    out = Path(args.out_dir)
    if not out.is_dir():
        raise Fatal(f"{out} is not a directory (expected a `smelter run --out` folder)")
    from rich.console import Console

    from smelter.pipeline.report import (
        check_of,
        load_output,
        outcomes_of,
        print_summary,
        write_report,
    )

    # A spinner on stderr (terminals only): a large run takes tens of seconds to read.
    with Console(stderr=True).status(f"reading {out}") as status:
        data = load_output(out)
        status.update("rendering plots and reports")
        report_dir = Path(args.report_dir) if args.report_dir else None
        files = write_report(
            data,
            report_dir=report_dir,
            md_path=Path(args.md) if args.md else None,
            html_path=Path(args.html) if args.html else None,
            examples=args.examples,
        )
    print_summary(data, files)
    if args.strict:
        check = check_of(data, outcomes_of(data))
        return 0 if check.balanced else 1
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "report",
        help="funnel, task quality, environments and packing of an output folder",
        description="Read a `smelter run --out` folder and write report.md and report.html with "
        "PNG plots; print the funnel. Partial folders (a run that stopped early) work.",
    )
    p.add_argument("out_dir", metavar="OUT_DIR", help="output folder of `smelter run --out`")
    p.add_argument(
        "--report-dir",
        default=None,
        help="folder for plots (and default report paths); default OUT_DIR/report",
    )
    p.add_argument("--md", default=None, help="Markdown report path; default REPORT_DIR/report.md")
    p.add_argument("--html", default=None, help="HTML report path; default REPORT_DIR/report.html")
    p.add_argument("--examples", type=int, default=3, help="example tasks to show (default 3)")
    p.add_argument(
        "--strict", action="store_true", help="exit 1 when the funnel does not add up (for CI)"
    )
    p.set_defaults(func=cmd_report)
