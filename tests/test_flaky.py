"""Flakiness with numbers: how many extra runs of the fail-to-pass candidates the bound needs,
how grading counts a rerun that selected a few tests, and a real rerun catching a flake that
the planned 2 + 3 runs let through."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import docker
import pytest

from smelter.schemas.records import TestRun, TestStatus
from smelter.transforms.validate.config import ValidateConfig
from smelter.transforms.validate.grading import FLAKY_RATES, extra_runs, flake_risk, grade
from smelter.transforms.validate.validate import Validator, flaky_rerun_plan, rerun_targets
from tests.fixtures.validate import (
    BASE_TESTS,
    FIXED_CODE,
    InstanceFactory,
    candidate_for,
    make_repo,
)

P, F = TestStatus.PASSED, TestStatus.FAILED
REAL, FLAKE, OTHER = "tests/t.py::test_real", "tests/t.py::test_flake", "tests/t.py::test_other"


def run(
    side: str, attempt: int, statuses: Mapping[str, TestStatus], selected: Sequence[str] = ()
) -> TestRun:
    bad = any(v is not P for v in statuses.values())
    return TestRun(
        side=side,  # type: ignore[arg-type]
        attempt=attempt,
        exit_code=1 if bad else 0,
        duration_seconds=1.0,
        statuses=dict(statuses),
        selected=list(selected),
    )


# --------------------------------------------------------------------------- the formula


def brute_risk(before: int, after: int, rates: tuple[float, float] = FLAKY_RATES) -> float:
    lo, hi = rates
    grid = [lo + (hi - lo) * i / 20_000 for i in range(20_001)]
    return max(q**before * (1 - q) ** after for q in grid)


@pytest.mark.parametrize("before,after", [(2, 3), (3, 4), (1, 1), (5, 0), (0, 4), (9, 2)])
def test_flake_risk_is_the_maximum_over_the_rate_interval(before: int, after: int) -> None:
    assert flake_risk(before, after) == pytest.approx(brute_risk(before, after), rel=1e-6)
    narrow = (0.1, 0.5)
    assert flake_risk(before, after, narrow) == pytest.approx(brute_risk(before, after, narrow))


def test_two_plus_three_runs_let_a_forty_percent_flake_through_three_and_a_half_percent() -> None:
    assert flake_risk(2, 3) == pytest.approx(0.4**2 * 0.6**3)  # the worst rate is 2 / 5


def test_one_percent_needs_one_more_run_per_side_after_two_plus_three() -> None:
    assert extra_runs(2, 3, 0.01) == (1, 1)
    assert flake_risk(3, 4) < 0.01
    # No split of a single extra run meets the bound, so two is the fewest.
    assert flake_risk(3, 3) >= 0.01 and flake_risk(2, 4) >= 0.01


@pytest.mark.parametrize("bound", [0.05, 0.01, 0.005, 0.001, 1e-4])
def test_extra_runs_are_the_fewest_that_meet_the_bound(bound: float) -> None:
    b, a = extra_runs(2, 3, bound)
    assert flake_risk(2 + b, 3 + a) < bound
    total = b + a
    if total:
        assert all(flake_risk(2 + x, 3 + total - 1 - x) >= bound for x in range(total))


def test_a_loose_bound_adds_nothing_and_a_bad_one_is_refused() -> None:
    assert extra_runs(2, 3, 1.0) == (0, 0) and extra_runs(2, 3, 0.04) == (0, 0)
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="bound"):
            extra_runs(2, 3, bad)
    with pytest.raises(ValueError, match="extra runs"):
        extra_runs(2, 3, 1e-300)


def test_failure_rates_up_to_one_half_alone_would_rerun_only_the_before_side() -> None:
    """Why the rates are symmetric: with q <= 0.5 an after-run multiplies the risk by 1 - q >=
    0.5 and a before-run by q <= 0.5, so the formula never asks for an after-run."""
    assert extra_runs(2, 3, 0.01, (0.1, 0.5)) == (2, 0)
    assert flake_risk(2, 3, (0.1, 0.5)) == flake_risk(2, 3)  # same 2+3 risk, q = 0.4 inside


# --------------------------------------------------------------------------- grading reruns


def test_rerun_plan_selects_only_fail_to_pass_candidates_and_continues_attempts() -> None:
    planned = [run("before", i, {REAL: F, FLAKE: F, OTHER: P}) for i in range(2)]
    planned += [run("after", i, {REAL: P, FLAKE: P, OTHER: P}) for i in range(3)]
    selected, jobs = flaky_rerun_plan(planned, 0.01)
    assert selected == [FLAKE, REAL]
    assert sorted(jobs) == [("after", 3), ("before", 2)]


def test_a_candidate_whose_module_did_not_import_is_rerun_by_its_module() -> None:
    """Regression: its node id does not exist before the fix, and pytest stopped with a usage
    error (exit 4), which voided the run and rejected a good task as infrastructure."""
    new = "tests/test_new.py::test_new"
    planned = [run("before", i, {REAL: F, "tests/test_new.py": TestStatus.ERROR}) for i in range(2)]
    planned += [run("after", i, {REAL: P, new: P}) for i in range(3)]
    selected, _ = flaky_rerun_plan(planned, 0.01)
    assert selected == [REAL, new]
    assert rerun_targets(selected, planned) == [REAL, "tests/test_new.py"]
    # The module's rerun reports the collection error: the candidate stays not passed there.
    rerun = run("before", 2, {"tests/test_new.py": TestStatus.ERROR}, selected=selected)
    after = [r for r in planned if r.side == "after"]
    g = grade([*[r for r in planned if r.side == "before"], rerun], after)
    assert g.ok and g.fail_to_pass == sorted([REAL, new])


def test_no_rerun_for_a_rejected_task_or_a_loose_bound() -> None:
    passes_before = [run("before", 0, {REAL: P}), run("after", 0, {REAL: P})]
    assert flaky_rerun_plan(passes_before, 0.01) == ([], [])
    fine = [run("before", 0, {REAL: F}), run("after", 0, {REAL: P})]
    assert flaky_rerun_plan(fine, 1.0) == ([], [])


def test_a_rerun_that_flips_a_candidate_makes_it_flaky_and_keeps_pass_to_pass() -> None:
    """A rerun lists only its selected tests: OTHER is absent there, and must stay
    PASS_TO_PASS instead of counting as not passed (regression guard for partial runs)."""
    before = [run("before", i, {REAL: F, FLAKE: F, OTHER: P}) for i in range(2)]
    after = [run("after", i, {REAL: P, FLAKE: P, OTHER: P}) for i in range(3)]
    before.append(run("before", 2, {REAL: F, FLAKE: P}, selected=[FLAKE, REAL]))
    after.append(run("after", 3, {REAL: P, FLAKE: P}, selected=[FLAKE, REAL]))
    g = grade(before, after)
    assert g.ok and g.fail_to_pass == [REAL] and g.pass_to_pass == [OTHER]
    assert g.flaky == [FLAKE]


def test_a_rerun_counts_for_a_candidate_it_ran() -> None:
    """The same reruns with the candidate failing after: it is no longer fail-to-pass."""
    before = [run("before", i, {REAL: F}) for i in range(2)]
    after = [run("after", i, {REAL: P}) for i in range(3)]
    after.append(run("after", 3, {REAL: F}, selected=[REAL]))
    g = grade(before, after)
    assert not g.ok and g.flaky == [REAL]


# --------------------------------------------------------------------------- real Docker

# Fails without the fix; with it, passes in the three planned after-runs (attempts 0-2) and
# fails in the first extra one (attempt 3): a flake the planned runs cannot see.
LATE_FLAKE = BASE_TESTS + textwrap.dedent(
    """

    def test_add_negative():
        assert add(2, -3) == -1


    def test_add_negative_late_flake():
        assert add(5, -1) == 4 and os.environ["SMELTER_ATTEMPT"] != "3"
    """
)


@pytest.mark.docker
def test_extra_runs_in_containers_catch_a_flake_the_planned_runs_miss(
    tmp_path: Path, instance_image: InstanceFactory, docker_client: docker.DockerClient
) -> None:
    repo, base = make_repo(
        tmp_path, {"calc/__init__.py": FIXED_CODE, "tests/test_calc.py": LATE_FLAKE}
    )
    cand = candidate_for(
        repo, base=base, image=instance_image(repo), head="main",
        test_paths=["tests"], code_paths=["calc"],
    )  # fmt: skip
    config = ValidateConfig(
        validate_timeout_seconds=120, validate_memory="512m", validate_keep_instance_images=True
    )
    task = Validator(docker_client, config).validate(cand)
    v = task.validation
    flake = "tests/test_calc.py::test_add_negative_late_flake"
    real = "tests/test_calc.py::test_add_negative"
    f2p = task.FAIL_TO_PASS
    assert v.flaky == [flake] and f2p == [real]
    assert "tests/test_calc.py::test_mul" in task.PASS_TO_PASS  # absent from the reruns
    extra = [r for r in v.runs if r.selected]
    assert sorted((r.side, r.attempt) for r in extra) == [("after", 3), ("before", 2)]
    for r in extra:  # only the candidates ran
        assert r.selected == [real, flake] and set(r.statuses) == {real, flake}, r.statuses
    assert extra[-1].statuses[flake] == "failed" and extra[-1].side == "after"
    assert (v.extra_runs_before, v.extra_runs_after, v.flaky_bound) == (1, 1, 0.01)
    assert v.flaky_risk == pytest.approx(flake_risk(3, 4)) and v.flaky_risk < 0.01
