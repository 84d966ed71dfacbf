"""The ``smelter`` command line: one sub-command per job, errors as one line, not a traceback.

Sub-commands live in their own modules (``COMMAND_MODULES``); each exposes
``register(subparsers) -> None`` and sets ``func=handler`` on its parser with
``parser.set_defaults(func=...)``. Handlers take the parsed ``argparse.Namespace`` and return an
exit code. A command that runs a Beam pipeline sets ``accepts_beam_flags=True``: the arguments
argparse does not know are then handed over as ``args.beam_flags`` (and checked against Beam's
own options) instead of being refused. Modules are imported lazily so one broken optional
component does not take the whole CLI down.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from smelter.transforms.errors import Fatal

# Order = order in --help.
COMMAND_MODULES = [
    "smelter.pipeline.cmd_run",  # run, mine, demo
    "smelter.pipeline.cmd_images",  # images bootstrap|build|prune|ls, engine ensure
    "smelter.pipeline.cmd_publish",  # export, publish
    "smelter.pipeline.cmd_report",  # report
]

EPILOG = """\
Examples:
  smelter demo                         build the demo repository and run the whole pipeline on it
  smelter run --repo ./myproject --out out/
  smelter mine --github psf/requests --since 2024-01-01 --out out/
  smelter report out/
Secrets (GITHUB_TOKEN, SMELTER_LLM_API_KEY) are read from the environment only.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smelter",
        description="Turn merged pull requests into verifiable coding tasks and training shards.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:  # a real import error inside an existing module
                raise
            continue
        module.register(sub)
    return parser


class _DropBeamImportNoise(logging.Filter):
    """Beam warns about optional GCP client libraries on import; users cannot act on it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "apitools not found" not in record.getMessage()


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(_DropBeamImportNoise())
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "accepts_beam_flags", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.beam_flags = extra
    logging.getLogger().setLevel(
        [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except Fatal as e:
        print(f"smelter: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            "smelter: interrupted; finished records are cached, re-run to resume", file=sys.stderr
        )
        return 130
    except BrokenPipeError:
        # Output piped into `head`: stop quietly, as other command-line tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
