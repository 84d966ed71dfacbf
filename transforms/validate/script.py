"""The test script every validation container runs, and one run's outcome read back from it.

Deliberate choices:
- One shell script, recorded verbatim on the Task (``validation.test_script``), does all the
  work inside the container: ``sh run_tests.sh``, with the side (``before|after``) in the
  root-only file ``/smelter/side``. With the image and the two patch files anyone can
  re-validate a task without smelter.
- Its root part keeps the side and the results to itself and runs everything of the repository
  (patching, the plugin probe, pytest) as the owner of the source tree via ``setpriv``; see
  ``trust.py`` for the boundary and what in-process code can still do.
- Patches that fail to apply in the container end the script with their own exit codes
  (``EXIT_*``), so they are never mistaken for test results.
- ``to_test_run`` reads what the script leaves (JUnit XML, the witness lines, the exit code,
  the log) into a ``TestRun`` and says when those signals disagree.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from typing import Any

from smelter.schemas.records import TestRun
from smelter.transforms.adapters.sandbox import SandboxResult
from smelter.transforms.diff import parse_section, sections
from smelter.transforms.environment.dockerfiles import REBUILD_FILE as REBUILD_PATH
from smelter.transforms.util import tail
from smelter.transforms.validate.junit import JUnitError, parse_junit
from smelter.transforms.validate.trust import (
    END_LINE,
    REPORT_FD,
    WITNESS_FD,
    WITNESS_MODULE,
    WITNESS_SOURCE,
    cross_check,
    parse_witness,
)

# v2: per-test timeout via pytest-timeout; v3: side and results root-only, witness cross-check
SCRIPT_VERSION = "test_script_v3"
INBOX = "/smelter"  # root-only (0700) once the script runs: side, patches, results
SCRIPT_PATH = f"{INBOX}/run_tests.sh"
SIDE_PATH = f"{INBOX}/side"
TEST_PATCH_PATH = f"{INBOX}/test.patch"
FIX_PATCH_PATH = f"{INBOX}/fix.patch"
REPORT_PATH = f"{INBOX}/out/report.xml"
WITNESS_PATH = f"{INBOX}/out/witness.jsonl"
PLUGIN_DIR = "/smelter-witness"  # root-owned, readable: the witness plugin's module
DEFAULT_WORKDIR = "/testbed"
DEFAULT_TEST_COMMAND = ("python", "-m", "pytest", "-rA", "--tb=short")

EXIT_NO_WORKDIR, EXIT_TEST_PATCH, EXIT_FIX_PATCH, EXIT_SETUP = 90, 91, 92, 93


def touched_test_modules(test_patch: str) -> list[str]:
    """Test modules the test patch adds or modifies (deleted ones cannot run); sorted.

    Read from each section's header, not only its ``+++`` line: a test file that is not
    UTF-8 travels as a git binary hunk, which has none (regression: such a PR was rejected
    as ``no_tests_run``).
    """
    out: set[str] = set()
    for section in sections(test_patch.encode("utf-8", "surrogateescape")):
        diff = parse_section(section)  # unquotes git's quoted names ("b/tests/t\303\274.py")
        if diff.status == "deleted":
            continue
        path = diff.path
        name = path.rsplit("/", 1)[-1]
        if name.endswith(".py") and (name.startswith("test_") or name.endswith("_test.py")):
            out.add(path)
    return sorted(out)


def pytest_argv(
    test_command: Sequence[str], test_files: Sequence[str], workdir: str, extra: Sequence[str] = ()
) -> list[str]:
    """The full pytest command: the environment's command + what validation needs + files.

    The report goes to ``/dev/fd/3``, a pipe root reads (``render_test_script``), and the
    witness plugin is loaded by name from ``PLUGIN_DIR``: the same argv on both sides, since
    every process's argv is readable in /proc.
    """
    argv = list(test_command) or list(DEFAULT_TEST_COMMAND)
    if not _has_plugin_off(argv, "cacheprovider"):
        argv += ["-p", "no:cacheprovider"]  # no .pytest_cache: runs must not influence each other
    argv += [
        "-p",
        WITNESS_MODULE,
        f"--junit-xml=/dev/fd/{REPORT_FD}",
        "-o",
        "junit_family=xunit1",  # adds file= to each testcase: node ids are recovered exactly
        "--continue-on-collection-errors",  # one broken module must not hide the others
        f"--rootdir={workdir}",  # node ids relative to the repository root, ini or not
        *extra,
        *test_files,
    ]
    return argv


def _has_plugin_off(argv: Sequence[str], plugin: str) -> bool:
    return any(a == f"no:{plugin}" for a in argv) or f"-pno:{plugin}" in argv


def timeout_args(seconds: float) -> list[str]:
    """pytest-timeout's flags for a per-test limit of ``seconds`` ([] when 0 = off).

    ``timeout_method=signal``: SIGALRM raises inside the hung test, which then fails alone and
    pytest goes on to the next one and writes its report. The ``thread`` method instead dumps
    the stacks and ``os._exit``s the whole pytest process: no JUnit report, the run counts as
    an infrastructure failure and the task is lost, which is what the limit must prevent. A
    test stuck in C code that never returns to Python ignores the signal; the per-run wall
    clock (``validate_timeout_seconds``) stays the outer bound for that. The method goes
    through ``-o`` because its flag was renamed (``--timeout_method`` in pytest-timeout 1.x,
    ``--timeout-method`` since 2.0) while the ini key is the same in both, and images resolve
    dependencies as of the PR date.
    """
    if seconds <= 0:
        return []
    return [f"--timeout={seconds:g}", "-o", "timeout_method=signal"]


def probe_python(argv: Sequence[str]) -> str:
    """The interpreter that will run pytest (so the plugin probe imports from the same venv)."""
    first = argv[0] if argv else "python"
    return first if first.rsplit("/", 1)[-1].startswith("python") else "python"


def render_test_script(
    argv: Sequence[str], workdir: str, drop_privileges: bool = True, test_timeout: float = 0
) -> str:
    """The script every test container runs, as root, as recorded on the Task.

    The trust boundary (``trust.py``): the side comes from a root-only file and is deleted once
    read; the patches reach the test user through stdin; both sides start the same processes
    with the same argv and environment (the before side runs ``git apply --check`` where the
    after side applies the fix, and a random number of throwaway processes hides how many
    processes started before the tests); pytest writes its report and the witness its lines to
    FIFOs that only root's ``cat`` reads; once pytest exits, every process of the test user is
    killed before root ends the run, so nothing writes after the fact.

    The per-test timeout flags are added only when ``pytest_timeout`` imports in the image:
    passed to a pytest without the plugin, ``--timeout`` is a usage error (exit 4) and every
    run would be void. No ``-p pytest_timeout``: where the plugin is installed, pytest already
    loads it through its entry point (named ``timeout``), and registering the module a second
    time under another name aborts pytest with "Plugin already registered".
    """
    tester = (
        """owner="$(stat -c %u:%g .)"
if [ "$owner" != 0:0 ] && command -v setpriv >/dev/null 2>&1; then
  # The repository's code (patching, the plugin probe, the tests) runs as the tree's owner.
  as_tester="setpriv --reuid=${owner%:*} --regid=${owner#*:} --clear-groups -- env HOME=/tmp"
fi
"""
        if drop_privileges
        else ""
    )
    out = shlex.quote(REPORT_PATH.rsplit("/", 1)[0])
    plugin = f"{PLUGIN_DIR}/{WITNESS_MODULE}.py"
    run = shlex.join(argv) + (' "$@"' if test_timeout > 0 else "")
    assert "\nEOF_WITNESS\n" not in WITNESS_SOURCE
    return f"""#!/bin/sh
# smelter {SCRIPT_VERSION}: run the touched tests of one task in a fresh container, as root:
#   printf after > {SIDE_PATH} && sh {SCRIPT_PATH}
# before (or no side file): apply {TEST_PATCH_PATH} and check {FIX_PATCH_PATH};
# after: apply both. The side is never shown to the tests (same argv, environment, processes).
# Results, root-only, collected from pipes: pytest's JUnit XML at {REPORT_PATH},
# the witness plugin's per-test outcomes at {WITNESS_PATH},
# then the line "{END_LINE}N".
# Exit: pytest's code, or {EXIT_NO_WORKDIR} (no source tree), {EXIT_TEST_PATCH} (test patch does
# not apply), {EXIT_FIX_PATCH} (fix does not), {EXIT_SETUP} (not root, or the setup failed).
set -u
setup_failed() {{ echo "smelter: $1"; exit {EXIT_SETUP}; }}
[ "$(id -u)" = 0 ] || setup_failed "the test script must start as root"
side="$(cat {SIDE_PATH} 2>/dev/null)"
rm -f {SIDE_PATH} && chown root:root {INBOX} && chmod 0700 {INBOX} || setup_failed "{INBOX}"
out={out}
rm -rf "$out" && mkdir -m 0700 "$out" || setup_failed "$out"
rm -rf {PLUGIN_DIR} && mkdir -m 0755 {PLUGIN_DIR} || setup_failed {PLUGIN_DIR}
cat > {plugin} <<'EOF_WITNESS'
{WITNESS_SOURCE}
EOF_WITNESS
chmod 0644 {plugin} || setup_failed {plugin}
cd {shlex.quote(workdir)} || exit {EXIT_NO_WORKDIR}
unset SMELTER_SIDE SMELTER_DROPPED
as_tester=""
{tester}$as_tester git apply --whitespace=nowarn - < {TEST_PATCH_PATH} || {{
  echo "smelter: the test patch does not apply"; exit {EXIT_TEST_PATCH}; }}
check=--check
[ "$side" = after ] && check=""
$as_tester git apply $check --whitespace=nowarn - < {FIX_PATCH_PATH} || {{
  echo "smelter: the fix does not apply"; exit {EXIT_FIX_PATCH}; }}
# A compiled extension is built again from the patched source (both sides, as the same steps).
if [ -f {REBUILD_PATH} ]; then
  $as_tester sh {REBUILD_PATH} > /dev/null 2>&1 || echo "smelter: the rebuild failed"
fi
# Throwaway processes, 0-63 of them: the tests' PIDs say nothing about what ran before them.
n="$(od -An -N1 -tu1 /dev/urandom 2>/dev/null | tr -dc 0-9)"
n=$(( ${{n:-0}} % 64 ))
while [ "$n" -gt 0 ]; do ( : ); n=$((n - 1)); done
export PYTHONDONTWRITEBYTECODE=1 PYTHONPATH="{PLUGIN_DIR}${{PYTHONPATH:+:$PYTHONPATH}}"
mkfifo -m 0622 "$out/report.fifo" && mkfifo -m 0600 "$out/witness.fifo" || setup_failed fifo
# 0622: pytest reopens /dev/fd/{REPORT_FD} by path; no one but root can read the pipe or reach it.
cat "$out/report.fifo" > {REPORT_PATH} &
cat "$out/witness.fifo" > {WITNESS_PATH} &
{_timeout_block(argv, test_timeout)}$as_tester {run} \\
  {REPORT_FD}>"$out/report.fifo" {WITNESS_FD}>"$out/witness.fifo"
code=$?
# Nothing of the test user's outlives pytest: no late writes to the pipes.
[ -z "$as_tester" ] || $as_tester sh -c 'kill -9 -1' 2>/dev/null
wait
echo "{END_LINE}$code"
exit "$code"
"""


def _timeout_block(argv: Sequence[str], seconds: float) -> str:
    """Sets "$@" to the per-test timeout flags when the image has pytest-timeout (see above);
    the probe runs as the test user, like everything that imports from the repository."""
    flags = timeout_args(seconds)
    if not flags:
        return ""
    probe = shlex.join([probe_python(argv), "-c", "import pytest_timeout"])
    return f"""# Per-test limit: a hanging test fails alone and the others still run
# (pytest-timeout, signal method); without the plugin only the wall clock bounds the run.
set --
if $as_tester {probe} >/dev/null 2>&1; then
  set -- {shlex.join(flags)}
fi
"""


def to_test_run(
    side: str, attempt: int, result: SandboxResult, test_files: Sequence[str], log_bytes: int
) -> TestRun:
    """One sandbox run -> a TestRun record; an unreadable report counts as missing, and
    ``result_mismatch`` says how the report, the witness, the exit code and pytest's summary
    line disagree (``trust.cross_check``), which makes the run void."""
    report = result.files.get(REPORT_PATH)
    statuses: dict[str, Any] = {}
    found = report is not None and not result.timed_out
    note = ""
    parsed = False
    if found and report is not None:
        try:
            statuses = parse_junit(report, known_files=test_files).statuses
            parsed = True
        except JUnitError as e:
            found, note = False, f"\n[smelter] {e}"
    mismatch = ""
    if not result.timed_out:
        witness = parse_witness(result.files.get(WITNESS_PATH, b""))
        mismatch = cross_check(
            result.exit_code, report, statuses if parsed else None, witness, result.log
        )
    if mismatch:
        note += f"\n[smelter] result signals disagree: {mismatch}"
    if result.oom_killed:
        note += "\n[smelter] the container was killed for exceeding its memory limit"
    if result.timed_out:
        note += "\n[smelter] killed at the wall-clock limit"
    return TestRun(
        side=side,  # type: ignore[arg-type]
        attempt=attempt,
        exit_code=result.exit_code,
        duration_seconds=round(result.seconds, 3),
        statuses=statuses,
        timed_out=result.timed_out,
        report_found=found,
        log_tail=tail(result.log + note, log_bytes),
        result_mismatch=mismatch,
    )
