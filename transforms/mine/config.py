"""The ``[filters]`` options of both miners and the ``[mine]`` options of the git miner, apart from
the Beam stage so the CLI can list them without importing Beam.

``[filters]`` is one section because the git and the GitHub miner must reject a PR alike: defined
per miner (``mine_max_files`` vs ``github_max_changed_files``), the two could disagree.
"""

from __future__ import annotations

import dataclasses
from dataclasses import field

from smelter.transforms.adapters.git import FROM_GIT_SECTION, GitConfig
from smelter.transforms.testpaths import FROM_PATHS_SECTION, PathRules, PathsConfig


@dataclasses.dataclass(frozen=True)
class FiltersConfig:
    """Which mined PRs both miners keep, judged on the PR's local diff."""

    max_files: int = field(
        default=50,
        metadata={"min": 0, "help": "reject PRs changing more files than this (0 = no limit)"},
    )
    max_changed_lines: int = field(
        default=2000,
        metadata={
            "min": 0,
            "help": "reject PRs whose code+test diff adds+removes more lines (0 = no limit)",
        },
    )
    require_tests_and_code: bool = field(
        default=True, metadata={"help": "keep only PRs that change both test and non-test code"}
    )


# Metadata of a miner config's ``filters`` field: a copy of the ``[filters]`` section, set by
# the option loader; not a flag or key of that miner's own section.
FROM_FILTERS_SECTION = {"from_section": "filters", "help": "PR filters, from [filters]"}


@dataclasses.dataclass(frozen=True)
class MineConfig:
    """What the git miner keeps."""

    mine_since: str | None = field(
        default=None, metadata={"help": "keep PRs merged on/after this ISO date (UTC)"}
    )
    mine_until: str | None = field(
        default=None, metadata={"help": "keep PRs merged before this ISO date (UTC)"}
    )
    mine_branches: tuple[str, ...] = field(
        default=(), metadata={"help": "branches to walk (default: the repository's default)"}
    )
    mine_release_branches: bool = field(
        default=False,
        metadata={"help": "also walk release branches (PRs deduplicated by number)"},
    )
    mine_release_branch_globs: tuple[str, ...] = field(
        default=("release-*", "release/*", "releases/*", "maint-*", "maintenance/*", "*.x",
                 "[0-9]*.[0-9]*"),
        metadata={"help": "branch-name globs that count as release branches"},
    )  # fmt: skip
    mine_max_prs: int = field(
        default=0,
        metadata={
            "min": 0,
            "help": "stop after this many kept PRs per repository, walking history oldest "
            "first (0 = all); combine with --mine-since for recent ones",
        },
    )
    filters: FiltersConfig = field(default=FiltersConfig(), metadata=FROM_FILTERS_SECTION)
    git: GitConfig = field(default=GitConfig(), metadata=FROM_GIT_SECTION)
    test_paths: PathsConfig = field(default=PathsConfig(), metadata=FROM_PATHS_SECTION)

    @property
    def path_rules(self) -> PathRules:
        return self.test_paths.rules
