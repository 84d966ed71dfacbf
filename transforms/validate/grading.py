"""FAIL_TO_PASS / PASS_TO_PASS from repeated runs: pure functions, no Docker.

Deliberate choices:
- A run is first checked against its own exit code (``run_problem``). pytest's exit codes are
  0 all passed, 1 some failed, 2 interrupted, 3 internal error, 4 usage error, 5 no tests
  collected; a report that contradicts its code (exit 0 with failures, exit 1 with everything
  passing) means something other than the tests decided the outcome (a killed process, a
  plugin crash, a stale file), so the run is void and the task is rejected as
  ``infrastructure``, never graded on half-truths. Exit 2 is accepted only together with a
  collection error in the report: that is how pytest ends a run whose module did not import.
- "Passed" is strict: skipped, xfailed, errored, failed and absent all count as not passed, so
  a test skipped before the fix (``importorskip`` of a module the fix adds) and passing after
  it is FAIL_TO_PASS.
- Flaky means the pass/not-pass verdict of a test differs between runs of the same side. Flaky
  tests are excluded from both lists and recorded. A change between failed and error is not a
  flip: both are "not passed".
- A flaky test can still look fail-to-pass by chance: failing at random with probability q per
  run, it fails all b before-runs and passes all a after-runs with probability q^b (1-q)^a
  (3.5% for 2+3 runs at q = 0.4). ``extra_runs`` says how many more runs of the candidates
  bring the worst case over q in ``FLAKY_RATES`` below a bound. The rates are symmetric,
  10% to 90%: "up to 50% flaky" is a test whose rarer outcome, failing *or passing*, comes up
  in 10-50% of runs; a range ending at 0.5 would always pick before-runs only and leave a test
  that passes 1 run in 3 barely checked on the after side. A rerun names its tests
  (``TestRun.selected``) and counts only for them: a test it did not select is neither absent
  nor failing there.
- Any test that passed in every before-run and failed or errored in every after-run rejects
  the task (``pass_to_fail``): the gold patch breaks something. A test whose module stops
  importing after the patch counts as failing there. A test that passed before and is absent
  or skipped after (parametrization changed by the patch) is in neither list.
- With no FAIL_TO_PASS the reason is the most specific one, in this order: collection error
  after the patch, all candidates flaky, nothing ran, tests still failing after, tests passing
  before.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from smelter.schemas.records import Reason, TestRun, TestStatus
from smelter.transforms.validate.junit import is_test_id

EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_INTERNAL, EXIT_USAGE, EXIT_NO_TESTS = range(6)

_NOT_PASSED_BAD = (TestStatus.FAILED, TestStatus.ERROR)
# Per-run failure rates of the random flakes the extra runs guard against: 10-50% flaky, the
# rarer outcome being a failure (q <= 0.5) or a pass (q >= 0.5).
FLAKY_RATES = (0.1, 0.9)
MAX_EXTRA_RUNS = 64  # a bound so small that it needs more is a configuration mistake


@dataclass(frozen=True)
class Grade:
    """The verdict on one task: its test lists, or why it has none."""

    fail_to_pass: list[str] = field(default_factory=list)
    pass_to_pass: list[str] = field(default_factory=list)
    flaky: list[str] = field(default_factory=list)
    reason: Reason | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.reason is None


def run_label(run: TestRun) -> str:
    return f"{run.side} run {run.attempt}"


def run_problem(run: TestRun) -> str | None:
    """Why this run is not a test result (None when it is one). Timeouts are handled apart.

    Signals that disagree come first: validation rejects such a run as ``result_mismatch``
    before grading, and anything graded directly must not count it either."""
    if run.result_mismatch:
        return f"result signals disagree: {run.result_mismatch}"
    if not run.report_found:
        return f"no JUnit report came back (exit code {run.exit_code})"
    code = run.exit_code
    bad = [k for k, v in run.statuses.items() if v in _NOT_PASSED_BAD]
    collection = [k for k in bad if not is_test_id(k)]
    if code == EXIT_OK:
        if bad:
            return f"exit code 0 but the report has {len(bad)} failing, e.g. {bad[0]}"
        if not run.statuses:
            return "exit code 0 but the report lists no tests"
        return None
    if code == EXIT_FAILED:
        return None if bad else "exit code 1 but the report has no failure or error"
    if code == EXIT_INTERRUPTED:
        return None if collection else "pytest was interrupted (exit code 2)"
    if code == EXIT_INTERNAL:
        return "pytest internal error (exit code 3)"
    if code == EXIT_USAGE:
        return "pytest usage error (exit code 4)"
    if code == EXIT_NO_TESTS:
        tests = [k for k in run.statuses if is_test_id(k)]
        return f"exit code 5 (no tests) but the report lists {len(tests)}" if tests else None
    return f"unexpected exit code {code} (killed, out of memory, or the script failed)"


def flake_risk(before: int, after: int, rates: tuple[float, float] = FLAKY_RATES) -> float:
    """The worst chance, over per-run failure rates q in ``rates``, that a test failing at
    random fails ``before`` runs in a row and passes ``after`` runs: max q^b (1-q)^a.

    q^b (1-q)^a rises up to q = b / (a + b) and falls after it, so the maximum over an
    interval is at that point clipped into the interval.
    """
    lo, hi = rates
    if not 0.0 < lo <= hi < 1.0:
        raise ValueError(f"flake rates must satisfy 0 < low <= high < 1, not {rates}")
    if before + after == 0:
        return 1.0
    q = min(max(before / (before + after), lo), hi)
    return q**before * (1.0 - q) ** after


def extra_runs(
    before: int, after: int, bound: float, rates: tuple[float, float] = FLAKY_RATES
) -> tuple[int, int]:
    """The fewest extra (before, after) runs that bring ``flake_risk`` under ``bound``.

    Among splits with the same total, the one with the lowest risk wins, then the most even
    one (for symmetric rates the best split is even: both sides are rerun). (0, 0) when
    the planned runs already suffice; ``ValueError`` for a bound outside (0, 1] or one that
    needs more than ``MAX_EXTRA_RUNS``.
    """
    if not 0.0 < bound <= 1.0:
        raise ValueError(f"the flakiness bound must be in (0, 1], not {bound}")
    for total in range(MAX_EXTRA_RUNS + 1):
        risks = [(flake_risk(before + b, after + total - b, rates), b) for b in range(total + 1)]
        risk, b = min(risks, key=lambda rb: (round(rb[0], 12), abs(2 * rb[1] - total)))
        if risk < bound:
            return b, total - b
    raise ValueError(f"the flakiness bound {bound} needs more than {MAX_EXTRA_RUNS} extra runs")


def _covers(run: TestRun, test: str) -> bool:
    """Whether ``run`` ran ``test``: a rerun of selected tests says nothing about the others."""
    return not run.selected or test in run.selected or _module(test) in run.selected


def _passed_everywhere(runs: Sequence[TestRun], test: str) -> bool:
    return all(r.statuses.get(test) is TestStatus.PASSED for r in runs if _covers(r, test))


def _passed_somewhere(runs: Sequence[TestRun], test: str) -> bool:
    return any(r.statuses.get(test) is TestStatus.PASSED for r in runs if _covers(r, test))


def flaky_tests(runs: Sequence[TestRun]) -> set[str]:
    """Tests whose passed / not-passed verdict differs between runs of one side."""
    tests = {t for r in runs for t in r.statuses if is_test_id(t)}
    return {t for t in tests if _passed_somewhere(runs, t) and not _passed_everywhere(runs, t)}


def _module(test: str) -> str:
    return test.split("::", 1)[0]


def _failing_after(runs: Sequence[TestRun], test: str) -> bool:
    """Failed or errored in every after-run, counting a module collection error as an error."""
    runs = [r for r in runs if _covers(r, test)]
    for r in runs:
        status = r.statuses.get(test)
        if status is None and r.statuses.get(_module(test)) is TestStatus.ERROR:
            status = TestStatus.ERROR
        if status not in _NOT_PASSED_BAD:
            return False
    return bool(runs)


def grade(before: Sequence[TestRun], after: Sequence[TestRun]) -> Grade:
    """Grade a task from its before-runs (test patch only) and after-runs (plus the fix)."""
    timed_out = [run_label(r) for r in (*before, *after) if r.timed_out]
    if timed_out:  # first: validation stops the other runs once one times out
        return Grade(reason=Reason.TIMEOUT, detail="timed out: " + ", ".join(timed_out))
    if not before or not after:
        return Grade(reason=Reason.INFRASTRUCTURE, detail="a side has no runs")
    problems = [f"{run_label(r)}: {p}" for r in (*before, *after) if (p := run_problem(r))]
    if problems:
        return Grade(reason=Reason.INFRASTRUCTURE, detail="; ".join(problems))

    flaky = flaky_tests(before) | flaky_tests(after)
    tests = {t for r in (*before, *after) for t in r.statuses if is_test_id(t)} - flaky
    f2p = sorted(
        t for t in tests if _passed_everywhere(after, t) and not _passed_somewhere(before, t)
    )
    p2p = sorted(t for t in tests if _passed_everywhere(after, t) and _passed_everywhere(before, t))
    p2f = sorted(t for t in tests if _passed_everywhere(before, t) and _failing_after(after, t))
    flaky_list = sorted(flaky)
    if p2f:
        return Grade(
            [], p2p, flaky_list, Reason.PASS_TO_FAIL, _listing("passed before, fail after", p2f)
        )
    if f2p:
        return Grade(f2p, p2p, flaky_list)
    return Grade([], p2p, flaky_list, *_why_no_f2p(before, after, tests, flaky))


def _why_no_f2p(
    before: Sequence[TestRun], after: Sequence[TestRun], tests: set[str], flaky: set[str]
) -> tuple[Reason, str]:
    broken = sorted({k for r in after for k, v in r.statuses.items() if not is_test_id(k)
                     and v is TestStatus.ERROR})  # fmt: skip
    if broken:
        return Reason.COLLECTION_ERROR, _listing("module does not import after the patch", broken)
    would_be = sorted(
        t for t in flaky if _passed_somewhere(after, t) and not _passed_everywhere(before, t)
    )
    if would_be:
        return Reason.ALL_FLAKY, _listing("fail-to-pass candidates flip between runs", would_be)
    if not tests and not flaky:
        return Reason.NO_TESTS_RUN, "the test files ran no test"
    still_failing = sorted(
        t for t in tests if not _passed_somewhere(before, t) and not _passed_everywhere(after, t)
    )
    if still_failing:
        return Reason.FAILS_AFTER, _listing("not passing with the fix", still_failing)
    return Reason.PASSES_BEFORE, _listing("already passing without the fix", sorted(tests))


def _listing(what: str, items: Sequence[str], limit: int = 10) -> str:
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return f"{what}: {', '.join(items[:limit])}{more}"
