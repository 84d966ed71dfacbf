"""``--github`` source flags for ``smelter run`` / ``smelter mine`` and the graph entry for them.

Deliberate choices:
- Only the source selection lives here (``--github``, ``--github-repos-file``, ``--github-query``,
  ``--since-last-run``); every other GitHub knob is a ``GitHubConfig`` field and so already a
  ``--github-…`` flag and a ``[github]`` TOML key through ``pipeline/options.py``.
- ``--since-last-run`` is a short alias of ``--github-since-last-run`` (same destination).
- No token flag on purpose: tokens come from the environment (``GITHUB_TOKEN``) so they never
  reach shell history, ``run.json`` or ``--dry-run`` output.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path
from typing import Any

from smelter.transforms.errors import Fatal
from smelter.transforms.mine.github_config import GitHubConfig

_REPO_NAME = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")


def add_github_arguments(parser: argparse.ArgumentParser | Any) -> None:
    """Add the GitHub source flags to ``parser`` (a parser or an argument group)."""
    parser.add_argument(
        "--github",
        action="append",
        default=[],
        metavar="OWNER/REPO",
        help="mine this GitHub repository through the API (repeatable); token from GITHUB_TOKEN",
    )
    parser.add_argument(
        "--github-repos-file",
        action=_ReposFileAction,
        dest="github",
        metavar="FILE",
        help="a file with one OWNER/REPO per line ('#' comments allowed); adds to --github",
    )
    parser.add_argument(
        "--github-query",
        metavar="QUERY",
        help="mine the top repositories of a GitHub search, e.g. 'language:python stars:>1000' "
        "(count: --github-search-max-repos)",
    )
    parser.add_argument(
        "--since-last-run",
        dest="github.github_since_last_run",
        action="store_const",
        const=True,
        default=None,
        help="GitHub: only PRs updated since the last completed run of each repository",
    )


class _ReposFileAction(argparse.Action):
    """Reads the file at parse time and appends its names to ``--github``'s list."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:  # fmt: skip
        try:
            lines = Path(values).read_text().splitlines()
        except OSError as e:
            parser.error(f"cannot read --github-repos-file {values}: {e.strerror}")
        names = [ln.split("#", 1)[0].strip() for ln in lines]
        current = list(getattr(namespace, self.dest, None) or [])
        setattr(namespace, self.dest, current + [n for n in names if n])


def normalize_repo_name(name: str) -> str:
    """``owner/name`` from ``owner/name``, ``owner/name.git`` or a github.com URL; Fatal else."""
    name = name.strip().removesuffix("/").removesuffix(".git")
    name = re.sub(r"^(https?://)?(www\.)?github\.com/", "", name)
    if not _REPO_NAME.match(name):
        raise Fatal(f"not a GitHub repository name (OWNER/REPO): {name!r}")
    return name


def github_pull_requests(p: Any, plan: Any, config: GitHubConfig) -> tuple[Any, Any]:
    """Graph entry: (PCollection[PullRequest], PCollection[Rejection]) for the plan's GitHub
    repositories and search query, merged with those of ``config``."""
    names = (*config.github_repos, *plan.github_repos)
    repos = tuple(dict.fromkeys(normalize_repo_name(n) for n in names))
    query = plan.github_query or config.github_search_query
    config = dataclasses.replace(config, github_repos=repos, github_search_query=query)
    from smelter.transforms.mine.github_source import (
        MineGitHub,  # Beam + PyGithub: only when running
    )

    return p | "MineGitHub" >> MineGitHub(config, plan.cache_dir, plan.progress_dir)
