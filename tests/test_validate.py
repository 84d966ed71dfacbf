"""The validate stage on a real engine: a small package in tmp_path, real git diffs, real images,
real pytest in locked-down containers. Plus the pure parts of the stage (script, file choice)."""

from __future__ import annotations

import dataclasses
import subprocess
import textwrap
import time
from pathlib import Path

import docker
import pytest

from smelter.schemas.records import Reason, Task
from smelter.transforms.adapters import docker_engine as eng
from smelter.transforms.errors import Rejected
from smelter.transforms.validate.config import ValidateConfig
from smelter.transforms.validate.script import pytest_argv, render_test_script, touched_test_modules
from smelter.transforms.validate.validate import Validator
from tests.fixtures.validate import (
    BASE_CODE,
    BASE_TESTS,
    FIXED_CODE,
    InstanceFactory,
    candidate_for,
    make_repo,
)

NEW_TESTS = (
    BASE_TESTS
    + """

import pytest


@pytest.mark.parametrize("a,b,want", [(1, -1, 0), (5, 2, 7)])
def test_add_param(a, b, want):
    assert add(a, b) == want


def test_add_negative():
    assert add(2, -3) == -1
"""
)
NEW_MODULE = """\
from calc import sub


def test_sub():
    assert sub(3, 1) == 2
"""

CONFIG = ValidateConfig(
    validate_timeout_seconds=120,
    validate_memory="512m",
    validate_parallel_runs=2,
    validate_keep_instance_images=True,  # the fixture removes them
)


def validate(
    tmp_path: Path,
    instance_image: InstanceFactory,
    client: docker.DockerClient,
    pr: dict[str, str],
    config: ValidateConfig = CONFIG,
    env_image: str | None = None,
) -> Task:
    repo, base = make_repo(tmp_path, pr)
    image = instance_image(repo, env_image) if env_image else instance_image(repo)
    cand = candidate_for(
        repo,
        base=base,
        image=image,
        head="main",
        test_paths=["tests"],
        code_paths=["calc"],
    )
    return Validator(client, config).validate(cand)


def rejected(*args: object) -> Rejected:
    with pytest.raises(Rejected) as info:
        validate(*args)  # type: ignore[arg-type]
    return info.value


# --------------------------------------------------------------------------- pure


def test_touched_test_modules_skip_deleted_conftest_and_data() -> None:
    patch = textwrap.dedent(
        """\
        diff --git a/tests/test_a.py b/tests/test_a.py
        --- a/tests/test_a.py
        +++ b/tests/test_a.py
        diff --git a/tests/test_old.py b/tests/test_old.py
        deleted file mode 100644
        --- a/tests/test_old.py
        +++ /dev/null
        diff --git a/tests/conftest.py b/tests/conftest.py
        +++ b/tests/conftest.py
        diff --git a/tests/data/x.json b/tests/data/x.json
        +++ b/tests/data/x.json
        diff --git a/pkg/io_test.py b/pkg/io_test.py
        new file mode 100644
        --- /dev/null
        +++ b/pkg/io_test.py
        """
    )
    assert touched_test_modules(patch) == ["pkg/io_test.py", "tests/test_a.py"]


def test_touched_test_modules_reads_binary_hunks() -> None:
    """Regression: a test file that is not UTF-8 travels as a binary hunk, which has no
    ``+++`` line; the PR was rejected as no_tests_run."""
    patch = textwrap.dedent(
        """\
        diff --git a/tests/test_units.py b/tests/test_units.py
        index 1111111..2222222 100644
        GIT binary patch
        literal 10
        Rcmb=

        literal 8
        Pcmb=
        """
    )
    assert touched_test_modules(patch) == ["tests/test_units.py"]


def test_pytest_argv_adds_report_rootdir_and_keeps_cache_off_once() -> None:
    argv = pytest_argv(["python", "-m", "pytest", "-p", "no:cacheprovider"], ["t/test_a.py"], "/w")
    assert argv.count("no:cacheprovider") == 1
    # the report goes to a pipe root reads; the witness plugin is loaded by name (trust.py)
    assert "--junit-xml=/dev/fd/3" in argv and argv[argv.index("_smelter_witness") - 1] == "-p"
    assert "junit_family=xunit1" in argv and "--rootdir=/w" in argv
    assert argv[-1] == "t/test_a.py"


def test_script_adds_the_per_test_timeout_only_where_pytest_timeout_imports(
    tmp_path: Path,
) -> None:
    argv = pytest_argv([], ["tests/test_x.py"], "/testbed")
    script = render_test_script(argv, "/testbed", test_timeout=7.5)
    (tmp_path / "s.sh").write_text(script)
    subprocess.run(["sh", "-n", str(tmp_path / "s.sh")], check=True)
    # the probe imports from the tree's directory: it runs as the test user, not root
    probe = "if $as_tester python -c 'import pytest_timeout' >/dev/null 2>&1; then"
    flags = "set -- --timeout=7.5 -o timeout_method=signal"
    assert probe in script and flags in script
    assert script.index(probe) < script.index(flags) < script.index("$as_tester python -m pytest")
    assert 'tests/test_x.py "$@" \\\n' in script
    # -p pytest_timeout would abort pytest where the entry point already loaded the plugin.
    assert "-p pytest_timeout" not in script
    off = render_test_script(argv, "/testbed", test_timeout=0)
    assert "timeout" not in off and '"$@"' not in off
    venv = render_test_script(["/opt/venv/bin/python3", "-m", "pytest"], "/w", test_timeout=1)
    assert "/opt/venv/bin/python3 -c 'import pytest_timeout'" in venv


def test_script_is_valid_sh_and_names_everything(tmp_path: Path) -> None:
    script = render_test_script(pytest_argv([], ["tests/test_x.py"], "/testbed"), "/testbed")
    (tmp_path / "s.sh").write_text(script)
    subprocess.run(["sh", "-n", str(tmp_path / "s.sh")], check=True)
    for needle in ("git apply", "/smelter/test.patch", "/smelter/fix.patch", "setpriv", "--junit"):
        assert needle in script


# --------------------------------------------------------------------------- real Docker


@pytest.mark.docker
def test_bug_fix_gives_fail_to_pass_and_pass_to_pass(
    tmp_path: Path, instance_image: InstanceFactory, docker_client: docker.DockerClient
) -> None:
    pr = {
        "calc/__init__.py": FIXED_CODE,
        "tests/test_calc.py": NEW_TESTS,
        "tests/test_sub.py": NEW_MODULE,  # imports a name the fix adds: collection error before
    }
    task = validate(tmp_path, instance_image, docker_client, pr)
    assert task.FAIL_TO_PASS == [
        "tests/test_calc.py::test_add_negative",
        "tests/test_calc.py::test_add_param[1--1-0]",
        "tests/test_sub.py::test_sub",
    ]
    assert task.PASS_TO_PASS == [
        "tests/test_calc.py::TestOwner::test_not_root",  # tests ran as a non-root user
        "tests/test_calc.py::test_add_param[5-2-7]",
        "tests/test_calc.py::test_add_positive",
        "tests/test_calc.py::test_mul",
    ]
    v = task.validation
    planned = [r for r in v.runs if not r.selected]  # the extra flakiness runs: test_flaky.py
    assert [(r.side, r.attempt) for r in planned] == [
        ("before", 0), ("before", 1), ("after", 0), ("after", 1), ("after", 2)
    ]  # fmt: skip
    assert all(r.report_found and r.duration_seconds > 0 for r in v.runs)
    assert planned[0].statuses["tests/test_sub.py"] == "error"  # the module did not import
    assert planned[0].exit_code == 1 and planned[2].exit_code == 0
    assert "test_add_negative" in planned[0].log_tail
    assert "git apply" in v.test_script and v.parser == "junit_v1" and v.flaky == []
    assert task.provenance.merge_commit and task.environment.instance_image


@pytest.mark.docker
def test_patch_breaking_a_passing_test_rejects_pass_to_fail(
    tmp_path: Path, instance_image: InstanceFactory, docker_client: docker.DockerClient
) -> None:
    broken = FIXED_CODE.replace("return a * b", "return a * b + 1")
    r = rejected(tmp_path, instance_image, docker_client, {
        "calc/__init__.py": broken, "tests/test_calc.py": NEW_TESTS
    })  # fmt: skip
    assert r.reason is Reason.PASS_TO_FAIL and "tests/test_calc.py::test_mul" in r.detail


@pytest.mark.docker
def test_flaky_test_via_smelter_attempt_is_recorded_and_excluded(
    tmp_path: Path, instance_image: InstanceFactory, docker_client: docker.DockerClient
) -> None:
    flaky = NEW_TESTS + textwrap.dedent(
        """

        def test_flaky():
            assert os.environ["SMELTER_ATTEMPT"] != "1"
        """
    )
    task = validate(tmp_path, instance_image, docker_client, {
        "calc/__init__.py": FIXED_CODE, "tests/test_calc.py": flaky
    })  # fmt: skip
    assert task.validation.flaky == ["tests/test_calc.py::test_flaky"]
    assert "tests/test_calc.py::test_flaky" not in task.FAIL_TO_PASS + task.PASS_TO_PASS
    assert "tests/test_calc.py::test_add_negative" in task.FAIL_TO_PASS


@pytest.mark.docker
def test_only_flaky_candidate_rejects_all_flaky(
    tmp_path: Path, instance_image: InstanceFactory, docker_client: docker.DockerClient
) -> None:
    tests = BASE_TESTS + textwrap.dedent(
        """

        def test_add_negative_flaky():
            assert add(2, -3) == -1 and os.environ["SMELTER_ATTEMPT"] != "2"
        """
    )
    r = rejected(tmp_path, instance_image, docker_client, {
        "calc/__init__.py": FIXED_CODE, "tests/test_calc.py": tests
    })  # fmt: skip
    assert r.reason is Reason.ALL_FLAKY and "test_add_negative_flaky" in r.detail


@pytest.mark.docker
def test_tests_passing_without_the_fix_reject_passes_before(
    tmp_path: Path, instance_image: InstanceFactory, docker_client: docker.DockerClient
) -> None:
    tests = BASE_TESTS + "\n\ndef test_more():\n    assert add(2, 2) == 4\n"
    r = rejected(tmp_path, instance_image, docker_client, {
        "calc/__init__.py": FIXED_CODE, "tests/test_calc.py": tests
    })  # fmt: skip
    assert r.reason is Reason.PASSES_BEFORE


@pytest.mark.docker
def test_fix_that_does_not_fix_rejects_fails_after(
    tmp_path: Path, instance_image: InstanceFactory, docker_client: docker.DockerClient
) -> None:
    not_fixed = BASE_CODE + "\n\ndef unrelated():\n    return 1\n"
    pr = {"calc/__init__.py": not_fixed, "tests/test_calc.py": NEW_TESTS}
    config = dataclasses.replace(CONFIG, validate_keep_instance_images=False)
    tags: list[str] = []

    def build(tree: Path) -> str:
        tags.append(instance_image(tree))
        return tags[-1]

    with pytest.raises(Rejected) as info:
        validate(tmp_path, build, docker_client, pr, config)
    assert info.value.reason is Reason.FAILS_AFTER and "test_add_negative" in info.value.detail
    # The instance image goes once validated (kept only by option), rejected or not.
    assert tags and not eng.image_exists(docker_client, tags[0])


@pytest.mark.docker
def test_validate_fn_in_a_beam_pipeline_emits_tasks_and_rejects(
    tmp_path: Path, instance_image: InstanceFactory, docker_client: docker.DockerClient
) -> None:
    import apache_beam as beam
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that, equal_to

    from smelter.transforms.stage import Stage
    from smelter.transforms.validate.validate import ValidateFn

    good_repo, good_base = make_repo(
        tmp_path / "good", {"calc/__init__.py": FIXED_CODE, "tests/test_calc.py": NEW_TESTS}
    )
    good = candidate_for(
        good_repo, base=good_base, image=instance_image(good_repo), head="main",
        test_paths=["tests"], code_paths=["calc"], instance_id="acme__calc-1",
    )  # fmt: skip
    bad_tests = BASE_TESTS + "\n\ndef test_more():\n    assert add(2, 2) == 4\n"
    bad_repo, bad_base = make_repo(
        tmp_path / "bad", {"calc/__init__.py": FIXED_CODE, "tests/test_calc.py": bad_tests}
    )
    bad = candidate_for(
        bad_repo, base=bad_base, image=instance_image(bad_repo), head="main",
        test_paths=["tests"], code_paths=["calc"], instance_id="acme__calc-2",
    )  # fmt: skip
    fn = ValidateFn(CONFIG, cache_root=str(tmp_path / "cache"))
    with TestPipeline() as p:
        tasks, rejects = p | beam.Create([good, bad]) | Stage(fn)
        assert_that(
            tasks | beam.Map(lambda t: (t.instance_id, len(t.FAIL_TO_PASS))),
            equal_to([("acme__calc-1", 2)]),
            label="tasks",
        )
        assert_that(
            rejects | beam.Map(lambda r: (r.instance_id, r.stage, r.reason.value)),
            equal_to([("acme__calc-2", "validate", "passes_before")]),
            label="rejects",
        )


def test_cache_key_ignores_how_the_image_was_built(tmp_path: Path) -> None:
    from smelter.transforms.validate.validate import ValidateFn

    repo, base = make_repo(tmp_path, {"calc/__init__.py": FIXED_CODE})
    cand = candidate_for(
        repo, base=base, image="smelter/instance:x", head="main", test_paths=["tests"],
        code_paths=["calc"],
    )  # fmt: skip
    assert cand.environment is not None
    rebuilt = cand.model_copy(
        update={
            "environment": cand.environment.model_copy(
                update={"build_seconds": 12.5, "env_cache_hit": True, "build_log_tail": "cached"}
            )
        }
    )
    other = cand.model_copy(update={"environment": cand.environment.model_copy(
        update={"instance_image": "smelter/instance:y"})})  # fmt: skip
    # Another run's (or worker's) alias of the same content-hash tag: the same key.
    alias = eng.alias_tag("smelter/instance:x", eng.new_owner())
    aliased = cand.model_copy(update={"environment": cand.environment.model_copy(
        update={"instance_image": alias})})  # fmt: skip
    fn = ValidateFn(CONFIG)
    assert fn.cache_key(cand) == fn.cache_key(rebuilt) == fn.cache_key(aliased)
    assert fn.cache_key(cand) != fn.cache_key(other)


def test_jobs_interleave_so_the_first_pair_can_decide() -> None:
    from smelter.transforms.validate.validate import interleaved_jobs

    assert interleaved_jobs(2, 3) == [
        ("before", 0), ("after", 0), ("before", 1), ("after", 1), ("after", 2)
    ]  # fmt: skip


def test_run_all_keeps_order_and_drops_queued_jobs_after_a_decisive_result() -> None:
    import threading
    import time

    from smelter.transforms.validate.validate import run_all

    started: list[int] = []
    lock = threading.Lock()

    def job(n: int) -> int:
        with lock:
            started.append(n)
        time.sleep(0.05)
        return n

    assert run_all(job, [3, 1, 2], parallel=2) == [3, 1, 2]
    started.clear()
    out = run_all(job, list(range(50)), parallel=1, stop=lambda n: n == 0)
    assert out[0] == 0 and len(out) < 50 and len(started) == len(out)


def test_fail_to_pass_possible_only_with_a_before_failure_passing_after() -> None:
    from smelter.schemas.records import TestRun
    from smelter.transforms.validate.validate import fail_to_pass_possible

    def r(side: str, statuses: dict[str, str]) -> TestRun:
        return TestRun(side=side, attempt=0, exit_code=1, duration_seconds=1,  # type: ignore[arg-type]
                       statuses=statuses)  # type: ignore[arg-type]  # fmt: skip

    a = "tests/test_x.py::test_a"
    assert fail_to_pass_possible([r("before", {a: "failed"}), r("after", {a: "passed"})])
    assert fail_to_pass_possible([r("before", {}), r("after", {a: "passed"})])  # absent before
    assert not fail_to_pass_possible([r("before", {a: "passed"}), r("after", {a: "passed"})])
    assert not fail_to_pass_possible([r("before", {a: "failed"}), r("after", {a: "failed"})])
    assert not fail_to_pass_possible([r("before", {}), r("after", {"tests/test_x.py": "passed"})])


@pytest.mark.docker
def test_early_stop_spends_two_runs_on_a_task_that_cannot_have_fail_to_pass(
    tmp_path: Path, instance_image: InstanceFactory, docker_client: docker.DockerClient
) -> None:
    tests = BASE_TESTS + "\n\ndef test_more():\n    assert add(2, 2) == 4\n"
    repo, base = make_repo(tmp_path, {"calc/__init__.py": FIXED_CODE, "tests/test_calc.py": tests})
    cand = candidate_for(
        repo, base=base, image=instance_image(repo), head="main", test_paths=["tests"],
        code_paths=["calc"],
    )  # fmt: skip
    config = dataclasses.replace(CONFIG, validate_early_stop=True)
    runs, _ = Validator(docker_client, config).runs(cand)
    assert [(r.side, r.attempt) for r in runs] == [("before", 0), ("after", 0)]
    with pytest.raises(Rejected) as info:
        Validator(docker_client, config).validate(cand)
    assert info.value.reason is Reason.PASSES_BEFORE


# --------------------------------------------------------------------------- real suites

SOCKET_TESTS = """

import socket


def test_connects_to_a_local_service():
    socket.create_connection(("127.0.0.1", 9), timeout=5).close()


def test_resolves_a_host():
    socket.getaddrinfo("pypi.org", 443)
"""
HANGING_TEST = """

import time


def test_hangs():
    time.sleep(10_000)
"""
NEGATIVE_TEST = """

def test_add_negative():
    assert add(2, -3) == -1
"""


@pytest.mark.docker
def test_tests_needing_the_network_fail_on_both_sides_and_are_in_neither_list(
    tmp_path: Path, instance_image: InstanceFactory, docker_client: docker.DockerClient
) -> None:
    tests = BASE_TESTS + SOCKET_TESTS + NEGATIVE_TEST
    task = validate(tmp_path, instance_image, docker_client, {
        "calc/__init__.py": FIXED_CODE, "tests/test_calc.py": tests
    })  # fmt: skip
    assert task.FAIL_TO_PASS == ["tests/test_calc.py::test_add_negative"]
    network = {"tests/test_calc.py::test_connects_to_a_local_service",
               "tests/test_calc.py::test_resolves_a_host"}  # fmt: skip
    assert not network & set(task.PASS_TO_PASS + task.validation.flaky)
    for run in task.validation.runs:  # they did run, and failed everywhere (no network)
        if run.selected:  # a flakiness rerun of the fail-to-pass candidates only
            continue
        assert {run.statuses[t] for t in network} == {"failed"}, (run.side, run.attempt)


@pytest.mark.docker
def test_hanging_test_fails_alone_at_the_per_test_timeout_and_the_run_goes_on(
    tmp_path: Path, instance_image: InstanceFactory, docker_client: docker.DockerClient
) -> None:
    # The hanging test comes first: the F2P test after it must still run.
    tests = BASE_TESTS + HANGING_TEST + NEGATIVE_TEST
    config = dataclasses.replace(CONFIG, validate_test_timeout_seconds=5)
    started = time.monotonic()
    task = validate(tmp_path, instance_image, docker_client, {
        "calc/__init__.py": FIXED_CODE, "tests/test_calc.py": tests
    }, config)  # fmt: skip
    seconds = time.monotonic() - started
    assert task.FAIL_TO_PASS == ["tests/test_calc.py::test_add_negative"]
    hang = "tests/test_calc.py::test_hangs"
    assert hang not in task.PASS_TO_PASS + task.validation.flaky
    for run in task.validation.runs:
        if run.selected:  # a flakiness rerun of the fail-to-pass candidates only
            continue
        assert run.statuses[hang] == "failed" and not run.timed_out
        assert "Timeout (>5.0s) from pytest-timeout" in run.log_tail
        assert 5 <= run.duration_seconds < 60, run.duration_seconds  # not the 120 s run limit
    assert "--timeout=5 -o timeout_method=signal" in task.validation.test_script
    print(f"5 runs with a hanging test (per-test timeout 5 s): {seconds:.1f}s")


@pytest.mark.docker
def test_image_without_pytest_timeout_still_validates(
    tmp_path: Path,
    instance_image: InstanceFactory,
    docker_client: docker.DockerClient,
    venv_pytest_image_without_timeout: str,
) -> None:
    """Images built before env layers carried pytest-timeout: the script leaves --timeout out
    (pytest would stop with a usage error) and the task validates as before."""
    pr = {"calc/__init__.py": FIXED_CODE, "tests/test_calc.py": NEW_TESTS}
    task = validate(tmp_path, instance_image, docker_client, pr, CONFIG,
                    env_image=venv_pytest_image_without_timeout)  # fmt: skip
    assert "tests/test_calc.py::test_add_negative" in task.FAIL_TO_PASS
    assert all(r.exit_code in (0, 1) for r in task.validation.runs)
    assert "--timeout=120" in task.validation.test_script  # recorded, used where available
