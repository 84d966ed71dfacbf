"""The ``[snapshot]`` options, apart from the Beam stage so the CLI can list them without importing
Beam. ``smelter.transforms.snapshot`` re-exports ``SnapshotConfig``."""

from __future__ import annotations

import dataclasses
from dataclasses import field

from smelter.transforms.testpaths import PathRules


@dataclasses.dataclass(frozen=True)
class SnapshotConfig:
    """How PRs are split and checked."""

    snapshot_mirror_dir: str | None = field(
        default=None,
        metadata={"help": "folder of bare git mirrors (default ~/.cache/smelter/mirrors)"},
    )
    snapshot_test_dir_names: tuple[str, ...] = field(
        default=PathRules().test_dir_names,
        metadata={"help": "directory names holding tests (keep equal to the miner's)"},
    )
    snapshot_test_file_globs: tuple[str, ...] = field(
        default=PathRules().test_file_globs,
        metadata={"help": "test file-name globs (keep equal to the miner's)"},
    )
    snapshot_check_apply: bool = field(
        default=True, metadata={"help": "verify both patches with git apply --check at base"}
    )

    @property
    def path_rules(self) -> PathRules:
        return PathRules(
            test_dir_names=self.snapshot_test_dir_names,
            test_file_globs=self.snapshot_test_file_globs,
        )
