"""Which Python to build a pull request's environment with, and in which order to fall back.

Pure: no Docker, no network; ``python_candidates`` is unit-tested directly and the environment
stage walks its list (first = best guess, the rest = fallbacks when an env build fails).

The rules, and why:

1. ``requires-python`` filters hard. It is the one statement the packaging tools enforce
   (pip/uv refuse to install a project on a Python it excludes), so an excluded interpreter can
   only fail. An unparseable specifier filters nothing (``project.allows``): the build decides.
2. Among the allowed versions, a version the project *names* (trove classifiers, tox envlist, CI
   matrix, ``.python-version``; ``project.python_hints``) that was already released at the PR date
   comes first, newest such one. Naming is the project's claim that its tests ran there; the date
   check drops names of pre-releases a CI matrix tried early (``3.14-dev`` in a mid-2025 workflow),
   whose dependencies, resolved as of the PR date, would have no wheels for them.
3. Otherwise the newest version released at least ``ADOPTION_LAG`` before the PR date. The
   dependencies are resolved as of the PR date (``uv --exclude-newer``); a CPython release gets
   wheels for compiled dependencies over the following weeks to months, so a version released
   days before the PR would send every such dependency to a source build. A project whose named
   versions all predate what is available (``3.6``-``3.8`` in a 2023 ``setup.py``) gets the
   oldest such released version not older than its newest named one: its ceiling is evidence, and
   each newer CPython removes something old code uses (``distutils`` in 3.12, ``imp`` in 3.12,
   ``asyncio.coroutine`` in 3.11).
4. When nothing available was released by the PR date (a 2019 PR, bases 3.9+), the *oldest*
   allowed version: it is the nearest to what the project ran on, and the least that old code
   can have lost. This is why a 2019 ``setup.py``-only project gets 3.9.
5. Fallbacks: every other allowed version, nearest first. Versions released at the PR date go
   before later ones (their dependencies had wheels for them), then by distance in minor numbers,
   then older before newer at equal distance (old code breaks on removals more often than on
   missing syntax).

No allowed version gives an empty list: the caller rejects the record rather than guessing.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence

from smelter.transforms.environment import project as pj

PYVERSION_VERSION = "pyversion_v1"  # bump when the choice changes (recorded with environments)

# CPython X.Y.0 final release dates (python.org release pages, PEP 494/537/569/596/619/664/693/
# 719/745). 3.15 is PEP 790's scheduled date. A version not listed is estimated by PEP 602.
PYTHON_RELEASES: dict[str, dt.date] = {
    "3.6": dt.date(2016, 12, 23),
    "3.7": dt.date(2018, 6, 27),
    "3.8": dt.date(2019, 10, 14),
    "3.9": dt.date(2020, 10, 5),
    "3.10": dt.date(2021, 10, 4),
    "3.11": dt.date(2022, 10, 24),
    "3.12": dt.date(2023, 10, 2),
    "3.13": dt.date(2024, 10, 7),
    "3.14": dt.date(2025, 10, 7),
    "3.15": dt.date(2026, 10, 1),
}
# How long after a CPython release its wheels are common enough to pick it unprompted (rule 3).
ADOPTION_LAG = dt.timedelta(days=90)


def vkey(version: str) -> tuple[int, ...]:
    """``"3.10"`` -> ``(3, 10)``: versions sort numerically, never as strings."""
    return tuple(int(p) for p in version.split(".") if p.isdigit())


def release_date(version: str) -> dt.date:
    """Final release date of CPython ``X.Y``; unlisted 3.x estimated by PEP 602 (each October,
    3.9 in 2020), so a new suite's interpreter needs no code change to be chosen."""
    if version in PYTHON_RELEASES:
        return PYTHON_RELEASES[version]
    major, minor = (*vkey(version), 0, 0)[:2]
    if major == 3 and minor >= 9:
        return dt.date(2011 + minor, 10, 1)
    return dt.date.min if (major, minor) < (3, 6) else dt.date.max


def as_date(value: dt.date | str | None) -> dt.date | None:
    """A PR timestamp as a date: ISO 8601 strings (``Z`` suffix included), datetimes, dates."""
    if value is None:
        return None
    if isinstance(value, dt.datetime):  # before date: a datetime is a date too
        return value.date()
    if isinstance(value, dt.date):
        return value
    text = value.strip()
    if not text:
        return None
    if m := re.match(r"(\d{4})-(\d{2})-(\d{2})", text):
        return dt.date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
    raise ValueError(f"not an ISO 8601 date: {value!r}")


def python_candidates(
    files: Mapping[str, str],
    available: Sequence[str],
    pr_date: dt.date | str | None,
    lag: dt.timedelta = ADOPTION_LAG,
) -> list[str]:
    """Versions of ``available`` to try for this snapshot, best guess first (see module doc).

    ``files`` are the project's metadata files at ``base_commit`` (``recipe.wanted`` paths);
    ``pr_date`` is the PR's creation time; None means "now" (every version counts as released).
    """
    project = pj.project_metadata(files)
    allowed = sorted({v for v in available if pj.allows(project.requires_python, v)}, key=vkey)
    if not allowed:
        return []
    when = as_date(pr_date)
    released = [v for v in allowed if when is None or release_date(v) <= when]
    adopted = [v for v in released if when is None or release_date(v) + lag <= when]
    hints = pj.python_hints(files)
    named = [v for v in released if v in hints]
    if named:
        first = named[-1]
    elif adopted or released:
        pool = adopted or released
        ceiling = vkey(hints[-1]) if hints else None
        above = [v for v in pool if ceiling is not None and vkey(v) >= ceiling]
        first = above[0] if above else pool[-1]
    else:
        first = allowed[0]
    return [first, *fallback_order(first, [v for v in allowed if v != first], released)]


def fallback_order(first: str, others: Sequence[str], released: Sequence[str]) -> list[str]:
    """``others`` ordered for trying after ``first`` (rule 5 of the module docstring)."""
    minor = vkey(first)[1] if len(vkey(first)) > 1 else 0

    def key(v: str) -> tuple[bool, int, bool]:
        m = vkey(v)[1] if len(vkey(v)) > 1 else 0
        return (v not in released, abs(m - minor), m > minor)

    return sorted(others, key=key)
