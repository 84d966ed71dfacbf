"""Grading edges, one test per edge, named after the edge it guards."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest

from smelter.schemas.records import Reason, TestRun, TestStatus
from smelter.transforms.validate.grading import flaky_tests, grade, run_problem

P, F, E, S = TestStatus.PASSED, TestStatus.FAILED, TestStatus.ERROR, TestStatus.SKIPPED
A, B, C = "tests/test_m.py::test_a", "tests/test_m.py::test_b", "tests/test_m.py::TestK::test_c[1]"
MOD = "tests/test_m.py"


def consistent_exit(statuses: Mapping[str, TestStatus]) -> int:
    if any(v in (F, E) for v in statuses.values()):
        return 1
    return 0 if statuses else 5


def run(
    side: str,
    statuses: Mapping[str, TestStatus],
    attempt: int = 0,
    exit_code: int | None = -1,
    **kw: object,
) -> TestRun:
    code = consistent_exit(statuses) if exit_code == -1 else exit_code
    return TestRun(
        side=side,  # type: ignore[arg-type]
        attempt=attempt,
        exit_code=code,
        duration_seconds=1.0,
        statuses=dict(statuses),
        **kw,  # type: ignore[arg-type]
    )


def sides(
    before: Sequence[Mapping[str, TestStatus]], after: Sequence[Mapping[str, TestStatus]]
) -> tuple[list[TestRun], list[TestRun]]:
    return (
        [run("before", s, i) for i, s in enumerate(before)],
        [run("after", s, i) for i, s in enumerate(after)],
    )


# --------------------------------------------------------------------------- accepted


def test_fail_to_pass_and_pass_to_pass_split() -> None:
    g = grade(*sides([{A: F, B: P}] * 2, [{A: P, B: P}] * 3))
    assert g.ok and g.fail_to_pass == [A] and g.pass_to_pass == [B] and g.flaky == []


def test_failing_on_both_sides_is_in_neither_list_beside_a_real_fail_to_pass() -> None:
    """A test that cannot pass in a test container (it needs the network, or hangs until the
    per-test timeout) fails before and after: left out of both lists, the task still valid."""
    g = grade(*sides([{A: F, B: P, C: F}] * 2, [{A: P, B: P, C: E}] * 3))
    assert g.ok and g.fail_to_pass == [A] and g.pass_to_pass == [B] and g.flaky == []
    assert C not in g.fail_to_pass + g.pass_to_pass
    alone = grade(*sides([{B: P, C: F}] * 2, [{B: P, C: F}] * 3))  # only it: no FAIL_TO_PASS
    assert alone.reason is Reason.FAILS_AFTER and C in alone.detail


def test_error_before_counts_as_failing() -> None:
    assert grade(*sides([{A: E}] * 2, [{A: P}] * 3)).fail_to_pass == [A]


def test_absent_before_counts_as_failing() -> None:
    g = grade(*sides([{B: P}] * 2, [{A: P, B: P}] * 3))
    assert g.fail_to_pass == [A] and g.pass_to_pass == [B]


def test_skipped_before_passed_after_is_fail_to_pass() -> None:
    assert grade(*sides([{A: S}] * 2, [{A: P}] * 3)).fail_to_pass == [A]


def test_collection_error_before_then_passing_is_fail_to_pass() -> None:
    # New test module importing a name the fix adds: the module fails to import before.
    g = grade(*sides([{MOD: E}] * 2, [{A: P, B: P}] * 3))
    assert g.ok and g.fail_to_pass == [A, B]


def test_module_ids_never_enter_the_lists() -> None:
    g = grade(
        *sides(
            [{MOD: E, "tests/test_o.py::test_x": P}] * 2, [{A: P, "tests/test_o.py::test_x": P}] * 3
        )
    )
    assert MOD not in g.fail_to_pass + g.pass_to_pass


def test_failed_to_error_change_is_not_flaky() -> None:
    g = grade(*sides([{A: F}, {A: E}], [{A: P}] * 3))
    assert g.fail_to_pass == [A] and g.flaky == []


def test_skipped_after_is_not_pass_to_pass() -> None:
    g = grade(*sides([{A: F, B: P}] * 2, [{A: P, B: S}] * 3))
    assert g.ok and g.pass_to_pass == []


def test_passed_before_absent_after_is_in_neither_list() -> None:
    # The fix changed a parametrization: an id disappears without anything failing.
    g = grade(*sides([{A: F, B: P}] * 2, [{A: P}] * 3))
    assert g.ok and g.pass_to_pass == [] and g.fail_to_pass == [A]


def test_xpass_strict_failure_after_is_not_passing() -> None:
    g = grade(*sides([{A: F, B: F}] * 2, [{A: P, B: F}] * 3))
    assert g.fail_to_pass == [A]


# --------------------------------------------------------------------------- flaky


def test_flip_within_before_side_is_flaky_and_excluded() -> None:
    g = grade(*sides([{A: F, B: P}, {A: F, B: F}], [{A: P, B: P}] * 3))
    assert g.fail_to_pass == [A] and g.flaky == [B] and B not in g.pass_to_pass


def test_flip_within_after_side_is_flaky_and_excluded() -> None:
    g = grade(*sides([{A: F, B: F}] * 2, [{A: P, B: P}, {A: P, B: F}, {A: P, B: P}]))
    assert g.fail_to_pass == [A] and g.flaky == [B]


def test_only_candidate_flaky_rejects_all_flaky() -> None:
    g = grade(*sides([{A: F, B: P}] * 2, [{A: P, B: P}, {A: F, B: P}, {A: P, B: P}]))
    assert g.reason is Reason.ALL_FLAKY and A in g.detail and g.flaky == [A]


def test_flaky_bystander_does_not_turn_fails_after_into_all_flaky() -> None:
    # B passes in every before-run and flips after: flaky, but never a fail-to-pass candidate.
    g = grade(*sides([{A: F, B: P}] * 2, [{A: F, B: P}, {A: F, B: F}, {A: F, B: P}]))
    assert g.reason is Reason.FAILS_AFTER and g.flaky == [B]


def test_flaky_candidate_outranks_still_failing_neighbour() -> None:
    g = grade(*sides([{A: F, B: P}, {A: F, B: F}], [{A: F, B: P}] * 3))
    assert g.reason is Reason.ALL_FLAKY and B in g.detail


def test_absent_in_one_run_of_a_side_is_a_flip() -> None:
    assert flaky_tests([run("after", {A: P}), run("after", {})]) == {A}


# --------------------------------------------------------------------------- rejected


def test_pass_to_fail_rejects_even_with_fail_to_pass() -> None:
    g = grade(*sides([{A: F, B: P}] * 2, [{A: P, B: F}] * 3))
    assert g.reason is Reason.PASS_TO_FAIL and B in g.detail and g.fail_to_pass == []


def test_pass_to_error_rejects_pass_to_fail() -> None:
    g = grade(*sides([{A: F, B: P}] * 2, [{A: P, B: E}] * 3))
    assert g.reason is Reason.PASS_TO_FAIL


def test_module_broken_by_patch_is_pass_to_fail() -> None:
    other = "tests/test_o.py::test_z"
    g = grade(*sides([{A: P, other: F}] * 2, [{MOD: E, other: P}] * 3))
    assert g.reason is Reason.PASS_TO_FAIL and A in g.detail


def test_everything_passes_before_rejects_passes_before() -> None:
    g = grade(*sides([{A: P, B: P}] * 2, [{A: P, B: P}] * 3))
    assert g.reason is Reason.PASSES_BEFORE and g.pass_to_pass == [A, B]


def test_still_failing_after_rejects_fails_after() -> None:
    g = grade(*sides([{A: F, B: P}] * 2, [{A: F, B: P}] * 3))
    assert g.reason is Reason.FAILS_AFTER and A in g.detail


def test_skipped_both_sides_rejects_fails_after() -> None:
    assert grade(*sides([{A: S}] * 2, [{A: S}] * 3)).reason is Reason.FAILS_AFTER


def test_collection_error_after_rejects_collection_error() -> None:
    g = grade(*sides([{MOD: E}] * 2, [{MOD: E}] * 3))
    assert g.reason is Reason.COLLECTION_ERROR and MOD in g.detail


def test_no_tests_in_any_run_rejects_no_tests_run() -> None:
    assert grade(*sides([{}] * 2, [{}] * 3)).reason is Reason.NO_TESTS_RUN


def test_any_timeout_rejects_timeout() -> None:
    before, after = sides([{A: F}] * 2, [{A: P}] * 3)
    after[1] = run("after", {}, 1, exit_code=None, timed_out=True, report_found=False)
    g = grade(before, after)
    assert g.reason is Reason.TIMEOUT and "after run 1" in g.detail


def test_missing_report_rejects_infrastructure() -> None:
    before, after = sides([{A: F}] * 2, [{A: P}] * 3)
    before[0] = run("before", {}, 0, exit_code=1, report_found=False)
    g = grade(before, after)
    assert g.reason is Reason.INFRASTRUCTURE and "before run 0" in g.detail


def test_no_runs_on_a_side_rejects_infrastructure() -> None:
    assert grade([], [run("after", {A: P})]).reason is Reason.INFRASTRUCTURE


# --------------------------------------------------------------------------- exit-code checks


@pytest.mark.parametrize(
    ("code", "statuses", "problem"),
    [
        (0, {A: P, B: S}, None),
        (0, {A: F}, "exit code 0 but"),
        (0, {}, "lists no tests"),
        (1, {A: F}, None),
        (1, {A: P, MOD: E}, None),
        (1, {A: P, B: S}, "exit code 1 but"),
        (2, {MOD: E}, None),
        (2, {A: F}, "interrupted"),
        (3, {A: P}, "internal error"),
        (4, {}, "usage error"),
        (5, {}, None),
        (5, {A: P}, "exit code 5"),
        (137, {A: P}, "unexpected exit code 137"),
        (None, {A: P}, "unexpected exit code None"),
    ],
)
def test_exit_code_contradicting_report_is_a_problem(
    code: int | None, statuses: dict[str, TestStatus], problem: str | None
) -> None:
    found = run_problem(run("before", statuses, exit_code=code))
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found


def test_exit_zero_with_failures_rejects_infrastructure_not_a_result() -> None:
    before, after = sides([{A: F}] * 2, [{A: P}] * 3)
    before[1] = run("before", {A: F}, 1, exit_code=0)
    assert grade(before, after).reason is Reason.INFRASTRUCTURE


def test_exit_one_with_all_passed_rejects_infrastructure() -> None:
    before, after = sides([{A: F}] * 2, [{A: P}] * 3)
    after[2] = run("after", {A: P}, 2, exit_code=1)
    assert grade(before, after).reason is Reason.INFRASTRUCTURE


def test_timeout_outranks_infrastructure() -> None:
    before = [run("before", {}, 0, exit_code=3), run("before", {}, 1, timed_out=True)]
    assert grade(before, [run("after", {A: P})]).reason is Reason.TIMEOUT


def test_lists_are_sorted_for_stable_output() -> None:
    g = grade(*sides([{C: F, A: F}] * 2, [{C: P, A: P}] * 3))
    assert g.fail_to_pass == sorted([A, C])


def test_timeout_with_cancelled_runs_on_the_other_side_is_still_timeout() -> None:
    # Validation drops queued runs once one times out, so a side may have no runs at all.
    timed = run("before", {}, 0, exit_code=None, timed_out=True, report_found=False)
    assert grade([timed], []).reason is Reason.TIMEOUT
