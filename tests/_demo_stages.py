"""The stages before validation, run directly (no Beam) on the demo repository: mine, snapshot,
environment. Shared by the demo validation test and the validation benchmark."""

from __future__ import annotations

from pathlib import Path

from smelter.pipeline.demo.build import DemoRepo
from smelter.schemas import Candidate, PullRequest
from smelter.transforms.adapters.git import GitConfig, GitRepo
from smelter.transforms.environment.builder import EnvironmentFn
from smelter.transforms.environment.config import EnvConfig
from smelter.transforms.errors import Rejected
from smelter.transforms.mine.config import MineConfig
from smelter.transforms.mine.git_source import GitSource, RepoSpec
from smelter.transforms.snapshot.config import SnapshotConfig
from smelter.transforms.snapshot.snapshot import SnapshotFn

HOST_CA = "/etc/ssl/certs/ca-certificates.crt"


def demo_candidates(demo: DemoRepo, work: Path) -> dict[int, Candidate]:
    """PR number -> Candidate for every demo PR that survives mine and snapshot."""
    source = GitSource(GitRepo(demo.path), RepoSpec(str(demo.path), demo.name), MineConfig())
    snap = SnapshotFn(SnapshotConfig(git=GitConfig(mirror_dir=str(work / "mirrors"))))
    snap.setup()
    out: dict[int, Candidate] = {}
    for pr in source:
        if not isinstance(pr, PullRequest):
            continue
        try:
            (cand,) = snap.run(pr)
        except Rejected:
            continue
        out[pr.number] = cand
    return out


def with_environments(
    candidates: dict[int, Candidate], config: EnvConfig | None = None
) -> dict[int, Candidate]:
    """Builds each candidate's images with the environment stage; raises on a rejection."""
    fn = EnvironmentFn(config or EnvConfig(env_base_source="local", env_extra_ca_bundle=HOST_CA))
    fn.setup()
    try:
        out = {}
        for number, cand in sorted(candidates.items()):
            (built,) = list(fn.run(cand))
            out[number] = built
        return out
    finally:
        fn.teardown()
