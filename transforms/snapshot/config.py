"""The ``[snapshot]`` options, apart from the Beam stage so the CLI can list them without importing
Beam."""

from __future__ import annotations

import dataclasses
from dataclasses import field

from smelter.transforms.adapters.git import FROM_GIT_SECTION, GitConfig
from smelter.transforms.testpaths import FROM_PATHS_SECTION, PathRules, PathsConfig


@dataclasses.dataclass(frozen=True)
class SnapshotConfig:
    """How PRs are split and checked."""

    snapshot_check_apply: bool = field(
        default=True, metadata={"help": "verify both patches with git apply --check at base"}
    )
    git: GitConfig = field(default=GitConfig(), metadata=FROM_GIT_SECTION)
    test_paths: PathsConfig = field(default=PathsConfig(), metadata=FROM_PATHS_SECTION)

    @property
    def path_rules(self) -> PathRules:
        return self.test_paths.rules
