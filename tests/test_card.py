"""The dataset card as others rely on it: exact ``dataset_info`` features, version and setup
commit figures, no escape sequences, and a "How to evaluate" section whose commands run.

The folder is built from tasks with real git diffs (tests/test_publish.py's repository) and
shards written by the real shard writer, and loaded back with ``datasets`` offline. The
evaluation runs the card's own command lines with real Docker and swebench's harness on the
three validated calc tasks of tests/test_swebench_harness.py (its fixtures, not a demo run).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import docker
import jsonlines
import pytest

from smelter.pipeline.publish import card as card_mod
from smelter.pipeline.publish.harness import evaluate_command, harness_image_name
from smelter.pipeline.publish.hub import build_hub_folder
from smelter.pipeline.publish.swebench import swebench_row, write_task_repo
from smelter.schemas import Sample, Task
from smelter.transforms.adapters import docker_engine as eng
from smelter.transforms.pack.packing import pack_arrays
from smelter.transforms.pack.shards import TokenStore, write_shards
from smelter.transforms.util import tail
from tests.test_publish import build_tasks, offline  # noqa: F401  # fixture
from tests.test_swebench_harness import env_image, harness_tasks  # noqa: F401  # fixtures

# What uv prints for a failed resolution under FORCE_COLOR (captured from uv 0.13).
UV_COLOURED = (
    "\x1b[1m\x1b[31merror\x1b[39m\x1b[0m\x1b[1m:\x1b[0m No solution found when resolving "
    "dependencies\n  \x1b[1m\x1b[31mcause\x1b[39m\x1b[0m\x1b[1m:\x1b[0m Because nothing was "
    "found\n"
)


def write_output(out: Path, tasks: list[Task]) -> None:
    """A run's output folder: tasks.jsonl and shards from the real shard writer."""
    out.mkdir(parents=True)
    with jsonlines.open(out / "tasks.jsonl", "w") as w:
        w.write_all(t.model_dump(mode="json") for t in tasks)
    samples = [
        Sample(
            instance_id=t.instance_id,
            text=t.problem_statement,
            input_ids=list(range(1, 4 + i)),
            loss_mask=[0] + [1] * (2 + i),
            tokenizer="test",
        )
        for i, t in enumerate(tasks)
    ]
    store = TokenStore.from_samples(samples)
    write_shards(store, pack_arrays(store.lengths, 8, mode="split"), str(out / "shards"))


@pytest.fixture(scope="module")
def card_tasks(tmp_path_factory: pytest.TempPathFactory) -> list[Task]:
    """The publish tests' tasks with a version on two of three, setup commits assigned as the
    pipeline does, and a build log tail made from coloured uv output."""
    _, tasks = build_tasks(tmp_path_factory.mktemp("repo"))
    from smelter.transforms.environment.versions import with_setup_commits

    out = []
    for t, version in zip(tasks, ["1.2", "1.3", ""], strict=True):
        env = t.environment.model_copy(update={"build_log_tail": tail(UV_COLOURED, 2000)})
        out.append(t.model_copy(update={"version": version, "environment": env}))
    return with_setup_commits(out)


def test_dataset_info_features_are_exactly_what_load_dataset_yields(
    card_tasks: list[Task],
    tmp_path: Path,
    offline: Path,  # noqa: F811
) -> None:
    import datasets

    write_output(tmp_path / "out", card_tasks)
    folder = build_hub_folder(tmp_path / "out", tmp_path / "hub", repo_id="acme/calc")
    meta = card_mod.parse_card(folder.card.read_text())
    infos = {i["config_name"]: i for i in meta["dataset_info"]}
    assert sorted(infos) == ["shards", "tasks"] == sorted(c["config_name"] for c in meta["configs"])
    expected = card_mod.config_features()
    for name, info in infos.items():
        stated = datasets.Features._from_yaml_list(info["features"])
        assert stated == expected[name], name
        loaded = datasets.load_dataset(str(folder.path), name, cache_dir=str(offline))
        (split,) = loaded.values()
        assert split.features == stated, name
        # and what the Parquet files hold, read without the card
        files = sorted(str(p) for p in (folder.path / "data" / name).glob("*.parquet"))
        raw = datasets.load_dataset("parquet", data_files=files, cache_dir=str(offline))
        assert raw["train"].features == stated, name
    assert infos["tasks"]["splits"] == [{"name": "test", "num_examples": 3}]
    shards = expected["shards"]
    assert shards["input_ids"] == datasets.List(datasets.Value("int32"))
    assert shards["loss_mask"] == datasets.List(datasets.Value("bool"))
    assert shards["doc_starts"] == datasets.List(datasets.Value("int64"))
    assert expected["tasks"]["environment"]["build_seconds"] == datasets.Value("float64")


def test_single_config_info_is_a_mapping_that_loads(
    card_tasks: list[Task],
    tmp_path: Path,
    offline: Path,  # noqa: F811
) -> None:
    import datasets

    out = tmp_path / "out"
    out.mkdir()
    with jsonlines.open(out / "tasks.jsonl", "w") as w:
        w.write_all(t.model_dump(mode="json") for t in card_tasks)
    folder = build_hub_folder(out, tmp_path / "hub", repo_id="acme/x", tasks_split="train")
    info = card_mod.parse_card(folder.card.read_text())["dataset_info"]
    assert info["config_name"] == "tasks"
    loaded = datasets.load_dataset(str(folder.path), cache_dir=str(offline))
    assert loaded["train"].features == card_mod.config_features(has_shards=False)["tasks"]


def test_card_reports_versions_and_setup_commits_and_holds_no_escape_codes(
    card_tasks: list[Task], tmp_path: Path
) -> None:
    text = card_mod.dataset_card(card_tasks, repo_id="acme/calc")
    assert "| versions | 1.2, 1.3 |" in text
    assert "| tasks without a version (no tag, no static version) | 1 |" in text
    commits = {t.environment_setup_commit for t in card_tasks}
    assert len(commits) == 1  # one repository, one env image: one setup commit
    assert f"| environment setup commits | {len(commits)} |" in text
    root = write_task_repo(card_tasks, tmp_path / "task_repo")
    for t in card_tasks:
        task_yaml = (root / "tasks" / t.instance_id / "task.yaml").read_text()
        assert "\x1b" not in task_yaml and "error: No solution found" in task_yaml
        assert f"environment_setup_commit: {t.environment_setup_commit}" in task_yaml
    row = swebench_row(card_tasks[1])
    assert row["version"] == "1.3"
    assert row["environment_setup_commit"] == card_tasks[0].base_commit
    assert "\x1b" not in json.dumps(row, ensure_ascii=False) and "\x1b" not in text


def test_how_to_evaluate_section_is_the_export_line(card_tasks: list[Task]) -> None:
    text = card_mod.dataset_card(card_tasks, repo_id="acme/calc")
    block = text.split("## How to evaluate", 1)[1].split("```sh\n", 1)[1].split("\n```", 1)[0]
    assert block.splitlines() == card_mod.evaluate_commands()
    assert block.splitlines()[1] == evaluate_command("X")


# ------------------------------------------------------------------------------ with Docker


def _run(line: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """One card line as a user runs it, console scripts from this environment."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(
        shlex.split(line), cwd=cwd, env=env, capture_output=True, text=True, timeout=1200
    )


@pytest.mark.docker
@pytest.mark.slow
def test_how_to_evaluate_commands_resolve_every_task(
    harness_tasks: list[Task],  # noqa: F811
    docker_client: docker.DockerClient,
    tmp_path: Path,
) -> None:
    # Own instance ids: the harness images they name are this test's, not the harness tests'.
    tasks = [
        t.model_copy(update={"instance_id": t.instance_id.replace("acme__", "cardtest__")})
        for t in harness_tasks
    ]
    out, dest = tmp_path / "out", tmp_path / "X"
    out.mkdir()
    with jsonlines.open(out / "tasks.jsonl", "w") as w:
        w.write_all(t.model_dump(mode="json") for t in tasks)
    lines = card_mod.evaluate_commands(str(out), str(dest))
    assert (
        lines
        == card_mod.evaluate_section(str(out), str(dest))
        .split("```sh\n")[1]
        .split("\n```")[0]
        .splitlines()
    )
    images = [harness_image_name(t.instance_id) for t in tasks]
    try:
        export = _run(lines[0], tmp_path)
        assert export.returncode == 0, export.stderr[-2000:]
        assert f"evaluate with: {lines[1]}" in export.stdout
        for _attempt in range(3):
            # swebench's closing report inspects every image on the engine; one another test
            # removes meanwhile fails that listing (finished instances keep their reports)
            evaluation = _run(lines[1], tmp_path)
            if evaluation.returncode == 0:
                break
        assert evaluation.returncode == 0, evaluation.stderr[-2000:]
        (report,) = tmp_path.glob("gold.*.json")
        summary = json.loads(report.read_text())
        assert sorted(summary["resolved_ids"]) == sorted(t.instance_id for t in tasks)
        assert summary["unresolved_instances"] == 0
    finally:
        for image in images:
            eng.remove_image(docker_client, image)
