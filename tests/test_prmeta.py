"""PR-message parsing: commit classification, titles and bodies, linked issues, ids."""

from __future__ import annotations

import pytest

from smelter.transforms.mine.prmeta import (
    IssueRef,
    classify_commit,
    instance_id,
    linked_issues,
    visible_text,
)


@pytest.mark.parametrize(
    ("subject", "body", "parents", "expected"),
    [
        ("Merge pull request #12 from ada/fix-div", "Fix division\n\nLonger text", 2,
         (12, "merge", "Fix division", "Longer text")),
        ("Merge pull request #12 from ada/fix-div", "", 2, (12, "merge", "fix-div", "")),
        ("Fix division by zero (#13)", "Body here\n\nCo-authored-by: B <b@x>", 1,
         (13, "squash", "Fix division by zero", "Body here")),
        ("Fix division by zero (#14)", "", 2, (14, "merge", "Fix division by zero", "")),
        ("Merge pull request #15 from ada/x", "Rebased title\nbody", 1,
         (15, "squash", "Rebased title", "body")),
        ("Merge branch 'main' into feature", "", 2, None),
        ("Merge pull request #16 from ada/x", "t", 3, None),
        ("Initial commit (#1)", "", 0, None),
        ("Plain commit", "", 1, None),
        ("Bump (#12) in the middle", "", 1, None),
        ("(#9)", "", 1, None),
    ],
)  # fmt: skip
def test_classify_commit(
    subject: str, body: str, parents: int, expected: tuple[int, str, str, str] | None
) -> None:
    got = classify_commit(subject, body, parents)
    if expected is None:
        assert got is None
    else:
        assert got is not None
        assert (got.number, got.style, got.title, got.body) == expected


def test_head_ref_of_merge() -> None:
    got = classify_commit("Merge pull request #3 from ada/feat/x", "T", 2)
    assert got is not None and got.head_ref == "ada/feat/x"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Fixes #12", [IssueRef("o/r", 12, True)]),
        ("fixes: #12", [IssueRef("o/r", 12, True)]),
        ("CLOSES #3 and resolves #4", [IssueRef("o/r", 3, True), IssueRef("o/r", 4, True)]),
        ("Closed other/lib#7", [IssueRef("other/lib", 7, False)]),
        ("resolved O/R#7", [IssueRef("o/r", 7, True)]),
        ("Fixed https://github.com/o/r/issues/21", [IssueRef("o/r", 21, True)]),
        ("fix https://github.com/x/y/issues/2.", [IssueRef("x/y", 2, False)]),
        ("Fixes #1 and #2", [IssueRef("o/r", 1, True)]),
        ("Fixes #1, fixes #1", [IssueRef("o/r", 1, True)]),
        ("Fixes #5 and fixes other/lib#5",
         [IssueRef("o/r", 5, True), IssueRef("other/lib", 5, False)]),
        ("See #12; related to #13", []),
        ("prefixes #12", []),
        ("bugfix #12", []),
        ("Fixes#12", []),
        ("<!-- Fixes #99 -->\nFixes #1", [IssueRef("o/r", 1, True)]),
        ("```\nfixes #8\n```\nclose #9", [IssueRef("o/r", 9, True)]),
        ("fixes https://github.com/o/r/pull/3", []),
        ("Closes #12abc", []),
    ],
)  # fmt: skip
def test_linked_issues(text: str, expected: list[IssueRef]) -> None:
    assert linked_issues(text, "o/r") == expected


def test_visible_text_drops_unterminated_comment() -> None:
    assert visible_text("keep <!-- never closed\nFixes #1") == "keep "


def test_instance_id() -> None:
    assert instance_id("smelter-demo/calc", 7) == "smelter-demo__calc-7"
    assert instance_id("psf/requests", 1234) == "psf__requests-1234"
