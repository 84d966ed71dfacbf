"""``smelter run``, ``mine`` and ``demo``: resolve options, run the graph, summarise.

Deliberate choices:
- The default runner is Beam's DirectRunner in multi-process mode; any standard Beam option
  (``--runner``, ``--direct_num_workers``, ``--project``…) passes through unchanged.
  ``--runner DaskRunner`` is smelter's fixed Dask runner; a runner that cannot start here is
  one line before anything runs (``options.check_runner``). Against a Dask cluster at an
  address the workers are not tied to the run: the cluster outlives it.
- Input validation happens before Beam starts, so a path that is not a repository is one line
  on stderr, not a worker traceback.
- ``run.json`` records the resolved configuration (never a secret: configs hold the *names* of
  environment variables, not their values), versions and per-stage time.
- A run holds its output folder for its whole length and first collects what a killed run left
  (``beam-temp-*`` folders there; its containers and image aliases on the engine).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from rich.console import Console

from smelter.pipeline import options as opts
from smelter.pipeline.outputs import ProgressWatcher, compute_funnel, funnel_table, write_json
from smelter.pipeline.plan import STAGES, RunPlan
from smelter.transforms import lifeline
from smelter.transforms.errors import Fatal

DEFAULT_OUT = "out"


def _add_common(parser: argparse.ArgumentParser, *, with_sources: bool = True) -> None:
    if with_sources:
        src = parser.add_argument_group("sources")
        src.add_argument(
            "--repo",
            action="append",
            default=[],
            metavar="PATH_OR_URL",
            help="a git repository (local path or clone URL) to mine; repeatable",
        )
        src.add_argument(
            "--repos-file", metavar="FILE", help="a file with one repository path/URL per line"
        )
        src.add_argument(
            "--repo-name",
            metavar="OWNER/NAME",
            help="name to use for a single --repo (default: from its remote URL or folder)",
        )
        try:
            from smelter.pipeline.github_cli import add_github_arguments
        except ModuleNotFoundError:
            pass
        else:
            add_github_arguments(src)
    run = parser.add_argument_group("run")
    run.add_argument(
        "--out", default=DEFAULT_OUT, metavar="DIR", help=f"output folder (default: {DEFAULT_OUT}/)"
    )
    run.add_argument(
        "--config",
        metavar="FILE.toml",
        help="TOML config file with [mine], [validate]… sections; flags override it",
    )
    run.add_argument(
        "--no-cache",
        action="store_true",
        help="recompute every stage instead of reusing OUT/.cache",
    )
    run.add_argument("--no-progress", action="store_true", help="no live progress display")
    run.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="DirectRunner worker processes (default: number of cores)",
    )
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="print the resolved configuration and exit without running",
    )
    opts.add_stage_arguments(parser, opts.load_config_classes())


def register(sub: Any) -> None:
    epilog = (
        "Any standard Apache Beam pipeline option (e.g. --runner=FlinkRunner, "
        "--direct_running_mode=in_memory) is passed through to Beam."
    )
    run = sub.add_parser(
        "run",
        help="mine, snapshot, build, validate, clean and pack",
        description="Run the whole pipeline (or up to --until) on repositories.",
        epilog=epilog,
    )
    _add_common(run)
    run.add_argument(
        "--until", choices=STAGES, default="pack", help="last stage to run (default: pack)"
    )
    run.set_defaults(func=cmd_run, accepts_beam_flags=True)

    mine = sub.add_parser(
        "mine",
        help="mine merged PRs and split them into candidates",
        description="Mine merged pull requests and snapshot them into "
        "candidates (patch + test_patch); no Docker needed.",
        epilog=epilog,
    )
    _add_common(mine)
    mine.set_defaults(func=cmd_run, until="snapshot", accepts_beam_flags=True)

    demo = sub.add_parser(
        "demo",
        help="create the demo repository and run everything on it",
        description="Create the bundled demo repository (deterministic, at "
        "run time) and run the whole pipeline on it.",
        epilog=epilog,
    )
    _add_common(demo, with_sources=False)
    demo.add_argument(
        "--until", choices=STAGES, default="pack", help="last stage to run (default: pack)"
    )
    demo.set_defaults(func=cmd_demo, accepts_beam_flags=True)


# --------------------------------------------------------------------------- resolution


def _is_remote(url: str) -> bool:
    return "://" in url or url.startswith("git@")


def check_repository(url: str) -> None:
    """Refuse a local path that is not a git repository before Beam starts."""
    if _is_remote(url):
        return
    path = Path(url)
    if not path.exists():
        raise Fatal(f"repository not found: {url}")
    proc = subprocess.run(
        ["git", "-C", str(path), "rev-parse", "--git-dir"], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise Fatal(f"not a git repository: {url}")


def repo_urls(args: argparse.Namespace) -> list[str]:
    urls = list(getattr(args, "repo", []) or [])
    if getattr(args, "repos_file", None):
        try:
            lines = Path(args.repos_file).read_text().splitlines()
        except OSError as e:
            raise Fatal(f"cannot read --repos-file {args.repos_file}: {e.strerror}") from None
        urls += [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    for url in urls:
        check_repository(url)
    return [u if _is_remote(u) else str(Path(u).resolve()) for u in urls]


def check_out_dir(out: str) -> None:
    """Create ``--out`` and prove it writable before Beam starts.

    A folder below a file, under /proc, on a read-only mount or without permission would
    otherwise fail inside ``execute`` or a Beam worker as a traceback, after minutes of work.
    Remote folders (``gs://``, ``s3://``) are left to Beam's file systems.
    """
    if "://" in out:
        return
    path = Path(out)
    try:
        if path.exists() and not path.is_dir():
            raise Fatal(f"--out {out}: is a file, not a folder")
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".smelter-write-check-"):
            pass
    except NotADirectoryError:
        raise Fatal(f"--out {out}: a part of the path is a file, not a folder") from None
    except OSError as e:
        raise Fatal(f"--out {out}: not a usable output folder ({e.strerror or e})") from None


def make_plan(args: argparse.Namespace, until: str, urls: list[str]) -> RunPlan:
    opts.refuse_renamed_flags(getattr(args, "beam_flags", None) or ())
    classes = opts.load_config_classes()
    configs = opts.build_stage_configs(args, classes, opts.read_config_file(args.config))
    workers = getattr(args, "workers", None)
    if workers is not None and workers < 1:
        raise Fatal(f"--workers {workers}: out of range, accepted: >= 1")
    check_out_dir(args.out)
    name = getattr(args, "repo_name", None)
    if name and len(urls) != 1:
        raise Fatal("--repo-name needs exactly one --repo")
    specs: tuple[Any, ...] = ()
    if urls:
        from smelter.transforms.mine.git_source import RepoSpec

        specs = tuple(RepoSpec.from_url(u, name=name) for u in urls)
    github_repos = tuple(getattr(args, "github", None) or ())
    github_query = getattr(args, "github_query", None)
    if not specs and not github_repos and not github_query:
        raise Fatal("nothing to mine: give --repo PATH_OR_URL, --repos-file or --github OWNER/REPO")
    return RunPlan(
        out_dir=str(Path(args.out).resolve()) if "://" not in args.out else args.out,
        until=until,
        repo_specs=specs,
        github_repos=github_repos,
        github_query=github_query,
        cache=not args.no_cache,
        progress=not args.no_progress,
        configs=configs,
    )


def describe(plan: RunPlan) -> dict[str, Any]:
    """The resolved plan as JSON-able data (for --dry-run and run.json)."""
    return {
        "out_dir": plan.out_dir,
        "until": plan.until,
        "repos": [dataclasses.asdict(s) for s in plan.repo_specs],
        "github_repos": list(plan.github_repos),
        "github_query": plan.github_query,
        "cache": plan.cache,
        "config": {k: dataclasses.asdict(v) for k, v in plan.configs.items()},
    }


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("swe-smelter", "apache-beam", "docker", "pygithub", "datasets", "polars"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[dist] = metadata.version(dist)
    return out


def _stage_seconds(result: Any) -> dict[str, float]:
    from apache_beam.metrics.metric import MetricsFilter

    seconds: dict[str, float] = {}
    try:
        query = result.metrics().query(MetricsFilter().with_name("record_ms"))
    except Exception:  # some runners do not support metric queries
        return seconds
    for d in query["distributions"]:
        ns = d.key.metric.namespace
        seconds[ns] = seconds.get(ns, 0.0) + d.committed.sum / 1000.0
    return seconds


# --------------------------------------------------------------------------- commands


def execute(plan: RunPlan, beam_flags: list[str], workers: int | None) -> dict[str, Any]:
    """Run the graph for ``plan``; returns the funnel. Also used by tests and benchmarks."""
    import apache_beam as beam

    from smelter.pipeline import graph

    out = Path(plan.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    verbose = logging.getLogger().level <= logging.INFO and logging.getLogger().level != 0
    default_flags = [
        "--runner=DirectRunner",
        "--direct_running_mode=multi_processing",
        f"--direct_num_workers={workers or os.cpu_count() or 1}",
        # Worker processes log every gRPC channel at INFO and harmless setup notes at WARNING;
        # -v brings them back.
        "--default_sdk_harness_log_level=" + ("INFO" if verbose else "ERROR"),
    ]
    if not verbose:
        logging.getLogger("apache_beam.runners.portability.local_job_service").setLevel(
            logging.ERROR
        )
        # Dask's client and local cluster log every connection and worker at INFO, and Beam's
        # Dask runner warns at each Create that its default partition size changed.
        logging.getLogger("distributed").setLevel(logging.WARNING)
        logging.getLogger("apache_beam.runners.dask.transform_evaluator").setLevel(logging.ERROR)
    options = opts.beam_options(beam_flags, default_flags)
    runner = opts.runner_name(options)
    values = options.get_all_options()
    if runner == "DaskRunner" and (values.get("address") or values.get("scheduler_file")):
        plan = dataclasses.replace(plan, tie_workers=False)  # the cluster outlives this run
    console = Console(stderr=True)
    stages = [s for s in STAGES if plan.includes(s)]
    clean_cfg = plan.configs.get("clean") if plan.includes("clean") else None
    if clean_cfg is not None:
        from smelter.transforms.clean.clean import check_endpoint

        # One GET /models before Beam starts: a wrong URL or key is one line here, not a
        # traceback from a worker process later.
        console.print(f"clean: {check_endpoint(clean_cfg)}")
    registry = plan.configs.get("registry")
    if registry is not None and registry.image_registry and plan.includes("environment"):
        from smelter.transforms.adapters.registry import Registry

        # One GET /v2/ before Beam starts, like the LLM endpoint's check above.
        console.print(Registry.parse(registry.image_registry).check())
    start = time.time()
    with (
        lifeline.claim_out_dir(out) as stale,
        ProgressWatcher(plan.progress_dir, stages, console, show=plan.progress),
    ):
        _collect_leftovers(plan, stale, console)
        p = beam.Pipeline(options=options)
        graph.build(p, plan)
        result = p.run()
        try:
            result.wait_until_finish()
        finally:
            client = getattr(result, "client", None)  # Dask: drop our connection, not the cluster
            if client is not None:
                client.close()
    wall = time.time() - start
    funnel = compute_funnel(out, plan.until)
    write_json(out / "funnel.json", funnel)
    extra: dict[str, Any] = {}
    if clean_cfg is not None:
        from smelter.transforms.clean.report import clean_report, counters_of

        try:
            counters = counters_of(result, "clean")
        except NotImplementedError:  # Beam's DaskRunner collects no metrics
            console.print(f"clean: no report, {runner} collects no metrics")
        else:
            report = clean_report(counters, clean_cfg)
            console.print(report.summary())
            extra["clean"] = report.to_dict()
    write_json(
        out / "run.json",
        {
            "plan": describe(plan),
            "versions": _versions(),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start)),
            "wall_seconds": round(wall, 2),
            "stage_seconds": _stage_seconds(result),
            "argv": [a for a in sys.argv[1:] if not _secret_like(a)],
            **extra,
        },
    )
    return funnel


def _collect_leftovers(plan: RunPlan, stale: list[Path], console: Console) -> None:
    """What killed runs left: their temp folders here (already removed), and on the engine."""
    import docker.errors  # only runs that reach the engine import docker

    found = [f"{len(stale)} beam-temp folder(s)"] if stale else []
    if plan.includes("environment"):
        from smelter.transforms.adapters.sandbox import collect_dead_runs

        try:
            gone = collect_dead_runs()
        except docker.errors.APIError as e:  # housekeeping: a failure must not stop the run
            console.print(f"could not collect a killed run's leftovers: {e.explanation or e}")
            gone = {}
        found += [f"{n} {what}" for what, n in gone.items() if n]
    if found:
        console.print(f"collected a killed run's leftovers: {', '.join(found)}")


def _secret_like(arg: str) -> bool:
    return any(word in arg.lower() for word in ("token", "key", "secret", "password"))


def _report(funnel: dict[str, Any], plan: RunPlan) -> int:
    console = Console()
    console.print(funnel_table(funnel))
    files = funnel["files"]
    console.print(
        f"{files['pull_requests']} PRs mined, {files['candidates']} candidates, "
        f"{files['tasks']} tasks -> {plan.out_dir}"
    )
    problems = 0
    if funnel["unaccounted"]:
        console.print(f"[red]unaccounted records:[/red] {', '.join(funnel['unaccounted'])}")
        problems += 1
    if funnel["duplicated"]:
        console.print(f"[red]records ended twice:[/red] {', '.join(funnel['duplicated'])}")
        problems += 1
    from smelter.transforms.outage import outage_line

    clean_cfg = plan.configs.get("clean")
    share = getattr(clean_cfg, "outage_share", 0.5)
    line = outage_line(funnel, plan.out_dir, share) if "://" not in plan.out_dir else None
    if line:
        console.print(f"[red]run failed:[/red] {line}", soft_wrap=True)
        problems += 1
    return 1 if problems else 0


def _run_plan(args: argparse.Namespace, plan: RunPlan) -> int:
    options = opts.beam_options(args.beam_flags)  # unknown flags fail here, --dry-run included
    runner = opts.runner_name(options)
    if runner == "DataflowRunner" and "://" not in plan.out_dir:
        raise Fatal(f"--runner {runner} writes from Google's workers: --out must be a gs:// folder")
    if args.dry_run:
        import json

        print(json.dumps(describe(plan), indent=2, sort_keys=True, default=str))
        return 0
    funnel = execute(plan, args.beam_flags, args.workers)
    return _report(funnel, plan)


def cmd_run(args: argparse.Namespace) -> int:
    plan = make_plan(args, args.until, repo_urls(args))
    return _run_plan(args, plan)


def cmd_demo(args: argparse.Namespace) -> int:
    from smelter.pipeline.demo.build import create_demo_repo

    check_out_dir(args.out)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    repo_dir = out / "demo-repo"
    if repo_dir.exists() and any(repo_dir.iterdir()):
        # The demo is deterministic: a folder from an earlier run holds the same repository,
        # and recreating it lets the stage caches make this re-run free.
        shutil.rmtree(repo_dir)
    demo = create_demo_repo(repo_dir)
    Console(stderr=True).print(f"demo repository: {demo.path} ({demo.name})")
    args.repo_name = demo.name
    plan = make_plan(args, args.until, [str(demo.path)])
    return _run_plan(args, plan)
