"""The Beam graph: one labelled line per stage, each giving (ok, rejects); rejects flatten once.

Deliberate choices:
- ``Reshuffle`` after mining: one repository yields all its PRs in one bundle, and without a
  reshuffle the runner fuses every later stage onto that bundle, so nothing runs in parallel.
- Stages after ``plan.until`` are not added at all, so ``smelter mine`` never touches Docker.
- Outputs are plain JSONL of the record models (one file each), written through Beam's sinks so
  the same graph writes to GCS/S3 on a cluster.
- Every stage learns the run it serves (this process, ``lifeline.this_run``): workers tie
  themselves to it and die with it.
- The environment stage gets validation's cache probe: a candidate whose validation is cached
  needs no image, so a resumed run rebuilds nothing it validated.
- ``SetupCommits`` groups the tasks by (repository, env image) before they are written: a task
  alone cannot know the ``environment_setup_commit`` its group shares (``transforms.versions``).
- Environment and validation are one step (``ChainFn``): an image is built on a worker's own
  engine and must be validated there, and a runner that schedules steps separately (Dask)
  could send validation to another worker. Images never travel between workers.
- Every sink is a leaf, and only Beam constructs with per-output semantics are used; on Dask
  that holds through ``pipeline/dask_runner.py``, which fixes Beam's translation there.
- Workers of a cluster the run only connects to (``plan.tie_workers`` false) outlive it and
  are not tied to it: their cluster's own lifecycle applies.
"""

from __future__ import annotations

from typing import Any

import apache_beam as beam

from smelter.pipeline.plan import RunPlan
from smelter.transforms import lifeline
from smelter.transforms.stage import ChainFn, Stage, StageFn


class WriteJsonl(beam.PTransform):
    """Records -> one JSONL file at ``path`` (an empty file when there are none)."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self._path = path

    def expand(self, pcoll: Any) -> Any:
        return (
            pcoll
            | "ToJson" >> beam.Map(lambda r: r.to_json())
            | "Write" >> beam.io.WriteToText(self._path, shard_name_template="", num_shards=1)
        )


def _attach(plan: RunPlan, fn: StageFn) -> StageFn:
    run = lifeline.this_run() if plan.tie_workers else None
    return fn.attach(plan.cache_dir, plan.progress_dir, run=run)


def _stage(plan: RunPlan, fn: StageFn) -> Stage:
    return Stage(_attach(plan, fn))


def build(p: beam.Pipeline, plan: RunPlan) -> None:
    """Add the whole smelter graph to ``p``."""
    out = plan.out_dir.rstrip("/")
    cfg = plan.configs
    rejects = []

    # -- mine: from local/remote git history, and/or from GitHub
    mined = []
    if plan.repo_specs:
        from smelter.transforms.mine.git_source import MineGitFn

        prs, rej = (
            p
            | "ReadRepoSpecs" >> beam.Create(list(plan.repo_specs))
            | "MineGit" >> _stage(plan, MineGitFn(cfg["mine"]))
        )
        mined.append(prs)
        rejects.append(rej)
    if plan.github_repos or plan.github_query:
        from smelter.pipeline.github_cli import github_pull_requests

        prs, rej = github_pull_requests(p, plan, cfg["github"])
        mined.append(prs)
        rejects.append(rej)
    prs = (mined | "AllMined" >> beam.Flatten()) | "Spread" >> beam.Reshuffle()
    prs | "WritePRs" >> WriteJsonl(f"{out}/pull_requests.jsonl")

    # -- snapshot
    from smelter.transforms.snapshot.snapshot import SnapshotFn

    candidates, rej = prs | "snapshot" >> _stage(plan, SnapshotFn(cfg["snapshot"]))
    rejects.append(rej)
    candidates | "WriteCandidates" >> WriteJsonl(f"{out}/candidates.jsonl")

    tasks = None
    if plan.includes("environment"):
        from smelter.transforms.environment.builder import EnvironmentFn
        from smelter.transforms.validate.validate import ValidateFn

        validate = _attach(plan, ValidateFn(cfg["validate"])) if plan.includes("validate") else None
        probe = validate.has_cached if validate is not None else None
        environment = _attach(plan, EnvironmentFn(cfg["environment"], validated=probe))
        if validate is None:
            _built, rej = candidates | "environment" >> Stage(environment)
        else:  # one step: the image is validated on the worker (and engine) that built it
            tasks, rej = candidates | "environment+validate" >> Stage(
                ChainFn(environment, validate), label="environment+validate"
            )
        rejects.append(rej)
    if tasks is not None and plan.includes("clean"):
        from smelter.transforms.clean.clean import CleanFn

        tasks, rej = tasks | "clean" >> _stage(plan, CleanFn(cfg["clean"]))
        rejects.append(rej)
    if tasks is not None:
        from smelter.transforms.environment.versions import SetupCommits

        tasks = tasks | "SetupCommits" >> SetupCommits()
        tasks | "WriteTasks" >> WriteJsonl(f"{out}/tasks.jsonl")
    if tasks is not None and plan.includes("render"):
        from smelter.transforms.pack.render import RenderFn
        from smelter.transforms.pack.shards import PackShards

        samples, rej = tasks | "render" >> _stage(plan, RenderFn(cfg["pack"]))
        rejects.append(rej)
        if plan.includes("pack"):
            rej = samples | "pack" >> PackShards(cfg["pack"], f"{out}/shards")
            rejects.append(rej)

    (rejects | "AllRejects" >> beam.Flatten()) | "WriteRejects" >> WriteJsonl(
        f"{out}/rejects.jsonl"
    )
