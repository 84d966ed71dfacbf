"""A task whose source and test files are Latin-1 (a 0xb0 byte), on every swebench route.

A small real repository built here: ``units/__init__.py`` and ``tests/test_units.py`` are
Latin-1 with a degree sign, and the PR changes both. As the miner does for text that is not
UTF-8, the patches carry those files as git binary hunks; the validate stage turns the PR into
a Task on a real instance image. swebench's harness logs ``git diff`` decoded as strict UTF-8
(``UnicodeDecodeError 0xb0`` before any test ran); the harness image ``--harness-images``
builds carries gitattributes that print those files as binary. With it, gold resolves and an
empty patch does not on each route this machine has (Debian docker.io, no buildx, no pull):

- the flat JSONL (``smelter export --harness-images``), through the printed ``swebench eval``;
- the Hugging Face folder's tasks Parquet (``smelter publish --harness-images``), through
  ``swebench eval FILE.parquet``;
- the task repository, through swebench's own loader and ``run_instances`` on images built
  by ``build_harness_images`` (``swebench eval --task-repo`` itself deletes them and
  rebuilds with ``docker buildx`` first, which this engine lacks: see the README).
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import docker
import jsonlines
import pytest

from smelter.pipeline.publish.harness import evaluate_argv, evaluate_command, harness_image_name
from smelter.pipeline.publish.hub import build_hub_folder
from smelter.pipeline.publish.images import build_harness_images
from smelter.pipeline.publish.swebench import export_tasks
from smelter.schemas import Candidate, Task
from smelter.transforms.adapters import docker_engine as eng
from smelter.transforms.adapters.git import GitRepo
from smelter.transforms.util import stable_hash
from smelter.transforms.validate.config import ValidateConfig
from smelter.transforms.validate.validate import Validator
from tests._calc_repo import git, write
from tests.fixtures.validate import (
    HARNESS_INSTANCE_DOCKERFILE,
    harness_environment,
    remove_instance_image,
)
from tests.test_harness_export import _env, _swebench

pytestmark = [pytest.mark.docker, pytest.mark.slow]


CODE = b"# -*- coding: latin-1 -*-\n# temperatures in \xb0C\nSYMBOL = '\xb0'\n\n\ndef fmt(x):\n"
TESTS = b"# -*- coding: latin-1 -*-\nfrom units import fmt\n\n\ndef test_plain():\n"
TESTS += b"    assert fmt(3).startswith('3')\n"
INSTANCE_ID = "acme__units-1"


def make_latin1_repo(root: Path) -> tuple[Path, str, str]:
    """The repository, its base commit and its merge commit (the PR: a fix and a new test)."""
    repo = root / "units"
    repo.mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    write(repo, {"pytest.ini": "[pytest]\npythonpath = .\n"})
    write(
        repo, {"units/__init__.py": CODE + b"    return '%d' % x\n", "tests/test_units.py": TESTS}
    )
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "units")
    base = git(repo, "rev-parse", "HEAD").strip()
    fixed = (
        CODE.replace(b"\xb0C", b"\xb0C (degrees Celsius)") + b"    return '%d%s' % (x, SYMBOL)\n"
    )
    new_test = TESTS + b"\n\ndef test_degree():\n    assert fmt(25) == '25\xb0'\n"
    write(repo, {"units/__init__.py": fixed, "tests/test_units.py": new_test})
    git(repo, "commit", "-qam", "Show the degree sign (#1)")
    return repo, base, git(repo, "rev-parse", "HEAD").strip()


@pytest.fixture(scope="module")
def latin1_task(
    tmp_path_factory: pytest.TempPathFactory,
    docker_client: docker.DockerClient,
    venv_pytest_image: str,
) -> Iterator[Task]:
    """The validated Task, its instance image removed after the module."""
    root = tmp_path_factory.mktemp("latin1")
    repo, base, merge = make_latin1_repo(root)
    g = GitRepo(repo)

    def diff(path: str) -> str:
        # not UTF-8: a base85 binary hunk, as the miner writes it (ASCII whatever the bytes)
        return g.diff_binary(base, merge, paths=[path], force_binary=True).decode("ascii")

    patch, test_patch = diff("units/__init__.py"), diff("tests/test_units.py")
    assert "GIT binary patch" in patch and "GIT binary patch" in test_patch
    tree = g.export_snapshot(base, root / "testbed")
    dockerfile = HARNESS_INSTANCE_DOCKERFILE.format(env=venv_pytest_image)
    image = f"smelter-test/latin1-instance:{stable_hash(dockerfile, base)}"
    # Unlabelled: `smelter images prune` run by other tests must not take it; removed below.
    eng.build_image(docker_client, dockerfile=dockerfile, tag=image, image_labels={},
                    context_dirs={"testbed": tree})  # fmt: skip
    env = harness_environment(image, venv_pytest_image)
    candidate = Candidate(
        instance_id=INSTANCE_ID,
        repo="acme/units",
        repo_url=str(repo),
        pull_number=1,
        base_commit=base,
        merge_commit=merge,
        created_at="2024-01-01T00:00:00Z",
        problem_statement="fmt() should print the degree sign",
        patch=patch,
        test_patch=test_patch,
        code_files=["units/__init__.py"],
        test_files=["tests/test_units.py"],
        environment=env,
    )
    config = ValidateConfig(validate_reruns_before=1, validate_reruns_after=1)
    try:
        task = Validator(docker_client, config).validate(candidate)
        assert task.FAIL_TO_PASS == ["tests/test_units.py::test_degree"]
        assert task.PASS_TO_PASS == ["tests/test_units.py::test_plain"]
        yield task
    finally:  # the harness image the tests build first: it holds the instance image
        eng.remove_image(docker_client, harness_image_name(INSTANCE_ID))
        remove_instance_image(docker_client, image)


def _empty(path: Path) -> Path:
    with jsonlines.open(path, "w") as w:
        w.write({"instance_id": INSTANCE_ID, "model_patch": "", "model_name_or_path": "empty"})
    return path


def test_flat_jsonl_with_harness_images(latin1_task: Task, tmp_path: Path) -> None:
    paths = export_tasks([latin1_task], tmp_path / "X", harness_images=True)
    build_harness_images(paths.task_repo, eng.connect())
    gold = shlex.split(evaluate_command(tmp_path / "X"))
    report = _swebench(gold, tmp_path / "gold", "smelter-gold", "gold")
    assert report["resolved_ids"] == [INSTANCE_ID], report
    argv = evaluate_argv(paths.jsonl, _empty(tmp_path / "e.jsonl"), run_id="empty")
    report = _swebench(argv, tmp_path / "empty", "empty", "empty")
    assert report["resolved_ids"] == [], report


def test_hub_folder_parquet_with_harness_images(
    latin1_task: Task, tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "tasks.jsonl").write_text(latin1_task.model_dump_json() + "\n")
    folder = build_hub_folder(out, tmp_path / "hub", harness_images=True)
    build_harness_images(folder.path / "task_repo", docker_client)
    (parquet,) = (folder.path / "data" / "tasks").glob("*.parquet")
    argv = evaluate_argv(parquet, run_id="hub-gold")
    report = _swebench(argv, tmp_path / "gold", "hub-gold", "gold")
    assert report["resolved_ids"] == [INSTANCE_ID], report


def test_task_repo_with_prebuilt_harness_images(
    latin1_task: Task, tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    """swebench's task-repo loader and its instance runner, on the images our builder made.

    Run in a subprocess: the harness writes logs/ under the working directory.
    """
    paths = export_tasks([latin1_task], tmp_path / "X", harness_images=True)
    build_harness_images(paths.task_repo, docker_client)
    script = f"""
import json
import docker
from swebench.harness.reporting import make_run_report
from swebench.harness.run_evaluation import run_instances
from swebench.task.repo import load_task_repo

repo = {str(paths.task_repo)!r}
instances = load_task_repo(repo)
for run_id, patch in (("repo-gold", instances[0]["patch"]), ("repo-empty", "")):
    preds = {{i["instance_id"]: {{"instance_id": i["instance_id"], "model_patch": patch,
                                 "model_name_or_path": run_id}} for i in instances}}
    run_instances(preds, instances, 1, run_id, 600, task_repo=repo)
    path = make_run_report(preds, instances, run_id, docker.from_env(), ".")
    print(run_id, json.dumps(json.load(open(path))["resolved_ids"]))
"""
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=_env(),
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if line[:5] == "repo-")
    assert json.loads(results["repo-gold"]) == [INSTANCE_ID], proc.stdout
    assert json.loads(results["repo-empty"]) == [], proc.stdout
