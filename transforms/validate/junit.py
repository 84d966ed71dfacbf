"""pytest JUnit XML -> ``{node id: TestStatus}``, the only way validation reads test results.

Deliberate choices:
- Results come from the XML file pytest writes (``--junit-xml``), never from terminal text that
  tests can interleave with their own prints.
- Node ids are rebuilt as pytest prints them (``tests/test_x.py::TestC::test_m[a-1]``). JUnit
  stores ``classname`` (the node id's path dotted, ``.py`` dropped, classes appended) and
  ``name`` (the last part, parameters included). The path is recovered from the xunit1 ``file``
  attribute when it matches, else from the test files we asked pytest to run, else by undoing
  the dotting; parameters are never split, so ``[x::y.z]`` survives.
- A collection error is keyed by its module's node id (the file path, no ``::``) with status
  ``error``: grading tells "this module did not import" from "this test failed" by the key alone,
  and the record needs no extra field.
- A node id reported twice (a failing test whose teardown also errors) keeps the status that
  says most about the test body: failed > error > skipped > passed.
- xfail is ``skipped`` (it did not pass); a non-strict xpass is ``passed``, as pytest reports it.
- ``PARSER`` is recorded on every Task so results can be re-derived when this parser changes.
"""

from __future__ import annotations

import contextlib
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass, field

from smelter.schemas.records import TestStatus

PARSER = "junit_v1"

_RANK = {
    TestStatus.PASSED: 0,
    TestStatus.SKIPPED: 1,
    TestStatus.ERROR: 2,
    TestStatus.FAILED: 3,
}


class JUnitError(ValueError):
    """The report is not a pytest JUnit XML document (truncated, empty, or something else)."""


@dataclass(frozen=True)
class JUnitReport:
    """What one pytest run reported."""

    statuses: dict[str, TestStatus]
    collection_errors: tuple[str, ...] = ()
    seconds: float = 0.0
    messages: dict[str, str] = field(default_factory=dict)

    @property
    def tests(self) -> dict[str, TestStatus]:
        """Only real tests (module-level collection errors left out)."""
        return {k: v for k, v in self.statuses.items() if is_test_id(k)}


def is_test_id(node_id: str) -> bool:
    """A test's node id has ``::``; a bare path is a module (a collection error)."""
    return "::" in node_id


def _dotted(path: str) -> str:
    return path[:-3].replace("/", ".") if path.endswith(".py") else path.replace("/", ".")


def module_path(dotted: str, file_attr: str | None, known_files: Iterable[str]) -> tuple[str, str]:
    """Split a JUnit classname into (module path, rest) where rest is ``Class.Inner`` or "".

    Tries the xunit1 ``file`` attribute, then the files we ran (longest match first), then
    undoes the dotting of the first part that is not a class (a capitalised name).
    """
    candidates = [file_attr] if file_attr else []
    candidates += sorted(known_files, key=len, reverse=True)
    for path in candidates:
        if not path:
            continue
        d = _dotted(path)
        if dotted == d:
            return path, ""
        if dotted.startswith(d + "."):
            return path, dotted[len(d) + 1 :]
    # Fallback: pytest class names start with "Test" by default; module parts rarely do.
    parts = dotted.split(".")
    cut = next((i for i, p in enumerate(parts) if i > 0 and p[:1].isupper()), len(parts))
    return "/".join(parts[:cut]) + ".py", ".".join(parts[cut:])


def node_id(classname: str, name: str, file_attr: str | None, known_files: Iterable[str]) -> str:
    """The pytest node id of one ``<testcase>``."""
    path, classes = module_path(classname, file_attr, known_files)
    parts = [path, *filter(None, classes.split("."))] if classes else [path]
    return "::".join([*parts, name])


def _status(case: ET.Element) -> tuple[TestStatus, str]:
    for tag, status in (("failure", TestStatus.FAILED), ("error", TestStatus.ERROR)):
        el = case.find(tag)
        if el is not None:
            return status, el.get("message", "")
    el = case.find("skipped")
    if el is not None:
        return TestStatus.SKIPPED, el.get("message", "")
    return TestStatus.PASSED, ""


def parse_junit(xml: str | bytes, known_files: Iterable[str] = ()) -> JUnitReport:
    """Parse one pytest JUnit XML report; ``known_files`` are the test files passed to pytest."""
    known = list(known_files)
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as e:
        raise JUnitError(f"unreadable JUnit XML: {e}") from None
    if root.tag not in ("testsuites", "testsuite"):
        raise JUnitError(f"not a JUnit report: root element <{root.tag}>")
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    statuses: dict[str, TestStatus] = {}
    messages: dict[str, str] = {}
    collection_errors: list[str] = []
    seconds = 0.0
    for suite in suites:
        with contextlib.suppress(ValueError):  # a missing or odd time is not worth a failure
            seconds += float(suite.get("time", "0") or 0)
        for case in suite.iter("testcase"):
            classname, name = case.get("classname", ""), case.get("name", "")
            status, message = _status(case)
            if not classname:
                # A collection error: pytest puts the module's dotted path in ``name``.
                nid = case.get("file") or module_path(name, None, known)[0]
                if status in (TestStatus.ERROR, TestStatus.FAILED):
                    status = TestStatus.ERROR
                    collection_errors.append(nid)
            else:
                nid = node_id(classname, name, case.get("file"), known)
            old = statuses.get(nid)
            if old is None or _RANK[status] > _RANK[old]:
                statuses[nid] = status
                if message:
                    messages[nid] = message[:500]
    return JUnitReport(
        statuses=statuses,
        collection_errors=tuple(dict.fromkeys(collection_errors)),
        seconds=seconds,
        messages=messages,
    )
