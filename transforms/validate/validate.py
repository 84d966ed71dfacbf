"""The validate stage: Candidate (with its Environment) -> Task with FAIL_TO_PASS / PASS_TO_PASS.

Deliberate choices:
- One shell script (``script.py``), recorded verbatim on the Task (``validation.test_script``),
  does all the work inside the container: ``sh run_tests.sh``, with the side (``before|after``)
  in the root-only file ``/smelter/side``. With the image and the two patch files anyone can
  re-validate a task without smelter.
- Every run is a fresh container from the instance image (no state leaks between runs or
  sides), with ``SMELTER_ATTEMPT`` = the 0-based rerun index of its side, so a test that depends
  on it shows up as flaky reproducibly.
- The script's root part keeps the side and the results to itself and runs everything of the
  repository (patching, the plugin probe, pytest) as the owner of the source tree (the instance
  image copies it as 1000:1000) via ``setpriv``; a tree owned by root stays root ("non-root
  where the repo allows"). The test never learns its side and cannot write the verdict: see
  ``trust.py`` for the boundary and what in-process code can still do.
- Results come from JUnit XML that root collects from a pipe (``junit.py``), cross-checked
  against the witness plugin, the exit code and pytest's summary line (``trust.cross_check``);
  a run whose signals disagree is void (``result_mismatch``). The verdict is the pure
  ``grading.grade``. Patches that fail to apply in the container get their own exit codes
  and reasons, so they are never mistaken for test results.
- After the planned runs, the fail-to-pass candidates alone (node ids) are rerun on both sides
  as often as ``grading.extra_runs`` needs for ``validate_flaky_bound`` (2 + 3 runs let a
  40%-flaky test through 3.5% of the time; one more run per side brings any 10-90% flake
  under 1%). The bound, the extra runs and the risk left are recorded on the Validation.
- The runs of one task go to a small thread pool (``validate_parallel_runs``): the engine does
  the work, threads only wait. Containers are removed in ``finally`` and on SIGTERM/SIGINT.
- ``Environment.instance_image`` is this record's own alias of the content-tagged image (see
  ``environment``): removing it after validation, or when the outcome is served from the
  cache, never takes the image from another run validating the same candidate. The cache key
  reads the content tag instead, so cached outcomes still hit across runs.
- A validated task keeps its image under the content tag the Task names (a rejected record's
  goes), so the export can build swebench's harness images from what a default run leaves;
  ``images.dispose_instance_image`` is the one place that decides.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, TypeVar

import docker
import docker.errors

from smelter.schemas.records import (
    Candidate,
    Environment,
    Provenance,
    Reason,
    Record,
    Stage,
    Task,
    TestRun,
    Validation,
)
from smelter.transforms import lifeline
from smelter.transforms.adapters import docker_engine as eng
from smelter.transforms.adapters import registry as reg
from smelter.transforms.adapters.sandbox import Sandbox, install_cleanup_handlers
from smelter.transforms.errors import Rejected
from smelter.transforms.stage import StageFn
from smelter.transforms.util import stable_hash, tail
from smelter.transforms.validate.config import ValidateConfig
from smelter.transforms.validate.grading import extra_runs, flake_risk, grade
from smelter.transforms.validate.images import dispose_instance_image
from smelter.transforms.validate.junit import PARSER
from smelter.transforms.validate.script import (
    DEFAULT_WORKDIR,
    EXIT_FIX_PATCH,
    EXIT_NO_WORKDIR,
    EXIT_SETUP,
    EXIT_TEST_PATCH,
    FIX_PATCH_PATH,
    REPORT_PATH,
    SCRIPT_PATH,
    SIDE_PATH,
    TEST_PATCH_PATH,
    WITNESS_PATH,
    pytest_argv,
    render_test_script,
    to_test_run,
    touched_test_modules,
)

T = TypeVar("T")
R = TypeVar("R")

STAGE = Stage.VALIDATE
# Environment fields that describe the build, not the image: left out of the cache key.
VOLATILE_ENV_FIELDS: dict[str, Any] = {
    "build_seconds": 0.0,
    "env_cache_hit": False,
    "build_log_tail": "",
    "image_size_bytes": None,
}


# --------------------------------------------------------------------------- pure parts


def patch_problem(runs: Iterable[TestRun]) -> Rejected | None:
    """A patch that does not apply in the image is not a test result."""
    for run in runs:
        if run.exit_code == EXIT_TEST_PATCH:
            return Rejected(Reason.PATCH_DOES_NOT_APPLY, "test patch: " + tail(run.log_tail, 800))
        if run.exit_code == EXIT_FIX_PATCH:
            return Rejected(Reason.PATCH_DOES_NOT_APPLY, "fix: " + tail(run.log_tail, 800))
        if run.exit_code == EXIT_NO_WORKDIR:
            return Rejected(Reason.INFRASTRUCTURE, "the image has no source tree at its WORKDIR")
        if run.exit_code == EXIT_SETUP:
            return Rejected(Reason.INFRASTRUCTURE, "test script setup: " + tail(run.log_tail, 800))
    return None


def mismatch_problem(runs: Iterable[TestRun]) -> Rejected | None:
    """A run whose result signals disagree is void, and so is the task: its outcome cannot be
    trusted in either direction (``trust.py``)."""
    bad = [r for r in runs if r.result_mismatch]
    if not bad:
        return None
    detail = "; ".join(f"{r.side} run {r.attempt}: {r.result_mismatch}" for r in bad)
    return Rejected(Reason.RESULT_MISMATCH, _with_log(detail, bad))


def run_all(
    fn: Callable[[T], R],
    jobs: Sequence[T],
    parallel: int,
    stop: Callable[[R], bool] | None = None,
) -> list[R]:
    """``[fn(j) for j in jobs]`` on a thread pool, in job order; once a result satisfies
    ``stop``, jobs not yet started are dropped (running ones finish).

    The calling thread polls instead of blocking: Python runs signal handlers only in the main
    thread between bytecodes, and a SIGTERM must reach the sandbox's cleanup handler at once.
    On any exception (a signal's SystemExit included) queued jobs are cancelled, so no new
    container starts.
    """
    pool = ThreadPoolExecutor(max_workers=max(1, parallel), thread_name_prefix="validate")
    try:
        futures = [pool.submit(fn, job) for job in jobs]
        stopped = False
        while True:
            done, pending = wait(futures, timeout=0.25, return_when=FIRST_COMPLETED)
            if not stopped and stop is not None and any(_stops(f, stop) for f in done):
                stopped = True
                for f in pending:
                    f.cancel()
            if all(f.done() for f in futures):
                break
        return [f.result() for f in futures if not f.cancelled()]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _stops(future: Future[R], stop: Callable[[R], bool]) -> bool:
    return not future.cancelled() and future.exception() is None and stop(future.result())


def interleaved_jobs(before: int, after: int) -> list[tuple[str, int]]:
    """before 0, after 0, before 1, after 1, …: the first pair alone can already decide."""
    jobs = []
    for i in range(max(before, after)):
        jobs += [("before", i)] if i < before else []
        jobs += [("after", i)] if i < after else []
    return jobs


def side_counts(runs: Iterable[TestRun]) -> tuple[int, int]:
    """(before-runs, after-runs)."""
    runs = list(runs)
    return sum(r.side == "before" for r in runs), sum(r.side == "after" for r in runs)


def flaky_rerun_plan(
    runs: Sequence[TestRun], bound: float
) -> tuple[list[str], list[tuple[str, int]]]:
    """Which tests to rerun and the (side, attempt) jobs, after the planned ``runs``.

    Only the fail-to-pass candidates, on both sides, as many times as ``extra_runs`` needs for
    ``bound``: a rerun can only take a test out of FAIL_TO_PASS (a flip makes it flaky), and
    every other test is already decided. Nothing when the planned runs reject the task or
    already meet the bound. Attempts continue each side's numbering, so ``SMELTER_ATTEMPT``
    stays unique per side.
    """
    verdict = grade([r for r in runs if r.side == "before"], [r for r in runs if r.side == "after"])
    if not verdict.ok or not verdict.fail_to_pass:
        return [], []
    before, after = side_counts(runs)
    more_before, more_after = extra_runs(before, after, bound)
    jobs = interleaved_jobs(more_before, more_after)
    jobs = [(side, i + (before if side == "before" else after)) for side, i in jobs]
    return (verdict.fail_to_pass if jobs else []), jobs


def rerun_targets(selected: Sequence[str], runs: Sequence[TestRun]) -> list[str]:
    """What pytest is given to rerun ``selected``: a test's node id where every planned run
    collected it, else its module. A candidate whose module does not import without the fix
    has no node id there (pytest: "not found", usage error, a void run); named by its module,
    the rerun reports the collection error, which grading reads as not passed."""
    out: list[str] = []
    for test in selected:
        target = test if all(test in r.statuses for r in runs) else test.split("::", 1)[0]
        if target not in out:
            out.append(target)
    return out


def in_side_order(runs: Iterable[TestRun]) -> list[TestRun]:
    return sorted(runs, key=lambda r: (r.side != "before", r.attempt))


def decisive(run: TestRun) -> bool:
    """A run after which more runs cannot change the verdict: it timed out (grading rejects
    any timeout first) or a patch did not apply (rejected before grading)."""
    return run.timed_out or run.exit_code in (EXIT_NO_WORKDIR, EXIT_TEST_PATCH, EXIT_FIX_PATCH)


def fail_to_pass_possible(runs: Sequence[TestRun]) -> bool:
    """Whether any test failed in a before-run and passed in an after-run; if none did, more
    reruns can only remove candidates, never add one."""
    before = [r for r in runs if r.side == "before"]
    after = [r for r in runs if r.side == "after"]
    passed_after = {t for r in after for t, v in r.statuses.items() if v == "passed"}
    return any(
        any(r.statuses.get(t) != "passed" for r in before) for t in passed_after if "::" in t
    )


def smelter_version() -> str:
    try:
        return importlib.metadata.version("swe-smelter")
    except importlib.metadata.PackageNotFoundError:
        return ""


# --------------------------------------------------------------------------- the stage


class Validator:
    """Runs a candidate's before/after runs in a sandbox and grades them (no Beam involved)."""

    def __init__(self, client: docker.DockerClient, config: ValidateConfig) -> None:
        self._client = client
        self.config = config
        self.sandbox = Sandbox(client, config.limits())

    def workdir_of(self, image: str) -> str:
        try:
            attrs = eng.retry(lambda: self._client.images.get(image)).attrs
        except docker.errors.ImageNotFound:
            raise Rejected(
                Reason.INFRASTRUCTURE,
                f"instance image {image} is missing (removed after an earlier validation? "
                "re-run the environment stage or keep images with --validate-keep-instance-images)",
            ) from None
        return (attrs.get("Config") or {}).get("WorkingDir") or DEFAULT_WORKDIR

    def runs(
        self,
        candidate: Candidate,
        selected: Sequence[str] = (),
        jobs: Sequence[tuple[str, int]] | None = None,
        targets: Sequence[str] = (),
    ) -> tuple[list[TestRun], str]:
        """All before/after runs of one candidate, and the script they ran.

        ``selected`` node ids and ``jobs`` (side, attempt) make a flakiness rerun: pytest gets
        ``targets`` (see ``rerun_targets``), and each run records ``selected``, so grading
        counts it for those tests alone.
        """
        env = candidate.environment
        assert env is not None
        cfg = self.config
        files = touched_test_modules(candidate.test_patch) or sorted(env.test_files)
        if not files:
            raise Rejected(Reason.NO_TESTS_RUN, "the test patch touches no test module")
        workdir = self.workdir_of(env.instance_image)
        tests = targets or selected or files
        argv = pytest_argv(env.test_command, tests, workdir, cfg.validate_pytest_args)
        script = render_test_script(
            argv, workdir, cfg.validate_drop_privileges, cfg.validate_test_timeout_seconds
        )
        inputs = {
            SCRIPT_PATH: script,
            TEST_PATCH_PATH: candidate.test_patch,
            FIX_PATCH_PATH: candidate.patch,
        }
        if jobs is None:
            jobs = interleaved_jobs(cfg.validate_reruns_before, cfg.validate_reruns_after)

        def one(job: tuple[str, int]) -> TestRun:
            side, attempt = job
            result = self.sandbox.run(
                env.instance_image,
                ["sh", SCRIPT_PATH],  # the side is in a root-only file, never in argv or env
                files={**inputs, SIDE_PATH: side},
                fetch=[REPORT_PATH, WITNESS_PATH],
                env={"SMELTER_ATTEMPT": str(attempt)},
                labels={eng.LABEL_INSTANCE: candidate.instance_id},
            )
            run = to_test_run(side, attempt, result, files, cfg.validate_log_bytes)
            return run.model_copy(update={"selected": list(selected)}) if selected else run

        parallel = cfg.validate_parallel_runs
        if cfg.validate_early_stop and not selected:
            first = run_all(one, jobs[:2], parallel, stop=decisive)
            if any(decisive(r) for r in first) or not fail_to_pass_possible(first):
                return in_side_order(first), script
            return in_side_order(first + run_all(one, jobs[2:], parallel, stop=decisive)), script
        return in_side_order(run_all(one, jobs, parallel, stop=decisive)), script

    def validate(self, candidate: Candidate, config_hash: str = "") -> Task:
        """The Task, or ``Rejected`` with the precise reason; the image follows the outcome.

        A kept task keeps its instance image (the content tag), so ``smelter export
        --harness-images`` works on what a default run leaves; a rejected one loses it.
        """
        env = candidate.environment
        if env is None:
            raise Rejected(Reason.INFRASTRUCTURE, "candidate reached validation without an image")
        task: Task | None = None
        try:
            task = self._validate(candidate, env, config_hash)
            return task
        finally:
            # A run that died mid-way leaves the alias: its containers may still hold the
            # image, and the next run's ``collect_dead_runs`` removes alias and image together.
            if not lifeline.run_gone():
                dispose_instance_image(
                    self._client,
                    env.instance_image,
                    kept=task is not None,
                    keep_all=self.config.validate_keep_instance_images,
                )

    def _validate(self, candidate: Candidate, env: Environment, config_hash: str) -> Task:
        started = time.monotonic()
        runs, script = self.runs(candidate)
        if patch_problem(runs) is None:
            runs = in_side_order(runs + self.flaky_reruns(candidate, runs))
        if (problem := patch_problem(runs)) is not None:
            raise problem
        if (problem := mismatch_problem(runs)) is not None:
            raise problem
        verdict = grade(
            [r for r in runs if r.side == "before"], [r for r in runs if r.side == "after"]
        )
        if not verdict.ok:
            assert verdict.reason is not None
            raise Rejected(verdict.reason, _with_log(verdict.detail, runs))
        validation = Validation(
            runs=runs,
            flaky=verdict.flaky,
            reruns_before=self.config.validate_reruns_before,
            reruns_after=self.config.validate_reruns_after,
            flaky_bound=self.config.validate_flaky_bound,
            extra_runs_before=sum(1 for r in runs if r.selected and r.side == "before"),
            extra_runs_after=sum(1 for r in runs if r.selected and r.side == "after"),
            flaky_risk=flake_risk(*side_counts(runs)),
            parser=PARSER,
            test_script=script,
            seconds=round(time.monotonic() - started, 3),
        )
        return Task(
            instance_id=candidate.instance_id,
            repo=candidate.repo,
            base_commit=candidate.base_commit,
            patch=candidate.patch,
            test_patch=candidate.test_patch,
            problem_statement=candidate.problem_statement,
            hints_text=candidate.hints_text,
            created_at=candidate.created_at,
            version=env.project_version,
            # A group of one until SetupCommits (pipeline/graph.py) sees the whole env group.
            environment_setup_commit=candidate.base_commit,
            FAIL_TO_PASS=verdict.fail_to_pass,
            PASS_TO_PASS=verdict.pass_to_pass,
            # The stable content tag, not this run's alias: the task must name an image that
            # outlives the run (when kept) and be byte-identical across runs.
            environment=env.model_copy(
                update={"instance_image": eng.content_tag(env.instance_image)}
            ),
            validation=validation,
            provenance=Provenance(
                source=candidate.source,
                pull_number=candidate.pull_number,
                pr_url=(
                    f"https://github.com/{candidate.repo}/pull/{candidate.pull_number}"
                    if candidate.source == "github"
                    else ""
                ),
                repo_url=candidate.repo_url,
                merge_commit=candidate.merge_commit,
                linked_issues=[i.number for i in candidate.linked_issues],
                smelter_version=smelter_version(),
                config_hash=config_hash,
            ),
        )

    def flaky_reruns(self, candidate: Candidate, runs: Sequence[TestRun]) -> list[TestRun]:
        """The extra runs ``flaky_rerun_plan`` asks for (none when it asks for none)."""
        selected, jobs = flaky_rerun_plan(runs, self.config.validate_flaky_bound)
        if not jobs:
            return []
        targets = rerun_targets(selected, runs)
        extra, _ = self.runs(candidate, selected=selected, jobs=jobs, targets=targets)
        return extra


def _with_log(detail: str, runs: Sequence[TestRun]) -> str:
    """The grading detail plus the end of the most telling run's log."""
    worst = next((r for r in runs if r.timed_out or not r.report_found), None)
    worst = worst or next((r for r in runs if r.side == "after"), runs[0] if runs else None)
    if worst is None or not worst.log_tail:
        return detail
    return (
        f"{detail}\n--- {worst.side} run {worst.attempt} log tail ---\n{tail(worst.log_tail, 1200)}"
    )


class ValidateFn(StageFn[ValidateConfig, Candidate, Task]):
    """Candidate (with environment) -> Task; rejections carry the precise reason."""

    STAGE = STAGE

    def __init__(self, config: ValidateConfig, cache_root: str | None = None) -> None:
        super().__init__(config, cache_root)

    def setup_stage(self) -> None:
        install_cleanup_handlers()
        self._client = eng.connect()
        self._validator = Validator(self._client, self._config)
        image_registry = self._config.registry.image_registry
        self._registry = reg.Registry.parse(image_registry) if image_registry else None

    def teardown_stage(self) -> None:
        with contextlib.suppress(Exception):
            self._client.close()

    def cache_key(self, record: Candidate) -> str | None:
        """Key on what decides the outcome, not on how the image was obtained this time.

        The environment stage reports build seconds, cache hits and log tails that differ on
        every run; keyed on them, a re-run would re-validate every task. The instance image is
        a per-run alias of a content-hash tag: the content tag stands for the environment
        exactly, the alias part only says who holds it.
        """
        if not isinstance(record, Candidate) or record.environment is None:
            return super().cache_key(record)
        env = record.environment
        env = env.model_copy(
            update={**VOLATILE_ENV_FIELDS, "instance_image": eng.content_tag(env.instance_image)}
        )
        return stable_hash(self._config_hash, record.model_copy(update={"environment": env}))

    def lookup(self, record: Candidate) -> tuple[str, str | None, list[Record] | None]:
        """The cache check; on a hit, this run's alias of the record's image goes at once.

        The environment stage made the alias for this run; served from the cache, no
        validation will remove it, and it would stay on the engine until a prune.
        """
        instance_id, key, cached = super().lookup(record)
        env = getattr(record, "environment", None)
        if cached is not None and env is not None:
            dispose_instance_image(
                self._client,
                env.instance_image,
                kept=any(isinstance(o, Task) for o in cached),
                keep_all=self._config.validate_keep_instance_images,
            )
        return instance_id, key, cached

    def run(self, record: Candidate) -> Iterable[Task]:
        # With a registry, a hold of the image spans validation and the push: a prune between
        # ``dispose_instance_image`` and the push would otherwise take a kept image unpushed.
        with reg.held_for_push(self._client, self._registry, record) as hold:
            hold.task = self._validator.validate(record, self._config_hash)
            task = reg.publish_task(self._client, self._registry, hold.task, source=hold.alias)
        yield task
