"""Flaky tests against the real grader: how often a random flake ends in FAIL_TO_PASS.

Run: ``.venv/bin/python tests/benchmarks/bench_flaky.py`` (``--trials N`` per cell, default
20,000; ``--seed S``; ``--bound B``, default the ``validate_flaky_bound`` default).

What is simulated (no Docker: synthetic ``TestRun`` records through ``grading.grade``, the
verdict validation itself uses, and ``validate.flaky_rerun_plan``, the rerun decision it uses):
- A flaky test fails each run independently with probability q (10%-50%), on both sides
  alike: the fix does nothing to it.
- "PR with flaky tests": one real fail-to-pass test (fails before, passes after, always) plus
  ``--flaky-tests`` (default 10) flaky tests; counted when any flaky test is in FAIL_TO_PASS.
- "no-op PR": its only test is flaky; counted when the grader accepts the task.
- before = the planned runs alone (2 before, 3 after); after = the planned runs plus the
  extra runs of the fail-to-pass candidates alone that ``flaky_rerun_plan`` asks for, each
  rerun listing only the tests it selected (as the sandbox report of a node-id run does).
- "expected" = the exact probability for one flaky test, q^b (1-q)^a.
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Sequence

from smelter.schemas.records import TestRun, TestStatus
from smelter.transforms.validate.config import ValidateConfig
from smelter.transforms.validate.grading import flake_risk, grade
from smelter.transforms.validate.validate import flaky_rerun_plan

REAL = "tests/test_fix.py::test_fixed"
RATES = (0.1, 0.2, 0.3, 0.4, 0.5)


def make_run(side: str, attempt: int, statuses: dict[str, TestStatus], selected: Sequence[str]):
    """A run whose exit code agrees with its report, as pytest's would."""
    failed = any(v is not TestStatus.PASSED for v in statuses.values())
    return TestRun(
        side=side,  # type: ignore[arg-type]
        attempt=attempt,
        exit_code=1 if failed else 0,
        duration_seconds=0.0,
        statuses=statuses,
        selected=list(selected),
    )


def simulate(
    rng: random.Random,
    q: float,
    flaky: Sequence[str],
    real: bool,
    before: int,
    after: int,
    bound: float | None,
) -> tuple[list[str], bool]:
    """One task: (FAIL_TO_PASS, accepted) after the planned runs (+ reruns when ``bound``)."""

    def one(side: str, attempt: int, selected: Sequence[str] = ()) -> TestRun:
        tests = selected or [*flaky, *([REAL] if real else [])]
        statuses = {}
        for t in tests:
            if t == REAL:
                statuses[t] = TestStatus.PASSED if side == "after" else TestStatus.FAILED
            else:
                statuses[t] = TestStatus.FAILED if rng.random() < q else TestStatus.PASSED
        return make_run(side, attempt, statuses, selected)

    runs = [one("before", i) for i in range(before)] + [one("after", i) for i in range(after)]
    if bound is not None:
        selected, jobs = flaky_rerun_plan(runs, bound)
        runs += [one(side, attempt, selected) for side, attempt in jobs]
    verdict = grade([r for r in runs if r.side == "before"], [r for r in runs if r.side == "after"])
    return verdict.fail_to_pass, verdict.ok


def main(argv: Sequence[str] | None = None) -> None:
    defaults = ValidateConfig()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=12)
    ap.add_argument("--bound", type=float, default=defaults.validate_flaky_bound)
    ap.add_argument("--flaky-tests", type=int, default=10)
    args = ap.parse_args(argv)
    b, a = defaults.validate_reruns_before, defaults.validate_reruns_after
    flaky = [f"tests/test_flaky.py::test_flaky_{i}" for i in range(args.flaky_tests)]
    rng = random.Random(args.seed)
    print(
        f"{args.trials} trials per cell; planned runs {b} before + {a} after; "
        f"bound {args.bound}; {args.flaky_tests} flaky tests per PR"
    )
    head = (
        "| flake rate | PRs with a flake in F2P: before | after "
        "| no-op PR accepted: before | after | expected before | expected after |"
    )
    print(head)
    print("|---" * (head.count("|") - 1) + "|")
    for q in RATES:
        cells = []
        for bound in (None, args.bound):
            hits = 0
            for _ in range(args.trials):
                f2p, _ok = simulate(rng, q, flaky, True, b, a, bound)
                hits += any(t in flaky for t in f2p)
            cells.append(hits / args.trials)
        for bound in (None, args.bound):
            hits = sum(
                simulate(rng, q, flaky[:1], False, b, a, bound)[1] for _ in range(args.trials)
            )
            cells.append(hits / args.trials)
        noop = [make_run("before", i, {flaky[0]: TestStatus.FAILED}, ()) for i in range(b)]
        noop += [make_run("after", i, {flaky[0]: TestStatus.PASSED}, ()) for i in range(a)]
        _, jobs = flaky_rerun_plan(noop, args.bound)
        eb = b + sum(s == "before" for s, _ in jobs)
        ea = a + sum(s == "after" for s, _ in jobs)
        expected = (q**b * (1 - q) ** a, q**eb * (1 - q) ** ea)
        print(
            f"| {q:.0%} | {cells[0]:.2%} | {cells[1]:.2%} | {cells[2]:.2%} | {cells[3]:.2%} "
            f"| {expected[0]:.2%} | {expected[1]:.2%} |"
        )
    print(
        f"runs after the change: {eb} before + {ea} after for a fail-to-pass candidate "
        f"(worst case over 10-90% failure rates: {flake_risk(eb, ea):.3%}, "
        f"with {b}+{a} runs: {flake_risk(b, a):.3%})"
    )


if __name__ == "__main__":
    main()
