"""SWE-bench's own evaluation harness on tasks smelter exported, end to end, with real Docker.

A real repository with three PRs; an instance image per PR laid out like the environment
stage's (source at /testbed with a one-commit .git holding the original sha, owned by uid 1000,
a venv with pytest on PATH, no conda); the validate stage turns each PR into a Task; the
export goes to swebench's harness, which finds the images locally (no registry here):

- flat dataset (tasks.jsonl, ``image`` = our instance image) through ``run_evaluation.main``,
  the function behind ``swebench eval``: gold patches resolve every task; an irrelevant patch
  and empty patches resolve none;
- task repository (``image`` = swebench's derived name, built from the task's Dockerfile by
  ``build_harness_images``) through ``run_instances``: gold patches resolve every task;
- the demo repository through the real pipeline (``smelter run --until validate``: mine,
  snapshot, environment stage images, validation), then the task-repository evaluation with
  gold and irrelevant patches.
  (``run_evaluation.main`` with ``task_repo`` first rebuilds images with ``docker buildx``,
  which this engine lacks, so that one step is done by our builder instead.)
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import docker
import jsonlines
import pytest

from smelter.pipeline.publish.images import build_harness_images
from smelter.pipeline.publish.swebench import export_tasks, read_tasks
from smelter.schemas import Candidate, Task
from smelter.transforms.adapters import docker_engine as eng
from smelter.transforms.adapters.git import GitRepo
from smelter.transforms.util import stable_hash
from smelter.transforms.validate.config import ValidateConfig
from smelter.transforms.validate.validate import Validator
from tests._calc_repo import CalcPR, make_calc_repo
from tests.fixtures.validate import (
    HARNESS_INSTANCE_DOCKERFILE,
    harness_environment,
    remove_instance_image,
)

pytestmark = pytest.mark.docker

HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
# The environment stage's layers (dockerfiles/env.Dockerfile, instance.Dockerfile) cut down to
# what the calc repo needs: a venv with pytest on PATH through the image ENV (no conda), and the
# source at /testbed, owned by uid 1000. No install step: the package is importable from the
# tree (pytest ``pythonpath``), so only the env layer reaches the index, once per machine.

IRRELEVANT_PATCH = """diff --git a/NOTES.md b/NOTES.md
new file mode 100644
index 0000000..3b18e51
--- /dev/null
+++ b/NOTES.md
@@ -0,0 +1 @@
+hello world
"""


@pytest.fixture(scope="module")
def env_image(venv_pytest_image: str) -> str:
    """The env layer: the validation fixtures' base + venv with pytest (kept across sessions)."""
    return venv_pytest_image


@pytest.fixture(scope="module")
def harness_tasks(
    tmp_path_factory: pytest.TempPathFactory,
    docker_client: docker.DockerClient,
    env_image: str,
) -> Iterator[list[Task]]:
    """Validated Tasks of the three calc PRs, their instance images kept for the harness."""
    root = tmp_path_factory.mktemp("harness")
    repo, prs = make_calc_repo(root)
    images: list[str] = []
    tasks: list[Task] = []
    validator = Validator(
        docker_client,
        ValidateConfig(
            validate_reruns_before=1,
            validate_reruns_after=2,
            validate_keep_instance_images=True,
        ),
    )
    try:
        for pr in prs:
            image = build_instance(docker_client, env_image, repo, pr, root)
            images.append(image)
            task = validator.validate(candidate_for(pr, image, env_image))
            assert sorted(task.FAIL_TO_PASS) == sorted(pr.fail_to_pass)
            # validation runs only the test modules the test patch touches
            touched = [t for t in pr.pass_to_pass if t.split("::")[0] in pr.test_paths]
            assert sorted(task.PASS_TO_PASS) == sorted(touched)
            tasks.append(task)
        yield tasks
    finally:
        for image in images:
            remove_instance_image(docker_client, image)


def build_instance(
    client: docker.DockerClient, env_image: str, repo: Path, pr: CalcPR, root: Path
) -> str:
    tree = GitRepo(repo).export_snapshot(pr.base, root / "trees" / pr.instance_id)
    dockerfile = HARNESS_INSTANCE_DOCKERFILE.format(env=env_image)
    tag = f"smelter-test/harness-instance:{stable_hash(dockerfile, pr.instance_id, pr.base)}"
    eng.build_image(
        client,
        dockerfile=dockerfile,
        tag=tag,
        # Unlabelled on purpose: `smelter images prune` (run by other tests on a shared engine)
        # removes every labelled instance image; this module removes its own.
        image_labels={},
        context_dirs={"testbed": tree},
    )
    return tag


def candidate_for(pr: CalcPR, image: str, env_image: str) -> Candidate:
    env = harness_environment(image, env_image)
    return Candidate(
        instance_id=pr.instance_id,
        repo="acme/calc",
        repo_url="calc",
        pull_number=pr.number,
        base_commit=pr.base,
        merge_commit=pr.merge,
        created_at="2024-01-01T00:00:00Z",
        problem_statement=f"calc PR {pr.number}: add() is wrong for negative numbers",
        patch=pr.patch,
        test_patch=pr.test_patch,
        code_files=pr.code_paths,
        test_files=pr.test_paths,
        environment=env,
    )


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The harness writes logs/ relative to the working directory."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _file_limit() -> int:
    """What run_evaluation.main sets RLIMIT_NOFILE to: the current hard limit, never lower."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return hard if hard != resource.RLIM_INFINITY else max(soft, 65536)


def _evaluate(dataset: Path, predictions: str, run_id: str, report_dir: Path) -> dict:
    from swebench.harness.run_evaluation import main as run_evaluation

    for attempt in range(3):
        try:
            report = run_evaluation(
                dataset_name=str(dataset),
                split="test",
                instance_ids=None,
                predictions_path=predictions,
                max_workers=1,
                open_file_limit=_file_limit(),
                run_id=run_id,
                timeout=600,
                rewrite_reports=False,
                modal=False,
                report_dir=str(report_dir),
            )
            return json.loads(Path(report).read_text())
        except docker.errors.NotFound:
            # The final report lists every image on the engine, then inspects each: an image
            # someone else removes in between raises. Finished instances keep their report.json,
            # so a second call only redoes the listing.
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _predictions(path: Path, tasks: list[Task], patch: str, model: str) -> Path:
    with jsonlines.open(path, "w") as w:
        w.write_all(
            {"instance_id": t.instance_id, "model_patch": patch, "model_name_or_path": model}
            for t in tasks
        )
    return path


def test_harness_resolves_gold_and_nothing_else_on_the_flat_dataset(
    harness_tasks: list[Task], in_tmp: Path
) -> None:
    paths = export_tasks(harness_tasks, in_tmp / "export")
    ids = sorted(t.instance_id for t in harness_tasks)

    gold = _evaluate(paths.jsonl, "gold", "smelter-gold", in_tmp / "reports")
    assert gold["resolved_ids"] == ids, gold
    assert gold["error_ids"] == [] and gold["unresolved_ids"] == []

    noop = _predictions(in_tmp / "noop.jsonl", harness_tasks, IRRELEVANT_PATCH, "noop")
    report = _evaluate(paths.jsonl, str(noop), "smelter-noop", in_tmp / "reports")
    assert report["completed_ids"] == ids, report  # the tests ran ...
    assert report["resolved_ids"] == [] and report["unresolved_ids"] == ids  # ... and failed

    empty = _predictions(in_tmp / "empty.jsonl", harness_tasks, "", "empty")
    report = _evaluate(paths.jsonl, str(empty), "smelter-empty", in_tmp / "reports")
    assert report["resolved_ids"] == [] and report["empty_patch_ids"] == ids, report


def _evaluate_task_repo(
    task_repo: Path,
    patches: dict[str, str],
    run_id: str,
    report_dir: Path,
    client: docker.DockerClient,
) -> dict:
    """swebench's run_instances + make_run_report on a task repo whose images are built."""
    from swebench.harness.reporting import make_run_report
    from swebench.harness.run_evaluation import run_instances
    from swebench.task.repo import load_task_repo

    instances = load_task_repo(task_repo)
    predictions = {
        i["instance_id"]: {
            "instance_id": i["instance_id"],
            "model_patch": patches[i["instance_id"]],
            "model_name_or_path": run_id,
        }
        for i in instances
    }
    run_instances(predictions, instances, 1, run_id, 600, task_repo=str(task_repo))
    for attempt in range(3):  # see _evaluate: the final listing races with image removals
        try:
            path = make_run_report(predictions, instances, run_id, client, str(report_dir))
            return json.loads(Path(path).read_text())
        except docker.errors.NotFound:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def test_harness_resolves_gold_from_the_task_repository(
    harness_tasks: list[Task], in_tmp: Path, docker_client: docker.DockerClient
) -> None:
    from swebench.task.checks import check_task_repo

    paths = export_tasks(harness_tasks, in_tmp / "export")
    assert check_task_repo(paths.task_repo) == []
    built = build_harness_images(paths.task_repo, docker_client)
    try:
        assert sorted(built) == sorted(t.instance_id for t in harness_tasks)
        gold = {t.instance_id: t.patch for t in harness_tasks}
        report = _evaluate_task_repo(
            paths.task_repo, gold, "smelter-repo-gold", in_tmp / "reports", docker_client
        )
        assert report["resolved_ids"] == sorted(built), report
    finally:
        for image in built.values():
            eng.remove_image(docker_client, image)


def test_missing_instance_image_is_one_fatal_line(
    harness_tasks: list[Task], tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    from smelter.transforms.errors import Fatal

    gone = harness_tasks[0].environment.model_copy(
        update={"instance_image": "smelter-test/never-built:0"}
    )
    task = harness_tasks[0].model_copy(update={"environment": gone})
    paths = export_tasks([task], tmp_path / "export")
    with pytest.raises(Fatal) as e:
        build_harness_images(paths.task_repo, docker_client)
    assert str(e.value) == (
        "1 harness image(s) not built, their instance images are missing: "
        f"{task.instance_id} (needs smelter-test/never-built:0); "
        "removed since the run (e.g. by `smelter images prune`): run `smelter run` again to "
        "rebuild them (validation keeps the images of the tasks it keeps)"
    )


HARNESS_DEMO_NAME = "smelter-harness/calc"


@pytest.fixture(scope="module")
def demo_tasks(
    tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient
) -> Iterator[list[Task]]:
    """The demo's validated tasks from the real pipeline, instance images kept for the harness."""
    from smelter.pipeline.demo.build import create_demo_repo

    root = tmp_path_factory.mktemp("demo-harness")
    demo = create_demo_repo(root / "calc")
    out = root / "out"
    argv = [sys.executable, "-m", "smelter.pipeline.cli", "run", "--repo", str(demo.path)]
    # A repository name of its own: instance tags derive from it, so a concurrent demo run
    # (whose validation removes its instance images) cannot remove the ones this test keeps.
    argv += ["--repo-name", HARNESS_DEMO_NAME, "--out", str(out), "--until", "validate"]
    argv += ["--validate-keep-instance-images", "--no-progress", "--workers", "1"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=3000)
    assert proc.returncode == 0, proc.stderr[-3000:]
    tasks = read_tasks(out / "tasks.jsonl")
    try:
        yield tasks
    finally:
        for task in tasks:  # what validation would have removed without the keep flag
            remove_instance_image(docker_client, task.environment.instance_image)


@pytest.mark.slow
def test_harness_resolves_every_demo_task_with_gold_and_none_without(
    demo_tasks: list[Task], in_tmp: Path, docker_client: docker.DockerClient
) -> None:
    from smelter.pipeline.demo.prs import DEMO_PRS

    ids = sorted(t.instance_id for t in demo_tasks)
    # the funnel itself is test_pipeline_e2e's business; here every task that came out counts
    valid = {f"{HARNESS_DEMO_NAME.replace('/', '__')}-{p.number}" for p in DEMO_PRS if p.valid}
    assert ids and set(ids) <= valid
    # The demo has a Latin-1 source file (PR 21): only the task repository's image carries the
    # gitattributes that keep swebench's strict-UTF-8 `git diff` logging from crashing on it.
    paths = export_tasks(demo_tasks, in_tmp / "export")
    built = build_harness_images(paths.task_repo, docker_client)
    try:
        gold = {t.instance_id: t.patch for t in demo_tasks}
        report = _evaluate_task_repo(
            paths.task_repo, gold, "demo-gold", in_tmp / "reports", docker_client
        )
        assert report["resolved_ids"] == ids, report

        noop = dict.fromkeys(ids, IRRELEVANT_PATCH)
        report = _evaluate_task_repo(
            paths.task_repo, noop, "demo-noop", in_tmp / "reports", docker_client
        )
        assert report["completed_ids"] == ids and report["resolved_ids"] == [], report
    finally:
        for image in built.values():
            eng.remove_image(docker_client, image)
