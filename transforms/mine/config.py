"""The ``[mine]`` options of the git miner, apart from the Beam stage so the CLI can list them
without importing Beam."""

from __future__ import annotations

import dataclasses
from dataclasses import field

from smelter.transforms.adapters.git import FROM_GIT_SECTION, GitConfig
from smelter.transforms.testpaths import FROM_PATHS_SECTION, PathRules, PathsConfig


@dataclasses.dataclass(frozen=True)
class MineConfig:
    """What the git miner keeps."""

    mine_since: str | None = field(
        default=None, metadata={"help": "keep PRs merged on/after this ISO date (UTC)"}
    )
    mine_until: str | None = field(
        default=None, metadata={"help": "keep PRs merged before this ISO date (UTC)"}
    )
    mine_max_files: int = field(
        default=50,
        metadata={"min": 0, "help": "reject PRs changing more files than this (0 = no limit)"},
    )
    mine_max_changed_lines: int = field(
        default=2000,
        metadata={
            "min": 0,
            "help": "reject PRs whose code+test diff adds+removes more lines (0 = no limit)",
        },
    )
    mine_require_tests_and_code: bool = field(
        default=True, metadata={"help": "keep only PRs that change both test and non-test code"}
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
    git: GitConfig = field(default=GitConfig(), metadata=FROM_GIT_SECTION)
    test_paths: PathsConfig = field(default=PathsConfig(), metadata=FROM_PATHS_SECTION)

    @property
    def path_rules(self) -> PathRules:
        return self.test_paths.rules
