"""JUnit parsing: golden files written by real pytest, plus a live run compared with pytest's own
node ids (``--collect-only -q``), so a drift in pytest's XML shows up here."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from smelter.schemas.records import TestStatus
from smelter.transforms.validate.junit import PARSER, JUnitError, node_id, parse_junit

DATA = Path(__file__).parent / "data" / "junit"


@pytest.mark.parametrize("name", ["xunit1_mixed", "xunit2_mixed", "no_tests"])
def test_golden_files(name: str) -> None:
    report = parse_junit((DATA / f"{name}.xml").read_bytes())
    expected = json.loads((DATA / f"{name}.expected.json").read_text())
    assert {k: v.value for k, v in report.statuses.items()} == expected["statuses"]
    assert list(report.collection_errors) == expected["collection_errors"]


def test_statuses_cover_every_outcome_kind() -> None:
    s = parse_junit((DATA / "xunit1_mixed.xml").read_bytes()).statuses
    assert s["tests/test_x.py::test_pass"] is TestStatus.PASSED
    assert s["tests/test_x.py::test_fail"] is TestStatus.FAILED
    assert s["tests/test_x.py::test_skip"] is TestStatus.SKIPPED
    assert s["tests/test_x.py::test_xfail"] is TestStatus.SKIPPED  # did not pass
    assert s["tests/test_x.py::test_xpass"] is TestStatus.PASSED
    assert s["tests/test_x.py::test_xpass_strict"] is TestStatus.FAILED
    assert s["tests/test_x.py::test_setup_error"] is TestStatus.ERROR
    assert s["tests/test_x.py::test_teardown_error"] is TestStatus.ERROR


def test_failure_plus_teardown_error_reported_twice_stays_failed() -> None:
    s = parse_junit((DATA / "xunit1_mixed.xml").read_bytes()).statuses
    assert s["tests/test_x.py::test_fail_and_teardown_error"] is TestStatus.FAILED


def test_parameters_with_separators_are_not_split() -> None:
    s = parse_junit((DATA / "xunit2_mixed.xml").read_bytes()).statuses
    assert s["tests/test_x.py::test_p[1-x::y]"] is TestStatus.PASSED
    assert s["tests/test_x.py::test_p[2-a.b/c]"] is TestStatus.FAILED
    assert "tests/test_x.py::TestCls::TestInner::test_n" in s


def test_collection_error_is_keyed_by_module_path() -> None:
    report = parse_junit((DATA / "xunit1_mixed.xml").read_bytes())
    assert report.collection_errors == ("tests/sub/test_bad.py",)
    assert report.statuses["tests/sub/test_bad.py"] is TestStatus.ERROR
    assert "tests/sub/test_bad.py" not in report.tests


def test_collection_error_without_file_attribute_uses_known_files() -> None:
    xml = (
        '<testsuites><testsuite name="pytest" time="0.1"><testcase classname="" '
        'name="pkg.tests.test_bad"><error message="collection failure">x</error></testcase>'
        "</testsuite></testsuites>"
    )
    report = parse_junit(xml, known_files=["pkg/tests/test_bad.py"])
    assert report.collection_errors == ("pkg/tests/test_bad.py",)


def test_known_files_resolve_dotted_directories() -> None:
    # "a.b/test_c.py" dots to "a.b.test_c": only the known file list can undo that.
    assert node_id("a.b.test_c.TestK", "test_m", None, ["a.b/test_c.py"]) == (
        "a.b/test_c.py::TestK::test_m"
    )


def test_single_testsuite_root_is_accepted() -> None:
    xml = '<testsuite time="1.5"><testcase classname="t.test_a" name="test_z"/></testsuite>'
    report = parse_junit(xml)
    assert report.statuses == {"t/test_a.py::test_z": TestStatus.PASSED}
    assert report.seconds == 1.5


@pytest.mark.parametrize(
    "xml", ["", "<testsuites><testsuite>", "<html><body>502</body></html>", "garbage"]
)
def test_unreadable_reports_raise(xml: str) -> None:
    with pytest.raises(JUnitError):
        parse_junit(xml)


def test_parser_version_is_recorded_name() -> None:
    assert PARSER == "junit_v1"


@pytest.mark.slow  # a real subprocess run: seconds (make unit skips it)
def test_live_pytest_node_ids_match_collect_only(tmp_path: Path) -> None:
    """Real pytest, odd shapes: inherited tests from another module, nested classes,
    parameter ids with dots, slashes and brackets, a package directory with a dot-free name."""
    (tmp_path / "tests" / "deep").mkdir(parents=True)
    (tmp_path / "tests" / "__init__.py").write_text("")
    (tmp_path / "tests" / "deep" / "__init__.py").write_text("")
    (tmp_path / "tests" / "test_base.py").write_text(
        textwrap.dedent(
            """
            class TestBase:
                def test_inherited(self):
                    assert type(self).__name__ != "TestBase"
            """
        )
    )
    (tmp_path / "tests" / "deep" / "test_child.py").write_text(
        textwrap.dedent(
            """
            import pytest
            from tests.test_base import TestBase

            class TestChild(TestBase):
                class TestNested:
                    @pytest.mark.parametrize("v", ["a.b", "c/d", "[e]", "f::g"])
                    def test_v(self, v):
                        assert v != "c/d"

            def test_plain():
                pass
            """
        )
    )
    (tmp_path / "pyproject.toml").write_text("[tool.pytest.ini_options]\n")
    files = ["tests/test_base.py", "tests/deep/test_child.py"]
    common = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--rootdir=.", *files]
    collected = subprocess.run(
        [*common, "--collect-only", "-q"], cwd=tmp_path, capture_output=True, text=True
    ).stdout
    expected_ids = {line for line in collected.splitlines() if "::" in line}
    assert len(expected_ids) == 8  # TestBase is collected again where it is imported
    for family in ("xunit1", "xunit2"):
        out = tmp_path / f"{family}.xml"
        proc = subprocess.run(
            [*common, f"--junit-xml={out}", "-o", f"junit_family={family}"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 1, proc.stdout
        report = parse_junit(out.read_bytes(), known_files=files)
        assert set(report.statuses) == expected_ids, family
        assert report.statuses["tests/deep/test_child.py::TestChild::TestNested::test_v[c/d]"] == (
            TestStatus.FAILED
        )
        assert report.statuses["tests/test_base.py::TestBase::test_inherited"] == (
            TestStatus.FAILED
        )
        assert report.statuses["tests/deep/test_child.py::TestChild::test_inherited"] == (
            TestStatus.PASSED
        )
        # xunit1's file attribute names tests/test_base.py here; the id must not follow it.
        assert report.statuses["tests/deep/test_child.py::TestBase::test_inherited"] == (
            TestStatus.FAILED
        )
