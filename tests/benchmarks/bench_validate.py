"""Benchmark: validation overhead on the demo repository.

For every demo PR that reaches validation: the container validation (fresh container per run,
``git apply`` inside, JUnit copied out, container removed) against bare pytest of the same test
files on the host (same Python minor, same pytest flags, trees prepared once, only pytest
timed). Prints per PR and overall:

    overhead = (container validation time - bare pytest time) / bare pytest time

both per run (sum of container run seconds vs sum of bare run seconds, same number of runs) and
as wall time of the whole validation (runs in parallel, ``--parallel``) vs the bare runs in a
row. Images are built first by the environment stage (cached by content hash; not timed here).

Run: ``.venv/bin/python tests/benchmarks/bench_validate.py [--parallel 2]``
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from smelter.pipeline.demo.build import create_demo_repo
from smelter.schemas import Candidate
from smelter.transforms.adapters.docker_engine import connect, remove_image
from smelter.transforms.validate.config import ValidateConfig
from smelter.transforms.validate.grading import grade
from smelter.transforms.validate.script import REPORT_PATH, pytest_argv, touched_test_modules
from smelter.transforms.validate.validate import Validator

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests._demo_stages import demo_candidates, with_environments


def prepare_tree(repo: Path, cand: Candidate, dest: Path, after: bool) -> None:
    subprocess.run(["git", "clone", "-q", str(repo), str(dest)], check=True)
    subprocess.run(["git", "-C", str(dest), "checkout", "-q", cand.base_commit], check=True)
    patches = [cand.test_patch] + ([cand.patch] if after else [])
    for patch in patches:
        subprocess.run(["git", "-C", str(dest), "apply", "-"], input=patch.encode(), check=True)


def bare_python(work: Path, cand: Candidate) -> str:
    """A host venv holding only what the container's venv holds (same pytest version), so
    "bare" measures pytest, not the plugins of whatever venv runs this script."""
    assert cand.environment is not None
    wanted = ("pytest", "pluggy", "iniconfig", "packaging")
    pins = [r for r in cand.environment.frozen_requirements if r.lower().startswith(wanted)]
    venv = work / "bare-venv"
    if not venv.exists():
        uv = str(Path(sys.executable).with_name("uv"))
        subprocess.run([uv, "venv", "-q", "--python", sys.executable, str(venv)], check=True)
        subprocess.run(
            [uv, "pip", "install", "-q", "--python", str(venv / "bin" / "python"),
             *(pins or ["pytest"])],
            check=True,
        )  # fmt: skip
    return str(venv / "bin" / "python")


def bare_runs(repo: Path, cand: Candidate, work: Path, before: int, after: int) -> list[float]:
    """Seconds of each bare host pytest run, same files and flags as in the container."""
    assert cand.environment is not None
    files = touched_test_modules(cand.test_patch)
    seconds = []
    for side, count in (("before", before), ("after", after)):
        tree = work / f"{cand.pull_number}-{side}"
        prepare_tree(repo, cand, tree, after=side == "after")
        report = tree.parent / f"{tree.name}.xml"
        argv = pytest_argv(cand.environment.test_command, files, str(tree))
        argv = [a if a != f"--junit-xml={REPORT_PATH}" else f"--junit-xml={report}" for a in argv]
        argv = [bare_python(work, cand), *argv[1:]] if argv[0] == "python" else argv
        for attempt in range(count):
            env = {
                **os.environ,
                "SMELTER_ATTEMPT": str(attempt),
                "PYTHONPATH": str(tree / "src"),
                "PYTHONDONTWRITEBYTECODE": "1",
            }
            t = time.perf_counter()
            subprocess.run(argv, cwd=tree, env=env, capture_output=True, check=False)
            seconds.append(time.perf_counter() - t)
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parallel", type=int, default=2, help="test containers at once per task")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-validate-"))
    try:
        demo = create_demo_repo(work / "calc")
        t = time.perf_counter()
        built = with_environments(demo_candidates(demo, work))
        print(
            f"images for {len(built)} PRs ready in {time.perf_counter() - t:.1f}s (not timed below)"
        )
        client = connect()
        config = ValidateConfig(
            validate_parallel_runs=args.parallel, validate_keep_instance_images=True
        )
        validator = Validator(client, config)
        header = (
            f"{'PR':>4} {'outcome':<16} {'runs':>4} {'bare s':>8} {'container s':>11} "
            f"{'per-run ovh':>11} {'wall s':>7} {'wall ovh':>8}"
        )
        print(header)
        tot_bare = tot_cont = tot_wall = 0.0
        tot_runs = 0
        for number, cand in sorted(built.items()):
            t = time.perf_counter()
            runs, _script = validator.runs(cand)  # the runs validate() grades, rejects included
            verdict = grade(
                [r for r in runs if r.side == "before"], [r for r in runs if r.side == "after"]
            )
            outcome = f"{len(verdict.fail_to_pass)} F2P" if verdict.ok else str(verdict.reason)
            cont, n_runs = sum(r.duration_seconds for r in runs), len(runs)
            wall = time.perf_counter() - t
            bare = bare_runs(
                demo.path, cand, work, config.validate_reruns_before, config.validate_reruns_after
            )
            bare_s = sum(bare)
            tot_bare, tot_cont, tot_wall = tot_bare + bare_s, tot_cont + cont, tot_wall + wall
            tot_runs += n_runs
            print(
                f"#{number:>3} {outcome:<16} {n_runs:>4} {bare_s:>8.2f} {cont:>11.2f} "
                f"{(cont - bare_s) / bare_s:>10.0%} {wall:>7.2f} {(wall - bare_s) / bare_s:>8.0%}"
            )
            assert cand.environment is not None
            remove_image(client, cand.environment.instance_image)
        print(
            f"overall ({tot_runs} runs): bare {tot_bare:.2f}s, "
            f"container {tot_cont:.2f}s ({tot_cont / max(tot_runs, 1):.2f}s per run), "
            f"per-run overhead {(tot_cont - tot_bare) / tot_bare:.0%}; "
            f"validation wall {tot_wall:.2f}s, wall overhead {(tot_wall - tot_bare) / tot_bare:.0%}"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
