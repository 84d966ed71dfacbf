"""The trust boundary for results (issue 12): hostile pull requests built here, validated on a
real engine, must not become tasks through a forged report, a hook that flips outcomes on the
after side, or a test that asks which side it is on; a legitimate PR still validates. Plus the
cross-check on a real pytest run on the host (the witness and the JUnit report agree on every
outcome kind, and each forgery of one signal is caught), and the exported eval script undoing
a candidate patch's edits to tests and conftest.py, graded by swebench's own grading."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import docker
import pytest

from smelter.schemas.records import Reason, Task, TestStatus
from smelter.transforms.errors import Rejected
from smelter.transforms.validate.config import ValidateConfig
from smelter.transforms.validate.junit import parse_junit
from smelter.transforms.validate.trust import (
    END_LINE,
    WITNESS_FD,
    WITNESS_MODULE,
    WITNESS_SOURCE,
    cross_check,
    parse_witness,
    summary_counts,
)
from smelter.transforms.validate.validate import Validator
from tests.fixtures.validate import (
    BASE_CODE,
    BASE_TESTS,
    FIXED_CODE,
    InstanceFactory,
    candidate_for,
    git,
    make_repo,
    write,
)

CONFIG = ValidateConfig(
    validate_timeout_seconds=120,
    validate_memory="512m",
    validate_parallel_runs=2,
    validate_reruns_before=1,
    validate_reruns_after=1,
    validate_keep_instance_images=True,  # the fixture removes them
)
LEGIT = "tests/test_calc.py::test_add_negative"
BOGUS = "tests/test_calc.py::test_bogus"
# One real fail-to-pass test, and one that fails with the fix too: only a forgery passes it.
PR_TESTS = BASE_TESTS + textwrap.dedent(
    """

    def test_add_negative():
        assert add(2, -3) == -1


    def test_bogus():
        assert add(2, -3) == 999
    """
)

FORGING_CONFTEST = """\
import os

import pytest

MODE = {mode!r}
_IDS = []


def pytest_collection_modifyitems(items):
    _IDS[:] = [item.nodeid for item in items]


def _case(nodeid):
    path, _, rest = nodeid.partition("::")
    parts = rest.split("::")
    classname = ".".join([path[:-3].replace("/", ".")] + parts[:-1])
    return '<testcase classname="%s" name="%s" file="%s" time="0.01"/>' % (
        classname, parts[-1], path)


def _forged():
    return ('<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" '
            'errors="0" failures="0" skipped="0" tests="%d">%s</testsuite></testsuites>'
            % (len(_IDS), "".join(_case(n) for n in _IDS)))


@pytest.hookimpl(trylast=True)
def pytest_configure(config):
    if MODE == "replace":  # pytest's own report goes nowhere; only the forged one is written
        for plugin in config.pluginmanager.get_plugins():
            if type(plugin).__name__ == "LogXML":
                plugin.logfile = os.devnull


def pytest_unconfigure(config):
    # the report pytest was told to write, and where smelter used to keep it (0777, writable)
    for target in (config.option.xmlpath, "/smelter/out/report.xml"):
        try:
            with open(target, "w") as f:
                f.write(_forged())
        except OSError:
            pass
    os._exit(0)
"""

# Every clue the old layout gave away: the environment, argv, /proc, the inbox.
SIDE_CLUES = """\
import glob
import os
import sys


def side_clues():
    clues = [os.environ.get("SMELTER_SIDE", "")] + sys.argv
    paths = glob.glob("/proc/[0-9]*/cmdline") + glob.glob("/proc/[0-9]*/environ")
    for path in paths + glob.glob("/smelter/*") + ["/smelter/side", "/smelter/out/report.xml"]:
        try:
            with open(path, "rb") as f:
                clues += f.read().decode("utf-8", "replace").replace("\\0", " ").split()
        except OSError:
            pass
    return clues


def looks_after():
    return any(c == "after" or c.endswith("=after") for c in side_clues())
"""

FLIPPING_CONFTEST = (
    SIDE_CLUES
    + """

import pytest

AFTER = looks_after()


def pytest_report_header(config):
    return "hostile conftest: after=%s" % AFTER


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if AFTER and report.failed:
        report.outcome = "passed"
        report.longrepr = None
"""
)

SIDE_AWARE_TESTS = (
    PR_TESTS.replace("import os\n", "import os\n" + SIDE_CLUES, 1)
    + '''

def observed():
    """What the test can see, minus what differs per container anyway (host name, attempt)."""
    import hashlib
    import json

    env = sorted(k + "=" + v for k, v in os.environ.items()
                 if k not in ("HOSTNAME", "SMELTER_ATTEMPT"))
    cmdlines = set()
    for path in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            with open(path, "rb") as f:
                cmdlines.add(f.read().decode("utf-8", "replace"))
        except OSError:
            pass
    files = {}
    for path in ("/smelter", "/smelter/side", "/smelter/fix.patch", "/proc/1/environ"):
        try:
            files[path] = sorted(os.listdir(path)) if os.path.isdir(path) else open(path).read()
        except OSError as e:
            files[path] = type(e).__name__
    with open("/proc/self/mountinfo") as f:
        mounts = sorted((line.split()[4], line.split(" - ")[1].split()[0]) for line in f)
    seen = {"env": env, "argv": sys.argv, "cmdlines": sorted(cmdlines), "files": files,
            "mounts": mounts, "uid": os.getuid()}
    digest = hashlib.sha256(json.dumps(seen, sort_keys=True).encode()).hexdigest()
    print("OBSERVED", digest, json.dumps(seen, sort_keys=True))
    return seen


def test_knows_its_side():
    observed()
    assert os.environ.get("SMELTER_SIDE") == "after" or looks_after()
'''
)


def validate(
    tmp_path: Path,
    instance_image: InstanceFactory,
    client: docker.DockerClient,
    pr: dict[str, str],
) -> Task:
    repo, base = make_repo(tmp_path, pr)
    cand = candidate_for(
        repo, base=base, image=instance_image(repo), head="main", test_paths=["tests"],
        code_paths=["calc"],
    )  # fmt: skip
    return Validator(client, CONFIG).validate(cand)


# --------------------------------------------------------------------------- real Docker


@pytest.mark.docker
@pytest.mark.parametrize("mode", ["append", "replace"])
def test_forged_report_at_exit_is_rejected_as_result_mismatch(
    mode: str, tmp_path: Path, instance_image: InstanceFactory, docker_client: docker.DockerClient
) -> None:
    """A conftest writes an all-passed report at exit and exits 0 (issue 12: this became a
    task with test_bogus in FAIL_TO_PASS). ``append``: after pytest's own report, into the
    pipe it was given; ``replace``: pytest's report silenced, the forged one written alone."""
    pr = {
        "calc/__init__.py": FIXED_CODE,
        "tests/test_calc.py": PR_TESTS,
        "tests/conftest.py": FORGING_CONFTEST.format(mode=mode),
    }
    with pytest.raises(Rejected) as info:
        validate(tmp_path, instance_image, docker_client, pr)
    r = info.value
    assert r.reason is Reason.RESULT_MISMATCH, r
    assert "pytest's summary has 1 failed or errors, the exit code is 0" in r.detail
    if mode == "append":
        assert "something wrote after pytest's JUnit report" in r.detail
    else:  # the forged report claims more passes than the witness saw
        assert re.search(r"the report has \d+ passed, the witness \d+", r.detail), r.detail


@pytest.mark.docker
def test_hook_flipping_outcomes_on_the_after_side_cannot_find_the_side(
    tmp_path: Path, instance_image: InstanceFactory, docker_client: docker.DockerClient
) -> None:
    pr = {
        "calc/__init__.py": FIXED_CODE,
        "tests/test_calc.py": PR_TESTS,
        "tests/conftest.py": FLIPPING_CONFTEST,
    }
    task = validate(tmp_path, instance_image, docker_client, pr)
    assert task.FAIL_TO_PASS == [LEGIT]
    assert BOGUS not in task.PASS_TO_PASS + task.validation.flaky
    runs = task.validation.runs
    assert {r.side for r in runs} == {"before", "after"}
    for run in runs:  # the hook was active and found no clue, on either side
        assert "hostile conftest: after=False" in run.log_tail, (run.side, run.attempt)
        assert not run.result_mismatch


@pytest.mark.docker
def test_side_aware_test_sees_the_same_world_on_both_sides(
    tmp_path: Path, instance_image: InstanceFactory, docker_client: docker.DockerClient
) -> None:
    pr = {"calc/__init__.py": FIXED_CODE, "tests/test_calc.py": SIDE_AWARE_TESTS}
    task = validate(tmp_path, instance_image, docker_client, pr)
    assert task.FAIL_TO_PASS == [LEGIT]
    side_aware = "tests/test_calc.py::test_knows_its_side"
    assert side_aware not in task.PASS_TO_PASS + task.validation.flaky
    seen: dict[str, set[str]] = {"before": set(), "after": set()}
    for run in task.validation.runs:
        assert run.statuses.get(side_aware, "failed") == "failed"
        seen[run.side] |= set(re.findall(r"^OBSERVED ([0-9a-f]{64}) ", run.log_tail, re.M))
    # Everything visible to the test (environment, argv, every process's argv, the inbox,
    # mounts) is identical on both sides, and nothing of it is readable in /smelter.
    assert seen["before"] and seen["before"] == seen["after"], seen
    log = next(r.log_tail for r in task.validation.runs if "OBSERVED" in r.log_tail)
    world = json.loads(re.search(r"^OBSERVED \S+ (.*)$", log, re.M).group(1))  # type: ignore[union-attr]
    assert world["files"]["/smelter"] == "PermissionError" and world["uid"] == 1000
    assert world["files"]["/proc/1/environ"] == "PermissionError"
    assert not any("SMELTER_SIDE" in e for e in world["env"])


@pytest.mark.docker
def test_legitimate_pr_still_validates_with_every_signal_agreeing(
    tmp_path: Path, instance_image: InstanceFactory, docker_client: docker.DockerClient
) -> None:
    tests = PR_TESTS.replace("\n\ndef test_bogus():\n    assert add(2, -3) == 999\n", "\n")
    task = validate(tmp_path, instance_image, docker_client, {
        "calc/__init__.py": FIXED_CODE, "tests/test_calc.py": tests
    })  # fmt: skip
    assert task.FAIL_TO_PASS == [LEGIT]
    assert "tests/test_calc.py::TestOwner::test_not_root" in task.PASS_TO_PASS  # uid 1000
    for run in task.validation.runs:
        assert run.report_found and not run.result_mismatch
        assert END_LINE in run.log_tail
    assert "/smelter/side" in task.validation.test_script


# --------------------------------------------------------------------------- host pytest

SUITE = {
    "conftest.py": textwrap.dedent(
        """\
        import pytest


        @pytest.fixture
        def broken_setup():
            raise RuntimeError("setup")


        @pytest.fixture
        def broken_teardown():
            yield
            raise RuntimeError("teardown")
        """
    ),
    "test_kinds.py": textwrap.dedent(
        """\
        import pytest


        def test_pass():
            pass


        def test_fail():
            assert 0


        def test_setup_error(broken_setup):
            pass


        def test_pass_with_teardown_error(broken_teardown):
            pass


        def test_fail_with_teardown_error(broken_teardown):
            assert 0


        def test_skip():
            pytest.skip("no")


        @pytest.mark.xfail
        def test_xfail():
            assert 0


        @pytest.mark.xfail
        def test_xpass():
            pass


        @pytest.mark.xfail(strict=True)
        def test_xpass_strict():
            pass


        @pytest.mark.parametrize("x", ["a::b", "c d", "é"])
        def test_param(x):
            assert x != "c d"


        class TestGroup:
            def test_method(self):
                pass
        """
    ),
    "test_broken.py": "import nowhere_to_be_found\n",
}


def run_host_pytest(tmp_path: Path) -> tuple[int, bytes, bytes, str]:
    """pytest on the host with the witness plugin on a pipe at fd 4, as in the container:
    (exit code, JUnit XML, witness stream, output + the root wrapper's end line)."""
    for rel, text in SUITE.items():
        (tmp_path / rel).write_text(text)
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / f"{WITNESS_MODULE}.py").write_text(WITNESS_SOURCE)
    report = tmp_path / "report.xml"
    read_end, write_end = os.pipe()
    chunks: list[bytes] = []

    def drain() -> None:
        while data := os.read(read_end, 65536):
            chunks.append(data)

    reader = threading.Thread(target=drain)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env["PYTHONPATH"] = str(plugins)
    argv = [sys.executable, "-m", "pytest", "-rA", "-p", "no:cacheprovider", "-p", WITNESS_MODULE,
            f"--junit-xml={report}", "-o", "junit_family=xunit1",
            "--continue-on-collection-errors", f"--rootdir={tmp_path}", "."]  # fmt: skip
    # bash moves the pipe to fd 4, where the plugin writes (as the test script does); dash
    # cannot name a descriptor above 9.
    shell = f'exec "$@" {WITNESS_FD}>&{write_end} {write_end}>&-'
    try:
        reader.start()
        done = subprocess.run(
            ["bash", "-c", shell, "bash", *argv],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            pass_fds=(write_end,),
        )
    finally:
        os.close(write_end)
        reader.join(timeout=30)
        os.close(read_end)
    log = done.stdout + done.stderr + f"\n{END_LINE}{done.returncode}\n"
    return done.returncode, report.read_bytes(), b"".join(chunks), log


@pytest.fixture(scope="module")
def host_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, bytes, bytes, str]:
    return run_host_pytest(tmp_path_factory.mktemp("suite"))


def test_witness_and_report_agree_on_every_outcome_kind(
    host_run: tuple[int, bytes, bytes, str],
) -> None:
    """No false alarm on a real run: pass, fail, setup and teardown errors, skip, xfail,
    xpass (strict too), odd parameter ids, a class, a module that does not import."""
    code, report, raw, log = host_run
    junit = parse_junit(report, known_files=["test_kinds.py", "test_broken.py"]).statuses
    witness = parse_witness(raw)
    assert code == 1 and witness.starts == 1 and witness.end == 1 and not witness.foreign_lines
    tests = {k: v for k, v in junit.items() if "::" in k}
    assert {k: witness.statuses[k] for k in tests} == tests
    assert witness.statuses["test_broken.py"] is TestStatus.ERROR == junit["test_broken.py"]
    assert witness.statuses["test_kinds.py::test_pass_with_teardown_error"] is TestStatus.ERROR
    assert witness.statuses["test_kinds.py::test_xpass"] is TestStatus.PASSED
    assert witness.statuses["test_kinds.py::test_xpass_strict"] is TestStatus.FAILED
    assert cross_check(code, report, junit, witness, log) == ""


def test_each_forged_signal_is_a_mismatch(host_run: tuple[int, bytes, bytes, str]) -> None:
    code, report, raw, log = host_run
    junit = parse_junit(report).statuses
    witness = parse_witness(raw)
    forged = {k: TestStatus.PASSED for k in junit}
    assert "wrote after" in cross_check(code, report + report, junit, witness, log)
    assert "the witness" in cross_check(code, report, forged, witness, log)
    assert "the exit code is 0" in cross_check(0, report, junit, witness, log)
    assert "ended with 1, the process with 0" in cross_check(0, report, junit, witness, log)
    no_end = parse_witness(b"\n".join(raw.splitlines()[:-1]))
    assert "no end" in cross_check(code, report, junit, no_end, log)
    assert "no pytest session" in cross_check(code, report, junit, parse_witness(b""), log)
    assert "foreign" in cross_check(code, report, junit, parse_witness(raw + b"PASSED x\n"), log)
    # one flipped test with the counts kept (a pass and a fail swapped) is still caught
    swapped = dict(junit)
    swapped["test_kinds.py::test_pass"] = TestStatus.FAILED
    swapped["test_kinds.py::test_fail"] = TestStatus.PASSED
    assert "e.g. test_kinds.py::test_" in cross_check(code, report, swapped, witness, log)
    # not a result: a killed run is void for its own reason, not for a mismatch
    assert cross_check(137, report, junit, witness, log) == ""


def test_summary_line_is_the_last_before_the_end_line() -> None:
    assert summary_counts("== 1 failed, 2 passed, 1 warning in 0.12s ==") == {
        "failed": 1, "passed": 2, "warning": 1
    }  # fmt: skip
    assert summary_counts("1 failed, 3 errors in 1.50 seconds") == {"failed": 1, "error": 3}
    assert summary_counts("=== 2 passed in 62.00s (0:01:02) ===") == {"passed": 2}
    assert summary_counts("==== no tests ran in 0.01s ====") == {}
    assert summary_counts("\x1b[31m= 1 failed in 0.1s =\x1b[0m") == {"failed": 1}
    late = f"== 1 failed in 0.1s ==\n{END_LINE}1\n== 9 passed in 0.1s =="
    assert summary_counts(late) == {"failed": 1}  # printed after root's end line: not pytest's
    assert summary_counts("waited in 3s\nall good in 0.1s") is None


# --------------------------------------------------------------------------- eval script

CHEATING_CONFTEST = """\
import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        report.outcome = "passed"
        report.longrepr = None
"""


@pytest.mark.slow  # a real subprocess run: seconds (make unit skips it)
def test_eval_script_undoes_a_candidate_patch_that_edits_tests_or_conftest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An agent's patch that fixes nothing but rewrites the graded test, adds a flipping
    conftest.py at the root and edits tests/conftest.py (which the test patch leaves alone):
    unresolved by swebench's grading on the exported eval script; the gold patch resolves.
    Without ``candidate_reset`` (SWE-bench's reset of the test patch's files only) the same
    cheat is resolved, which is what the reset is for."""
    from smelter.pipeline.publish import harness as publish
    from smelter.schemas import Provenance, TestRun, Validation
    from tests.test_publish import _grade, _run_eval

    repo = tmp_path / "calc"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    write(repo, {"calc/__init__.py": BASE_CODE, "tests/test_calc.py": BASE_TESTS,
                 "tests/conftest.py": "# shared fixtures live here\n"})  # fmt: skip
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "base")
    base = git(repo, "rev-parse", "HEAD").strip()
    # The cheat, against base: the graded test made trivially true, flipping conftests.
    write(repo, {
        "tests/test_calc.py": BASE_TESTS + "\n\ndef test_add_negative():\n    assert True\n",
        "tests/conftest.py": CHEATING_CONFTEST, "conftest.py": CHEATING_CONFTEST,
    })  # fmt: skip
    git(repo, "add", "-A")
    cheat = git(repo, "diff", "--binary", "--cached")
    git(repo, "reset", "-q", "--hard")
    git(repo, "clean", "-qfd")
    legit_tests = BASE_TESTS + "\n\ndef test_add_negative():\n    assert add(2, -3) == -1\n"
    write(repo, {"calc/__init__.py": FIXED_CODE, "tests/test_calc.py": legit_tests})
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "the PR")
    cand = candidate_for(repo, base=base, image="smelter/instance:x", head="main",
                         test_paths=["tests"], code_paths=["calc"])  # fmt: skip
    assert cand.environment is not None and "conftest" not in cand.test_patch
    statuses = {"before": {LEGIT: TestStatus.FAILED}, "after": {LEGIT: TestStatus.PASSED}}
    task = Task(
        instance_id=cand.instance_id, repo=cand.repo, base_commit=base, patch=cand.patch,
        test_patch=cand.test_patch, problem_statement="x", created_at=cand.created_at,
        FAIL_TO_PASS=[LEGIT], PASS_TO_PASS=["tests/test_calc.py::test_add_positive"],
        environment=cand.environment,
        validation=Validation(runs=[
            TestRun(side=side, attempt=0, exit_code=int(side == "before"), duration_seconds=1,  # type: ignore[arg-type]
                    statuses=s)
            for side, s in statuses.items()
        ]),
        provenance=Provenance(source="git", pull_number=1, merge_commit=cand.merge_commit),
    )  # fmt: skip
    gold = _run_eval(repo, task, tmp_path / "testbed", task.patch)
    assert _grade(task, gold, tmp_path), gold[-3000:]
    cheated = _run_eval(repo, task, tmp_path / "testbed", cheat)
    assert not _grade(task, cheated, tmp_path), cheated[-3000:]
    assert "FAILED tests/test_calc.py::test_add_negative" in cheated
    monkeypatch.setattr(publish, "candidate_reset", lambda base: [])
    unguarded = _run_eval(repo, task, tmp_path / "testbed", cheat)
    assert _grade(task, unguarded, tmp_path), unguarded[-3000:]
