"""What one run does (``RunPlan``) and the stage order, apart from the Beam graph.

Deliberate choice: this module imports no Beam, so ``smelter run --help`` (which needs the stage
names for ``--until``) and ``--dry-run`` start without Beam's import time. The stage names are
``schemas.Stage``, the same strings ``Rejection.stage`` holds.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from smelter.schemas import Stage

STAGES: tuple[Stage, ...] = tuple(Stage)


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """Everything one run needs, resolved from flags and config file; printed by --dry-run."""

    out_dir: str
    until: str
    repo_specs: tuple[Any, ...]
    github_repos: tuple[str, ...] = ()
    github_query: str | None = None
    cache: bool = True
    progress: bool = True
    configs: dict[str, Any] = dataclasses.field(default_factory=dict)
    # False where the workers belong to a cluster that outlives the run (Dask at an address):
    # tying them to this run would make every worker kill itself when the run ends.
    tie_workers: bool = True

    def includes(self, stage: str) -> bool:
        return STAGES.index(stage) <= STAGES.index(self.until)

    @property
    def cache_dir(self) -> str | None:
        return f"{self.out_dir.rstrip('/')}/.cache" if self.cache else None

    @property
    def progress_dir(self) -> str | None:
        """Tick files for the progress display; local output folders only."""
        return None if "://" in self.out_dir else f"{self.out_dir.rstrip('/')}/.progress"
