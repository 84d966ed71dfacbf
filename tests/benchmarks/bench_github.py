"""GitHub mining benchmark: API requests per mined PR, cold and warm, against the REST stand-in.

Run: ``.venv/bin/python tests/benchmarks/bench_github.py [--copies N] [--per-page K]``.

What is measured (PyGithub -> the stand-in on 127.0.0.1, diffs from a local mirror of the demo):
- The demo repository served under ``--copies`` names (same history, same invented issues), so
  the per-PR figures do not hinge on 17 PRs; each name gets its own mirror folder entry (one
  clone per URL is shared, as in real runs).
- cold: empty caches. ``requests`` = responses that cost quota (status != 304).
- warm: the same run again, caches kept: per-PR outcomes are reused, the list pages are
  revalidated (304, free).
- revalidate: outcomes discarded (as after a filter change), HTTP cache kept: every request is
  conditional and answered 304.
- Figures per listed PR and per mined PR (a PullRequest record, i.e. one that passed the filters).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # tests.fixtures, run as a script

from smelter.pipeline.demo.build import create_demo_repo
from smelter.schemas import PullRequest
from smelter.transforms.adapters.git import GitConfig
from smelter.transforms.mine.github_config import GitHubConfig
from smelter.transforms.mine.github_source import GitHubSource
from tests.fixtures.github_standin import GitHubStandin, standin_from_demo


def run(config: GitHubConfig, names: list[str], standin: GitHubStandin) -> dict[str, float]:
    standin.reset_log()
    start = time.perf_counter()
    listed = mined = 0
    with GitHubSource(config, environ={"GITHUB_TOKEN": "ghp_bench"}, report=lambda s: None) as s:
        for name in names:
            for outcome in s.mine_repo(name):
                listed += 1
                mined += isinstance(outcome, PullRequest)
    seconds = time.perf_counter() - start
    paid = len(standin.non_304())
    free = standin.count(status=304)
    return {"listed": listed, "mined": mined, "paid": paid, "free": free, "seconds": seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--copies", type=int, default=8, help="repository names serving the demo")
    ap.add_argument("--per-page", type=int, default=100, help="PRs per list page")
    ap.add_argument(
        "--require-linked-issue",
        action="store_true",
        help="reject PRs without linked issues (fewer requests per listed PR)",
    )
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="smelter-bench-github-"))
    try:
        demo = create_demo_repo(tmp / "calc")
        base = standin_from_demo(demo)
        repos = []
        for i in range(args.copies):
            for r in standin_from_demo(demo) if i else base:
                if r.full_name == demo.name and i:
                    r.full_name = f"{demo.name}-{i}"
                if i == 0 or r.full_name != "other-org/mathlib":
                    repos.append(r)
        names = [r.full_name for r in repos if r.pulls]
        with GitHubStandin(repos) as standin:
            config = GitHubConfig(
                github_base_url=standin.base_url,
                github_cache_dir=str(tmp / "gh"),
                git=GitConfig(mirror_dir=str(tmp / "mirrors")),
                github_per_page=args.per_page,
                github_require_linked_issue=args.require_linked_issue,
            )
            cold = run(config, names, standin)
            warm = run(config, names, standin)
            shutil.rmtree(tmp / "gh" / "outcomes")
            reval = run(config, names, standin)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"GitHub mining against the stand-in: {len(names)} repositories, "
          f"{cold['listed']:.0f} PRs listed, {cold['mined']:.0f} mined "
          f"(require_linked_issue={args.require_linked_issue}, "
          f"per_page={args.per_page})")  # fmt: skip
    print(f"{'run':<11}{'paid req':>9}{'304s':>7}{'paid/listed':>13}{'paid/mined':>12}"
          f"{'seconds':>9}{'PRs/s':>8}")  # fmt: skip
    for label, r in (("cold", cold), ("warm", warm), ("revalidate", reval)):
        print(f"{label:<11}{r['paid']:>9.0f}{r['free']:>7.0f}"
              f"{r['paid'] / max(1, r['listed']):>13.2f}{r['paid'] / max(1, r['mined']):>12.2f}"
              f"{r['seconds']:>9.2f}{r['listed'] / r['seconds']:>8.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
