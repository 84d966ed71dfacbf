"""The pure parts of the real-repository bench: the first-error-line classifier that groups
environment rejects into causes, and the PR windows that make the oldest-first miner run the
newest N PRs."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.benchmarks.bench_real_repos import (
    CORPUS,
    find_mirror,
    first_error_line,
    load_corpus,
    pick_window,
    windows_for,
)

SUMMARY = "\n-- editable on Python 3.11 failed; tried 3.11/editable: build_failed"


@pytest.mark.parametrize(
    ("detail", "expected"),
    [
        (
            "Resolved 3 packages\n  × No solution found when resolving dependencies:\n"
            "  ╰─▶ Because foo>=2 was not found",
            "× No solution found when resolving dependencies:",
        ),
        (
            "#9 4.213 Collecting x\n#9 5.001 error: subprocess-exited-with-error\n"
            "#9 5.002 ERROR: Failed building wheel",
            "error: subprocess-exited-with-error",
        ),
        (
            'ok line\nTraceback (most recent call last):\n  File "x.py", line 1\n'
            "    import foo\nModuleNotFoundError: No module named 'foo'\n",
            "ModuleNotFoundError: No module named 'foo'",
        ),
        (
            "collected 0 items / 1 error\nERROR collecting tests/test_a.py",
            "collected 0 items / 1 error\nERROR collecting tests/test_a.py".splitlines()[1],
        ),
        (
            "LookupError: setuptools-scm was unable to detect version for /testbed.",
            "LookupError: setuptools-scm was unable to detect version for /testbed.",
        ),
        (
            "fatal: detected dubious ownership in repository",
            "fatal: detected dubious ownership in repository",
        ),
        ("\x1b[31mERROR: No matching distribution\x1b[0m", "ERROR: No matching distribution"),
        ("Step 5/9 : RUN make\nall good" + SUMMARY, ""),  # the summary line is not the cause
        ("", ""),
    ],
)
def test_first_error_line(detail: str, expected: str) -> None:
    assert first_error_line(detail + SUMMARY) == expected


def test_chained_traceback_gives_the_exception_raised_last() -> None:
    """Regression: benjaminp__six-356 (old pytest on 3.11) was classified as 'first error:',
    the heading the environment stage puts above the log, and then as the chain's first
    KeyError instead of the AttributeError that ended collection."""
    detail = (
        'first error:\nTraceback (most recent call last):\n  File "a.py", line 1, in f\n'
        "    x = m[name]\n        ~~~^^^^\nKeyError: '__spec__'\n"
        "During handling of the above exception, another exception occurred:\n...\n"
        '… File "b.py", line 54, in <module>\n    class Code:\n'
        "AttributeError: __spec__\n\nnext log line\nERROR: later"
    )
    assert first_error_line(detail + SUMMARY) == "AttributeError: __spec__"


def test_first_error_line_ignores_test_names_with_error_in_them() -> None:
    detail = "tests/test_errors.py::test_a PASSED\nerror_handler.py built\nImportError: x"
    assert first_error_line(detail) == "ImportError: x"


def test_first_error_line_is_capped() -> None:
    assert len(first_error_line("error: " + "x" * 500)) == 200


PRS = [(1, "2017-06-01T00:00:00Z"), (2, "2019-03-01T00:00:00Z"), (3, "2020-01-01T00:00:00Z"),
       (5, "2024-01-01T00:00:00Z"), (4, "2023-01-01T00:00:00Z")]  # fmt: skip


def test_window_holds_the_newest_n_not_the_first_n_in_history() -> None:
    w = pick_window(PRS, 2, "new")
    assert w is not None
    assert (w.since, w.until, w.numbers) == ("2023-01-01T00:00:00Z", None, (4, 5))


def test_old_window_stays_in_2018_2021() -> None:
    new, old = windows_for(PRS, 2, 1)
    assert new.numbers == (4, 5)
    assert (old.label, old.until, old.numbers) == ("old", "2022-01-01T00:00:00Z", (3,))


def test_old_window_ends_where_the_new_one_starts() -> None:
    new, old = windows_for(PRS, 3, 1)
    assert new.numbers == (3, 4, 5)
    assert old.until == new.since and old.numbers == (2,)  # disjoint: no PR runs twice


def test_no_window_without_prs() -> None:
    assert pick_window(PRS, 0, "new") is None
    assert (
        pick_window(PRS, 3, "old", since="2018-01-01T00:00:00Z", until="2019-01-01T00:00:00Z")
        is None
    )
    assert windows_for([], 3, 1) == []


def test_missing_mirror_is_none_and_fetch_layout_is_found(tmp_path: Path) -> None:
    assert find_mirror(tmp_path, "a/b") is None
    bare = tmp_path / "a+b" / "repo"
    (bare / "objects").mkdir(parents=True)
    (bare / "HEAD").write_text("ref: refs/heads/main\n")
    assert find_mirror(tmp_path, "a/b") == bare


def test_corpus_lists_enough_distinct_repos() -> None:
    names = [e.name for e in load_corpus(CORPUS)]
    assert len(names) >= 15 and len(set(names)) == len(names)
    assert all(e.backend and e.layout for e in load_corpus(CORPUS))


def test_the_cause_named_by_the_environment_stage_wins() -> None:
    detail = (
        "first error:\nerror: Failed to build `x @ file:///testbed`\n  cause: backend\n"
        "... ModuleNotFoundError: No module named 'editables'\n...\ntail\n"
    )
    assert first_error_line(detail + SUMMARY) == "ModuleNotFoundError: No module named 'editables'"
