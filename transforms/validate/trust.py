"""The trust boundary for test results: what the code under test can no longer forge, and the
cross-check that voids a run whose result signals disagree.

Threat: the code that runs in a test container (the PR's tests and ``conftest.py``, later an
agent's candidate patch) wants a failing run to count as passing on the after side only. The
known forgeries were: rewriting the JUnit report at exit and exiting 0 (the result directory was
0777 and written by the process under test); a hook that flips outcomes once it learns it runs
on the after side; a test that asserts on that side. Deliberate choices:

- **The side is never shown to the test user.** The root part of the test script reads it from
  a file in ``/smelter`` (mode 0700, root's), deletes it, applies the patches as the test user
  through stdin and only then starts pytest. PID 1's argv, every process's argv and environment,
  every readable file and mount are the same on both sides; the before side checks the fix
  with ``git apply --check`` where the after side applies it, so both start the same processes,
  and a random number of throwaway processes before pytest makes PIDs useless as a clue. What
  still differs is the source tree itself: that is the fix, and a test that inspects it is a
  test of the fix (a weak one, not a forgery).
- **The report is collected by a process the test does not control.** pytest writes its JUnit
  XML to ``/dev/fd/3``: a FIFO in the root-only directory whose reader is root's ``cat``. The
  test user may reopen that FIFO through its own fd (mode 0622: the only way pytest's
  ``open(path)`` works) but cannot read it, reach it by path, or touch the file root writes. It
  can only add bytes after pytest's document, which makes the report unreadable
  (``junk after document element``): a mismatch. After pytest exits, root kills every process
  of the test user before it collects anything, so nothing writes afterwards.
- **Three more signals, cross-checked against the report** (``cross_check``): a witness plugin
  (``-p _smelter_witness`` from a root-owned directory) streams each test's outcome and
  pytest's final exit status to fd 4, a second root-read FIFO; the exit code the engine sees;
  and pytest's terminal summary line ("1 failed, 2 passed in 0.1s") in the container log, the
  last one before the root wrapper's own end line. Any disagreement voids the run:
  ``Reason.RESULT_MISMATCH``, never a task.

What in-process code can still do, honestly: a ``conftest.py``, a plugin, or the code under test
runs inside the pytest process and can monkeypatch anything in it, including the JUnit writer,
the terminal reporter and the witness (or shadow ``_smelter_witness`` from the tree, which comes
first on ``sys.path`` under ``python -m pytest``), and it can write to fds 3 and 4. A forger who
rewrites all four signals consistently is not caught here; what it can no longer do is know the
side (so flipping outcomes flips them on both sides, and a flipped test is not FAIL_TO_PASS)
or rewrite a report after pytest wrote it. Tests run as root (``validate_drop_privileges``
off, or a source tree owned by root) can read and write everything; only the cross-check holds
then. The instance image itself is trusted: a PR whose build step tampered with it as root is
out of this module's reach.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field

from smelter.schemas.records import TestStatus

WITNESS_MODULE = "_smelter_witness"
REPORT_FD, WITNESS_FD = 3, 4
END_LINE = "smelter: pytest exited with "  # printed by root after the test user's processes died
PYTEST_EXIT_CODES = (0, 1, 2, 5)  # the codes grading can accept as results (run_problem)

# Runs in the image's Python (3.6+ syntax, any pytest >= 3): nothing newer.
WITNESS_SOURCE = f'''"""smelter's witness: each report's outcome and pytest's exit status,
one JSON line each, to fd {WITNESS_FD} (a FIFO only root reads): a second record next to the
JUnit XML."""
import json
import os
import stat

import pytest

_FD = {WITNESS_FD}
_state = {{"ok": False, "session": None}}


def _write(obj):
    if not _state["ok"]:
        return
    data = (json.dumps(obj) + "\\n").encode("utf-8")
    try:
        while data:
            data = data[os.write(_FD, data):]
    except OSError:
        _state["ok"] = False


def pytest_configure(config):
    if hasattr(config, "workerinput"):  # an xdist worker: the controller reports its tests
        return
    try:
        _state["ok"] = stat.S_ISFIFO(os.fstat(_FD).st_mode)
    except OSError:
        _state["ok"] = False
    _write({{"start": os.getpid()}})


def pytest_sessionstart(session):
    _state["session"] = session


def pytest_collectreport(report):
    if report.outcome in ("failed", "skipped"):
        _write({{"id": report.nodeid, "when": "collect", "outcome": report.outcome}})


def pytest_runtest_logreport(report):
    _write({{"id": report.nodeid, "when": report.when, "outcome": report.outcome}})


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    session = _state["session"]
    if session is not None:
        _write({{"end": int(session.exitstatus)}})
'''

_RANK = {TestStatus.PASSED: 0, TestStatus.SKIPPED: 1, TestStatus.ERROR: 2, TestStatus.FAILED: 3}


@dataclass(frozen=True)
class Witness:
    """What the witness plugin streamed: per-test statuses (ranked as ``junit.py`` ranks them),
    how many times a pytest session started, its exit status, and lines that were not its own."""

    statuses: dict[str, TestStatus] = field(default_factory=dict)
    starts: int = 0
    end: int | None = None
    foreign_lines: int = 0


def _phase_status(when: str, outcome: str) -> TestStatus | None:
    """One report's contribution, mirroring pytest's JUnit writer: a failure outside the test
    body (setup, teardown, collection) is an error; only the call phase can pass."""
    if outcome == "failed":
        return TestStatus.FAILED if when == "call" else TestStatus.ERROR
    if outcome == "skipped":
        return TestStatus.SKIPPED
    if outcome == "passed" and when == "call":
        return TestStatus.PASSED
    return None  # setup/teardown passed, reruns: nothing to say about the test


def parse_witness(raw: bytes) -> Witness:
    """The witness stream -> ``Witness``; a line that is not one of its records is counted."""
    statuses: dict[str, TestStatus] = {}
    starts, end, foreign = 0, None, 0
    for line in raw.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            foreign += 1
            continue
        if not isinstance(rec, dict):
            foreign += 1
        elif "start" in rec:
            starts += 1
        elif "end" in rec and isinstance(rec["end"], int):
            end = rec["end"]
        elif isinstance(rec.get("id"), str) and isinstance(rec.get("outcome"), str):
            status = _phase_status(str(rec.get("when", "")), rec["outcome"])
            old = statuses.get(rec["id"])
            if status is not None and (old is None or _RANK[status] > _RANK[old]):
                statuses[rec["id"]] = status
        else:
            foreign += 1
    return Witness(statuses, starts, end, foreign)


def has_trailing_content(xml: bytes) -> bool:
    """Whether bytes follow the report's root element: pytest writes one document, so a second
    one (or anything else) was written by someone else through the same pipe."""
    try:
        ET.fromstring(xml)
    except ET.ParseError as e:
        return e.code == 9  # expat's XML_ERROR_JUNK_AFTER_DOC_ELEMENT
    return False


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_SUMMARY = re.compile(
    r"^=*\s*(?P<body>.+?) in \d+(?:\.\d+)?\s?(?:s|seconds)(?: \([0-9:.]+\))?\s*=*$"
)
_ITEM = re.compile(r"^(?P<n>\d+) (?P<what>[a-z][a-z ]*)$")
_PLURAL = {"errors": "error", "warnings": "warning"}


def summary_counts(log: str) -> dict[str, int] | None:
    """pytest's last terminal summary line before the root wrapper's end line, as counts
    (``{"failed": 1, "passed": 2}``); None when there is none (``-qq``, a truncated log)."""
    cut = log.rfind(END_LINE)
    lines = (log[:cut] if cut >= 0 else log).splitlines()
    for line in reversed(lines):
        m = _SUMMARY.match(_ANSI.sub("", line).strip())
        if not m:
            continue
        body = m.group("body").strip()
        if body == "no tests ran":
            return {}
        counts: dict[str, int] = {}
        items = [_ITEM.match(part.strip()) for part in body.split(",")]
        if not all(items):
            continue  # a line that only looks like it (a test's own print)
        for item in items:
            assert item is not None
            what = _PLURAL.get(item.group("what"), item.group("what"))
            counts[what] = counts.get(what, 0) + int(item.group("n"))
        return counts
    return None


def _passed(statuses: Mapping[str, TestStatus]) -> set[str]:
    return {k for k, v in statuses.items() if v is TestStatus.PASSED}


def cross_check(
    exit_code: int | None,
    report: bytes | None,
    junit: Mapping[str, TestStatus] | None,
    witness: Witness,
    log: str,
) -> str:
    """Why the result signals of one run disagree ("" when they agree or there is no result).

    ``junit`` is the parsed report (None when it did not parse). Only runs that ended with a
    code grading could accept are checked: a killed or crashed run is void anyway
    (``grading.run_problem``). Checks only what decides grading, pass or not pass, so that a
    failure reported as an error by one signal and a failure by another never voids a real run:
    the report and the witness list the same number of passed tests and agree on every test
    both name; pytest's own exit status (witness) is the exit code the engine saw; the summary
    line claims no fewer passes than the report and no failure under exit code 0.
    """
    if exit_code not in PYTEST_EXIT_CODES:
        return ""
    problems: list[str] = []
    if report is not None and has_trailing_content(report):
        problems.append("something wrote after pytest's JUnit report on its pipe")
    if witness.starts == 0:
        problems.append("the witness plugin saw no pytest session")
    elif witness.end is None:
        problems.append("the witness saw no end of the pytest session")
    elif witness.end != exit_code:
        problems.append(f"pytest's session ended with {witness.end}, the process with {exit_code}")
    if witness.starts > 1 or witness.foreign_lines:
        problems.append(
            f"the witness stream holds {witness.starts} session starts and "
            f"{witness.foreign_lines} foreign lines"
        )
    if junit is not None and witness.starts:
        in_report, seen = _passed(junit), _passed(witness.statuses)
        flipped = sorted(
            k for k in junit.keys() & witness.statuses.keys() if (k in in_report) != (k in seen)
        )
        if len(in_report) != len(seen) or flipped:
            example = f", e.g. {flipped[0]}" if flipped else ""
            problems.append(
                f"the report has {len(in_report)} passed, the witness {len(seen)}{example}"
            )
    summary = summary_counts(log)
    if summary is not None:
        claimed = summary.get("passed", 0) + summary.get("xpassed", 0)
        bad = summary.get("failed", 0) + summary.get("error", 0)
        if junit is not None and len(_passed(junit)) > claimed:
            problems.append(
                f"the report has {len(_passed(junit))} passed, pytest's summary {claimed}"
            )
        if bad and exit_code == 0:
            problems.append(f"pytest's summary has {bad} failed or errors, the exit code is 0")
    return "; ".join(problems)
