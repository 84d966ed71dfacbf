"""Each demo pull request and its expected fate at each stage (``DEMO_PRS``).

Deliberate choices:
- Classification by parents is exercised both ways: #24 is a ONE-parent commit titled
  "Merge pull request #24 from …" (rebase-merged: a squash), #25 a TWO-parent merge titled
  "… (#25)" (a merge). "Merge branch 'typo-fix'" has two parents and no number: not a PR.
- The flaky test (#18, again run by #25) fails exactly when ``SMELTER_ATTEMPT`` (the 0-based
  rerun index validation exports into each test container) is odd, so any side run at least
  twice sees it flip; #18 still has one genuine FAIL_TO_PASS test.
- The non-UTF-8 file (``src/calc/units.py``, latin-1 with a coding cookie) is carried, not
  rejected: the miner re-takes that path's diff as a git binary patch (base85, ASCII), which
  ``git apply`` applies like any other patch. So #21 survives mine and snapshot with its
  ``patch`` holding a "GIT binary patch" section; ``Reason.UNDECODABLE_DIFF`` stays for what
  still cannot be carried.
- Expected FAIL_TO_PASS / PASS_TO_PASS assume validation runs the test files the test_patch
  touches (as SWE-bench does) and that a test failing on both sides is neither.
- The ``release-0.1`` branch holds a backport of #11 squashed as "… (#11)": mining main and
  the release branch together yields #11 once and a ``duplicate`` rejection for the backport.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from smelter.schemas import Reason

REPO_NAME = "smelter-demo/calc"


@dataclasses.dataclass(frozen=True)
class DemoPR:
    """One demo pull request and its expected fate at each stage (None = kept)."""

    number: int
    title: str
    style: Literal["merge", "squash"]
    covers: tuple[str, ...]
    mine: Reason | None = None
    snapshot: Reason | None = None
    validate: Reason | None = None
    fail_to_pass: tuple[str, ...] = ()
    pass_to_pass: tuple[str, ...] = ()
    flaky: tuple[str, ...] = ()
    linked_issues: tuple[tuple[str, int], ...] = ()
    code_files: tuple[str, ...] = ()
    test_files: tuple[str, ...] = ()
    aux_files: tuple[str, ...] = ()
    binary_patch: bool = False  # the code or test patch carries a "GIT binary patch" section

    @property
    def instance_id(self) -> str:
        return f"{REPO_NAME.replace('/', '__')}-{self.number}"

    @property
    def kept_after_snapshot(self) -> bool:
        return self.mine is None and self.snapshot is None

    @property
    def valid(self) -> bool:
        return self.kept_after_snapshot and self.validate is None


_CORE = "tests/test_core.py"
_PARSE = "tests/test_parse.py"
_STATS = "tests/test_stats.py"

DEMO_PRS: tuple[DemoPR, ...] = (
    DemoPR(
        11, "Fix division by zero handling", "merge",
        ("bug fix, test fails before", "two commits on the branch", "changelog kept as aux",
         "links #3", "backported to release-0.1 (duplicate when both branches are mined)"),
        fail_to_pass=(f"{_CORE}::test_div_by_zero",),
        pass_to_pass=(f"{_CORE}::test_add", f"{_CORE}::test_mul", f"{_CORE}::test_div"),
        linked_issues=((REPO_NAME, 3),),
        code_files=("src/calc/core.py",), test_files=(_CORE,), aux_files=("CHANGELOG.md",),
    ),
    DemoPR(
        12, "Handle tabs and newlines in expressions", "squash",
        ("bug fix, test fails before", "links owner/repo#N form", "test class ids in P2P"),
        fail_to_pass=(f"{_PARSE}::test_tokenize_tabs_and_newlines",),
        pass_to_pass=(
            f"{_PARSE}::test_tokenize_numbers", f"{_PARSE}::test_precedence",
            f"{_PARSE}::test_parentheses", f"{_PARSE}::TestErrors::test_unknown_character",
            f"{_PARSE}::TestErrors::test_missing_paren",
        ),
        linked_issues=((REPO_NAME, 4),),
        code_files=("src/calc/parse.py",), test_files=(_PARSE,),
    ),
    DemoPR(
        13, "Add statistics module", "merge",
        ("feature with a new test file", "branch forked before #12 landed", "README as aux",
         "links by full issue URL"),
        fail_to_pass=(f"{_STATS}::test_mean", f"{_STATS}::test_median_odd",
                      f"{_STATS}::test_median_even"),
        linked_issues=((REPO_NAME, 5),),
        code_files=("src/calc/stats.py",), test_files=(_STATS,), aux_files=("README.md",),
    ),
    DemoPR(
        14, "Document operator precedence", "squash", ("docs only",),
        mine=Reason.NO_CODE_CHANGES,
    ),
    DemoPR(
        15, "Speed up the tokenizer", "merge", ("code only",),
        mine=Reason.NO_TEST_CHANGES,
    ),
    DemoPR(
        16, "Add tests for negative multiplication", "squash", ("tests only",),
        mine=Reason.NO_CODE_CHANGES,
    ),
    DemoPR(
        17, "Refactor add() and document it", "merge",
        ("new test already passes without the fix",),
        validate=Reason.PASSES_BEFORE,
        code_files=("src/calc/core.py",), test_files=(_CORE,),
    ),
    DemoPR(
        18, "Fix median of unsorted data", "squash",
        ("bug fix, test fails before", "flaky test flipping on SMELTER_ATTEMPT"),
        fail_to_pass=(f"{_STATS}::test_median_unsorted",),
        pass_to_pass=(f"{_STATS}::test_mean", f"{_STATS}::test_median_odd",
                      f"{_STATS}::test_median_even"),
        flaky=(f"{_STATS}::test_median_random_sample",),
        code_files=("src/calc/stats.py",), test_files=(_STATS,),
    ),
    DemoPR(
        19, "Fix power() with a negative exponent", "merge",
        ("bug fix, test fails before", "description full of template noise: HTML comments, "
         "checklist, bot footer, a commented-out 'Fixes #0'", "links #6 via Fixes"),
        fail_to_pass=(f"{_CORE}::test_power_negative_exponent",),
        pass_to_pass=(
            f"{_CORE}::test_add", f"{_CORE}::test_mul", f"{_CORE}::test_div",
            f"{_CORE}::test_div_by_zero", f"{_CORE}::test_mul_negative",
            f"{_CORE}::test_add_floats",
        ),
        linked_issues=((REPO_NAME, 6),),
        code_files=("src/calc/core.py",), test_files=(_CORE,),
    ),
    DemoPR(
        20, "Load values from binary files", "squash",
        ("binary test fixture read by the test", "new test file"),
        fail_to_pass=("tests/test_io.py::test_load_values", "tests/test_io.py::test_bad_magic"),
        code_files=("src/calc/io.py",), test_files=("tests/data/values.bin", "tests/test_io.py"),
        binary_patch=True,
    ),
    DemoPR(
        21, "Format Kelvin without a degree sign", "merge",
        ("non-UTF-8 (latin-1) source file: carried as a git binary patch",),
        fail_to_pass=("tests/test_units.py::test_kelvin_has_no_degree_sign",),
        pass_to_pass=("tests/test_units.py::test_celsius_to_fahrenheit",
                      "tests/test_units.py::test_celsius_format"),
        code_files=("src/calc/units.py",), test_files=("tests/test_units.py",),
        binary_patch=True,
    ),
    DemoPR(
        22, "Support the modulo operator", "squash",
        ("tests still fail with the fix (operator never tokenized)",),
        validate=Reason.FAILS_AFTER,
        code_files=("src/calc/parse.py",), test_files=("tests/test_modulo.py",),
    ),
    DemoPR(
        23, "Make unary minus bind looser than power", "merge",
        ("bug fix closing two issues", "plus an issue in another repository"),
        fail_to_pass=(f"{_PARSE}::test_unary_minus_binds_looser_than_power",),
        pass_to_pass=(
            f"{_PARSE}::test_tokenize_numbers", f"{_PARSE}::test_precedence",
            f"{_PARSE}::test_parentheses", f"{_PARSE}::TestErrors::test_unknown_character",
            f"{_PARSE}::TestErrors::test_missing_paren",
            f"{_PARSE}::test_tokenize_tabs_and_newlines",
        ),
        linked_issues=((REPO_NAME, 7), (REPO_NAME, 8), ("other-org/mathlib", 2)),
        code_files=("src/calc/parse.py",), test_files=(_PARSE,),
    ),
    DemoPR(
        24, "Fix argument order of sub()", "squash",
        ("ONE-parent commit titled 'Merge pull request #24 from …' (rebase-merged)",),
        fail_to_pass=(f"{_CORE}::test_sub_order",),
        pass_to_pass=(
            f"{_CORE}::test_add", f"{_CORE}::test_mul", f"{_CORE}::test_div",
            f"{_CORE}::test_div_by_zero", f"{_CORE}::test_mul_negative",
            f"{_CORE}::test_add_floats", f"{_CORE}::test_power_negative_exponent",
        ),
        code_files=("src/calc/core.py",), test_files=(_CORE,),
    ),
    DemoPR(
        25, "Fix mean of an empty list", "merge",
        ("TWO-parent merge titled '… (#25)'", "re-runs the flaky test of #18"),
        fail_to_pass=(f"{_STATS}::test_mean_empty_raises",),
        pass_to_pass=(f"{_STATS}::test_mean", f"{_STATS}::test_median_odd",
                      f"{_STATS}::test_median_even", f"{_STATS}::test_median_unsorted"),
        flaky=(f"{_STATS}::test_median_random_sample",),
        code_files=("src/calc/stats.py",), test_files=(_STATS,),
    ),
)  # fmt: skip

DEMO_PRS_BY_NUMBER: dict[int, DemoPR] = {p.number: p for p in DEMO_PRS}
