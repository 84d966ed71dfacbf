"""Python version choice per PR: metadata at base_commit + the PR date (pure)."""

from __future__ import annotations

import datetime as dt

import pytest

from smelter.transforms.environment import pyversion as pv

DEBIAN = ["3.9", "3.11", "3.13", "3.14"]  # bullseye, bookworm, trixie, forky

SETUP_PY_ONLY = {"setup.py": "from setuptools import setup\nsetup(name='old', packages=['old'])\n"}


def pyproject(requires: str | None = None, classifiers: tuple[str, ...] = ()) -> dict[str, str]:
    lines = ["[project]", 'name = "p"', 'version = "1"']
    if requires:
        lines.append(f'requires-python = "{requires}"')
    if classifiers:
        items = ", ".join(f'"Programming Language :: Python :: {v}"' for v in classifiers)
        lines.append(f"classifiers = [{items}]")
    return {"pyproject.toml": "\n".join(lines) + "\n"}


def test_old_setup_py_project_in_2019_gets_3_9_then_newer_ones() -> None:
    assert pv.python_candidates(SETUP_PY_ONLY, DEBIAN, "2019-05-02T10:00:00Z") == [
        "3.9", "3.11", "3.13", "3.14",
    ]  # fmt: skip


def test_requires_python_at_least_3_12_gets_3_13() -> None:
    files = pyproject(">=3.12")
    assert pv.python_candidates(files, DEBIAN, "2024-03-01") == ["3.13", "3.14"]
    assert pv.python_candidates(files, DEBIAN, "2025-06-01")[0] == "3.13"


def test_2025_project_naming_3_9_to_3_13_gets_3_13() -> None:
    files = pyproject(">=3.9", ("3.9", "3.10", "3.11", "3.12", "3.13"))
    assert pv.python_candidates(files, DEBIAN, "2025-04-10") == ["3.13", "3.11", "3.9", "3.14"]


def test_nothing_allowed_is_an_empty_list() -> None:
    assert pv.python_candidates(pyproject("<3.8"), DEBIAN, "2019-01-01") == []
    assert pv.python_candidates(pyproject(">=3.15"), DEBIAN, None) == []
    assert pv.python_candidates(SETUP_PY_ONLY, [], "2020-01-01") == []


def test_requires_python_filters_hard_even_against_named_versions() -> None:
    files = pyproject(">=3.10,<3.13", ("3.9", "3.10", "3.11", "3.12", "3.13"))
    assert pv.python_candidates(files, DEBIAN, "2025-01-01") == ["3.11"]


def test_without_metadata_the_newest_adopted_at_pr_date_wins() -> None:
    # 3.11 was released 2022-10-24: a PR in mid-2023 gets it, not trixie's 3.13.
    assert pv.python_candidates(SETUP_PY_ONLY, DEBIAN, "2023-06-15") == [
        "3.11", "3.9", "3.13", "3.14",
    ]  # fmt: skip
    # 2021: only 3.9 was out.
    assert pv.python_candidates(SETUP_PY_ONLY, DEBIAN, "2021-08-01")[0] == "3.9"
    # No date: everything counts as released, so the newest.
    assert pv.python_candidates(SETUP_PY_ONLY, DEBIAN, None)[0] == "3.14"


def test_a_version_released_days_before_the_pr_is_not_picked_unprompted() -> None:
    # 3.13.0 came out 2024-10-07; deps resolved at 2024-10-20 mostly lack 3.13 wheels.
    assert pv.python_candidates(SETUP_PY_ONLY, DEBIAN, "2024-10-20")[0] == "3.11"
    assert pv.python_candidates(SETUP_PY_ONLY, DEBIAN, "2025-02-01")[0] == "3.13"
    # ... but a project that names it right away gets it: its CI ran there.
    assert pv.python_candidates(pyproject(None, ("3.12", "3.13")), DEBIAN, "2024-10-20")[0] == (
        "3.13"
    )
    assert pv.python_candidates(SETUP_PY_ONLY, DEBIAN, "2024-10-20", lag=dt.timedelta(0))[0] == (
        "3.13"
    )


def test_named_prereleases_in_a_ci_matrix_are_not_chosen() -> None:
    workflow = (
        "jobs:\n  test:\n    strategy:\n      matrix:\n"
        '        python-version: ["3.11", "3.12", "3.13", "3.14-dev"]\n'
    )
    files = {**pyproject(">=3.11"), ".github/workflows/ci.yml": workflow}
    # 3.14 final is 2025-10-07: in July 2025 it is a pre-release.
    assert pv.python_candidates(files, DEBIAN, "2025-07-01") == ["3.13", "3.11", "3.14"]
    assert pv.python_candidates(files, DEBIAN, "2025-12-01")[0] == "3.14"


def test_an_old_ceiling_picks_the_nearest_newer_interpreter() -> None:
    # A 2023 project that still says 3.6-3.8: 3.9 (nearest to its ceiling), not 3.11.
    files = pyproject(None, ("3.6", "3.7", "3.8"))
    assert pv.python_candidates(files, DEBIAN, "2023-06-01") == ["3.9", "3.11", "3.13", "3.14"]


def test_tox_envlist_and_python_version_file_are_hints() -> None:
    tox = {**SETUP_PY_ONLY, "tox.ini": "[tox]\nenvlist = py37, py38, py39\n"}
    assert pv.python_candidates(tox, DEBIAN, "2023-01-01")[0] == "3.9"
    pinned = {**SETUP_PY_ONLY, ".python-version": "3.11.4\n"}
    assert pv.python_candidates(pinned, DEBIAN, "2025-06-01")[0] == "3.11"


def test_fallbacks_prefer_released_then_nearest_then_older() -> None:
    files = pyproject(None, ("3.11",))
    assert pv.python_candidates(files, ["3.9", "3.11", "3.13", "3.14"], "2025-12-01") == [
        "3.11", "3.9", "3.13", "3.14",
    ]  # fmt: skip
    # In mid-2024, 3.13 and 3.14 were not out: 3.9 first, then the unreleased by distance.
    assert pv.python_candidates(files, DEBIAN, "2024-06-01") == ["3.11", "3.9", "3.13", "3.14"]
    assert pv.fallback_order("3.11", ["3.14", "3.13", "3.9"], ["3.9", "3.13", "3.14"]) == [
        "3.9", "3.13", "3.14",
    ]  # fmt: skip


def test_available_order_and_duplicates_do_not_matter() -> None:
    a = pv.python_candidates(SETUP_PY_ONLY, ["3.13", "3.9", "3.11", "3.9"], "2023-06-15")
    assert a == ["3.11", "3.9", "3.13"]


def test_poetry_caret_and_unparseable_specifiers() -> None:
    poetry = {
        "pyproject.toml": '[tool.poetry]\nname = "p"\n[tool.poetry.dependencies]\n'
        'python = "^3.10"\n'
    }
    assert pv.python_candidates(poetry, DEBIAN, "2019-01-01") == ["3.11", "3.13", "3.14"]
    assert pv.python_candidates(pyproject("not a specifier"), DEBIAN, "2019-01-01")[0] == "3.9"


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ("3.6", dt.date(2016, 12, 23)),
        ("3.9", dt.date(2020, 10, 5)),
        ("3.11", dt.date(2022, 10, 24)),
        ("3.14", dt.date(2025, 10, 7)),
        ("3.16", dt.date(2027, 10, 1)),  # PEP 602 estimate for an unlisted version
    ],
)
def test_release_dates(version: str, expected: dt.date) -> None:
    assert pv.release_date(version) == expected


def test_release_table_is_ordered_like_the_versions() -> None:
    versions = sorted(pv.PYTHON_RELEASES, key=pv.vkey)
    dates = [pv.PYTHON_RELEASES[v] for v in versions]
    assert dates == sorted(dates) and versions[0] == "3.6" and "3.14" in versions


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2019-05-02T10:00:00Z", dt.date(2019, 5, 2)),
        ("2019-05-02", dt.date(2019, 5, 2)),
        (dt.datetime(2020, 1, 2, 3, 4, tzinfo=dt.UTC), dt.date(2020, 1, 2)),
        (dt.date(2021, 3, 4), dt.date(2021, 3, 4)),
        (None, None),
        ("", None),
    ],
)
def test_as_date(value: dt.date | str | None, expected: dt.date | None) -> None:
    assert pv.as_date(value) == expected


def test_as_date_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="not an ISO 8601 date"):
        pv.as_date("last tuesday")
