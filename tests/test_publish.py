"""The exports: SWE-bench rows, the swebench task repository, the Hugging Face folder, the CLI.

Task records are built from a real git repository (real diffs, a binary test fixture, a new
test file), checked with swebench's own task checks and loaders, graded with swebench's own
grading on a host run of the exported eval.sh, and loaded back with ``datasets`` offline.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jsonlines
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from smelter.pipeline.cli import main
from smelter.pipeline.publish import card as card_mod
from smelter.pipeline.publish.card import DEFAULT_DATASET_NAME
from smelter.pipeline.publish.harness import (
    END_MARKER,
    START_MARKER,
    _heredoc_delimiter,
    eval_script,
    evaluate_argv,
    evaluate_command,
    harness_dockerfile,
    harness_gitattributes,
    harness_image_name,
    patched_files,
    ungradable_tests,
)
from smelter.pipeline.publish.hub import build_hub_folder, push_folder
from smelter.pipeline.publish.images import archive_file_name, archive_groups
from smelter.pipeline.publish.swebench import (
    SWEBENCH_COLUMNS,
    export_tasks,
    swebench_row,
    tasks_arrow_schema,
    write_rows_parquet,
)
from smelter.schemas import (
    Dockerfiles,
    Environment,
    Provenance,
    Quality,
    ShardRow,
    Task,
    TestRun,
    TestStatus,
    Validation,
)
from tests._calc_repo import git, make_calc_repo


def make_environment(iid: str, python_version: str = "3.11") -> Environment:
    h = f"{abs(hash(iid)) % 10**12:012d}"
    return Environment(
        python_version=python_version,
        base_image="smelter/base:bookworm-py3.11",
        env_image="smelter/env:0123456789abcdef",
        instance_image=f"smelter/inst:{h}",
        env_hash="0123456789abcdef",
        recipe="pyproject",
        install_commands=["uv pip install -e ."],
        test_command=["python", "-m", "pytest", "-p", "no:cacheprovider"],
        test_files=["tests/test_core.py"],
        exclude_newer="2023-11-14T22:13:20Z",
        frozen_requirements=["pytest==8.3.3"],
        dockerfiles=Dockerfiles(base="FROM scratch\n", env="FROM base\n", instance="FROM env\n"),
        build_seconds=12.5,
    )


def make_validation(f2p: list[str], p2p: list[str]) -> Validation:
    before = {t: TestStatus.FAILED for t in f2p} | {t: TestStatus.PASSED for t in p2p}
    after = {t: TestStatus.PASSED for t in [*f2p, *p2p]}
    runs = [
        TestRun(side="before", attempt=i, exit_code=1, duration_seconds=0.4, statuses=before)
        for i in range(2)
    ] + [
        TestRun(side="after", attempt=i, exit_code=0, duration_seconds=0.3, statuses=after)
        for i in range(3)
    ]
    return Validation(runs=runs, flaky=["tests/test_core.py::test_flaky"], seconds=4.2)


def build_tasks(root: Path) -> tuple[Path, list[Task]]:
    """A real repository with three merged PRs and their Task records (real git diffs)."""
    repo, prs = make_calc_repo(root)
    tasks = []
    for pr in prs:
        n, iid = pr.number, pr.instance_id
        statement = f"Issue {n}: `add` is wrong for some inputs.\n\nSteps:\n1. call it\n"
        tasks.append(
            Task(
                instance_id=iid,
                repo="acme/calc",
                base_commit=pr.base,
                patch=pr.patch,
                test_patch=pr.test_patch,
                problem_statement=statement,
                hints_text="Look at core.py\n" if n == 1 else "",
                created_at=f"2023-11-1{n}T10:00:00Z",
                version="0.1",
                FAIL_TO_PASS=pr.fail_to_pass,
                PASS_TO_PASS=pr.pass_to_pass,
                environment=make_environment(iid),
                validation=make_validation(pr.fail_to_pass, pr.pass_to_pass),
                quality=None
                if n == 3
                else Quality(
                    raw_problem_statement=statement,
                    normalized_statement=statement,
                    specification_score=3,
                    test_alignment_score=2,
                ),
                provenance=Provenance(
                    source="git", pull_number=n, merge_commit=pr.merge, linked_issues=[n]
                ),
            )
        )
    return repo, tasks


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Task]]:
    return build_tasks(tmp_path_factory.mktemp("repo"))


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No Hub access, and datasets' caches inside tmp_path."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    import datasets.config

    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    return tmp_path / "hf_cache"


# --------------------------------------------------------------------------------- pure parts


def test_test_lists_are_json_strings_like_public_swebench(built: tuple[Path, list[Task]]) -> None:
    _, tasks = built
    row = swebench_row(tasks[1])
    # The public datasets store json.dumps(list) (", " separators), never a Python repr.
    assert row["FAIL_TO_PASS"] == (
        '["tests/test_mul.py::test_mul[2-3-6]", "tests/test_mul.py::test_mul[0-5-0]", '
        '"tests/test_mul.py::TestMul::test_blob"]'
    )
    assert json.loads(row["PASS_TO_PASS"]) == tasks[1].PASS_TO_PASS
    assert list(row)[: len(SWEBENCH_COLUMNS)] == list(SWEBENCH_COLUMNS)
    assert row["image"] == tasks[1].environment.instance_image
    assert row["log_parser"] == "parse_log_pytest" and row["eval_type"] == "pass_and_fail"
    assert row["environment_setup_commit"] == tasks[1].base_commit
    assert json.loads(row["validation"])["flaky"] == ["tests/test_core.py::test_flaky"]


def test_patched_files_sees_new_and_binary_files(built: tuple[Path, list[Task]]) -> None:
    _, tasks = built
    files = patched_files(tasks[1].test_patch)
    assert [(f.path, f.new) for f in files] == [
        ("tests/data/blob.bin", True),
        ("tests/test_mul.py", True),
    ]
    assert [(f.path, f.new) for f in patched_files(tasks[0].test_patch)] == [
        ("tests/test_core.py", False)
    ]


def test_eval_script_shape(built: tuple[Path, list[Task]]) -> None:
    _, tasks = built
    script = eval_script(tasks[1])
    lines = script.splitlines()
    start = lines.index(f": '{START_MARKER}'")
    end = lines.index(f": '{END_MARKER}'")
    # swebench stores the test command's $? right before the end marker: it must be the command.
    assert end == start + 2
    assert lines[start + 1] == (
        "$as_owner python -m pytest -p no:cacheprovider -rA --rootdir=/testbed "
        "--continue-on-collection-errors tests/test_core.py tests/test_mul.py"
    )
    assert "conda" not in script and "cd /testbed" in lines
    assert "rm -f -- tests/data/blob.bin tests/test_mul.py" in lines  # new files are removed
    assert "GIT binary patch" in script


def test_heredoc_delimiter_never_occurs_in_the_patch() -> None:
    assert _heredoc_delimiter("x\nEOF_SMELTER_0\n") == "EOF_SMELTER_1"


def test_harness_image_name_matches_swebench() -> None:
    from swebench.task.checks import expected_image

    for iid in ("acme__calc-1", "Psf__Requests-12", "a__b__c-3"):
        assert harness_image_name(iid) == expected_image(iid)


def test_ungradable_ids_are_reported(built: tuple[Path, list[Task]]) -> None:
    _, tasks = built
    task = tasks[0].model_copy(update={"FAIL_TO_PASS": ["tests/t.py::test_x[a b]"]})
    assert ungradable_tests(task) == ["tests/t.py::test_x[a b]"]
    assert ungradable_tests(tasks[0]) == []


def test_arrow_schema_is_fixed_even_when_a_block_is_null_everywhere(
    built: tuple[Path, list[Task]], tmp_path: Path
) -> None:
    _, tasks = built
    no_quality = [t for t in tasks if t.quality is None]
    path = write_rows_parquet([swebench_row(t) for t in no_quality], tmp_path / "t.parquet")
    schema = pq.read_schema(path)
    assert pa.types.is_struct(schema.field("quality").type)
    assert schema.field("quality").type.get_field_index("specification_score") >= 0
    assert schema == tasks_arrow_schema()


def test_size_category() -> None:
    assert card_mod.size_category(3) == "n<1K"
    assert card_mod.size_category(1000) == "1K<n<10K"
    assert card_mod.size_category(250_000) == "100K<n<1M"


# -------------------------------------------------------------------------- swebench's checks


def test_task_repo_passes_swebench_checks(built: tuple[Path, list[Task]], tmp_path: Path) -> None:
    from swebench.harness.utils import make_test_spec
    from swebench.task.checks import check_task_repo
    from swebench.task.repo import load_task_repo

    _, tasks = built
    paths = export_tasks(tasks, tmp_path / "export")
    problems = check_task_repo(paths.task_repo)
    assert [str(p) for p in problems] == []

    loaded = {i["instance_id"]: i for i in load_task_repo(paths.task_repo)}
    assert sorted(loaded) == [t.instance_id for t in tasks]
    for task in tasks:
        inst = loaded[task.instance_id]
        assert inst["patch"] == task.patch and inst["test_patch"] == task.test_patch
        assert inst["FAIL_TO_PASS"] == task.FAIL_TO_PASS
        assert inst["PASS_TO_PASS"] == task.PASS_TO_PASS
        assert inst["problem_statement"] == task.problem_statement
        assert inst["hints_text"] == task.hints_text
        assert inst["instance_image"] == task.environment.instance_image
        assert inst["environment"]["test_command"] == task.environment.test_command
        spec = make_test_spec(inst)
        assert spec.image == harness_image_name(task.instance_id)
        assert spec.FAIL_TO_PASS == task.FAIL_TO_PASS
        dockerfile = (paths.task_repo / "tasks" / task.instance_id / "Dockerfile").read_text()
        assert f"FROM {task.environment.instance_image}" in dockerfile
    assert not (paths.task_repo / "tasks" / "acme__calc-2" / "hints.md").exists()
    assert (paths.task_repo / "tasks" / "acme__calc-1" / "hints.md").read_text() == (
        "Look at core.py\n"
    )


def test_swebench_compiles_the_task_repo_into_a_dataset(
    built: tuple[Path, list[Task]], tmp_path: Path
) -> None:
    from swebench.task.publish import write_parquets

    _, tasks = built
    paths = export_tasks(tasks, tmp_path / "export")
    written = write_parquets(paths.task_repo, tmp_path / "compiled")
    table = pq.read_table(written[f"{DEFAULT_DATASET_NAME}/test"])
    assert sorted(table.column("instance_id").to_pylist()) == [t.instance_id for t in tasks]


def test_problem_check_catches_a_broken_export(
    built: tuple[Path, list[Task]], tmp_path: Path
) -> None:
    """The checks are not vacuous: drop a marker and they complain."""
    from swebench.task.checks import check_task_repo, errors

    _, tasks = built
    paths = export_tasks(tasks, tmp_path / "export")
    eval_sh = paths.task_repo / "tasks" / tasks[0].instance_id / "eval.sh"
    eval_sh.write_text(eval_sh.read_text().replace(END_MARKER, "end"))
    assert any("End Test Output" in p.message for p in errors(check_task_repo(paths.task_repo)))


def test_jsonl_is_what_swebench_loads(built: tuple[Path, list[Task]], tmp_path: Path) -> None:
    from swebench.harness.utils import load_swebench_dataset, make_test_spec

    _, tasks = built
    paths = export_tasks(tasks, tmp_path / "export")
    rows = load_swebench_dataset(str(paths.jsonl), "test")
    assert [r["instance_id"] for r in rows] == [t.instance_id for t in tasks]
    for row, task in zip(rows, tasks, strict=True):
        assert isinstance(row["FAIL_TO_PASS"], str)
        spec = make_test_spec(row)
        assert spec.image == task.environment.instance_image
        assert spec.FAIL_TO_PASS == task.FAIL_TO_PASS


# ------------------------------------------------- the eval script, run and graded by swebench


def _run_eval(repo: Path, task: Task, workdir: Path, candidate: str | None) -> str:
    """Check the task out at base_commit, apply the candidate, run eval.sh on the host."""
    if workdir.exists():
        shutil.rmtree(workdir)
    git(repo, "worktree", "add", "-q", "--detach", str(workdir), task.base_commit)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "GIT_"))}
    env |= {"HOME": str(workdir.parent), "PATH": f"{Path(sys.executable).parent}:{env['PATH']}"}
    if candidate:
        subprocess.run(
            ["git", "apply", "--binary", "-"], cwd=workdir, input=candidate.encode(), check=True
        )
    script = eval_script(task, workdir=str(workdir))
    # stderr merged into stdout, as `docker exec` hands the harness one stream
    done = subprocess.run(
        ["bash", "-c", script],
        cwd="/",
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=120,
    )
    git(repo, "worktree", "remove", "--force", str(workdir))
    return done.stdout


def _grade(task: Task, log: str, tmp_path: Path) -> bool:
    from swebench.harness.grading import get_eval_report
    from swebench.harness.utils import make_test_spec

    row = swebench_row(task)
    spec = make_test_spec(row)
    log_path = tmp_path / f"{task.instance_id}.log"
    log_path.write_text(log)
    pred = {"instance_id": task.instance_id, "model_patch": "x", "model_name_or_path": "t"}
    report = get_eval_report(spec, pred, str(log_path), include_tests_status=True)
    return bool(report[task.instance_id]["resolved"])


@pytest.mark.slow  # a real subprocess run: seconds (make unit skips it)
def test_eval_script_on_the_host_grades_gold_resolved_and_no_patch_unresolved(
    built: tuple[Path, list[Task]], tmp_path: Path
) -> None:
    """swebench's own parser and grading read our eval.sh output (no Docker needed)."""
    repo, tasks = built
    for task in tasks:
        gold = _run_eval(repo, task, tmp_path / "testbed", task.patch)
        # graded from inside the markers, not from swebench's whole-log fallback
        inside = gold.split(START_MARKER)[1].split(END_MARKER)[0]
        assert all(f"PASSED {t}" in inside for t in task.FAIL_TO_PASS), gold[-3000:]
        assert _grade(task, gold, tmp_path), gold[-3000:]
        empty = _run_eval(repo, task, tmp_path / "testbed", None)
        assert not _grade(task, empty, tmp_path), empty[-3000:]


# ------------------------------------------------------------------- Hugging Face dataset folder


def write_run_output(out: Path, tasks: list[Task]) -> None:
    """A run's output folder as the pipeline leaves it: tasks, shards, stats, funnel."""
    out.mkdir(parents=True, exist_ok=True)
    with jsonlines.open(out / "tasks.jsonl", "w") as w:
        w.write_all(t.model_dump(mode="json") for t in tasks)
    rows = [
        ShardRow(
            input_ids=[1, 2, 3, 4],
            position_ids=[0, 1, 0, 1],
            loss_mask=[0, 1, 0, 1],
            doc_lengths=[2, 2],
            doc_ids=[tasks[0].instance_id, tasks[1].instance_id],
            num_tokens=4,
        ),
        ShardRow(
            input_ids=[5, 6, 7, 0],
            position_ids=[0, 1, 2, 0],
            loss_mask=[0, 1, 1, 0],
            doc_lengths=[3],
            doc_ids=[tasks[2].instance_id],
            num_tokens=3,
        ),
    ]
    (out / "shards").mkdir()
    pq.write_table(
        pa.Table.from_pylist([r.model_dump() for r in rows]), out / "shards" / "shard-00000.parquet"
    )
    (out / "shards" / "stats.json").write_text(
        json.dumps({"sequences": 2, "tokens": 7, "fill_ratio": 0.875, "documents_split": 0})
    )
    (out / "run.json").write_text(
        json.dumps(
            {
                "started_at": "2026-01-01T00:00:00Z",
                "wall_seconds": 12.5,
                "versions": {"swe-smelter": "0.1.0"},
                "plan": {"config": {"validate": {"validate_reruns_after": 3}}},
            }
        )
    )
    (out / "funnel.json").write_text(
        json.dumps(
            {
                "stages": [
                    {"stage": "mine", "in": 5, "out": 4, "rejected": {"no_test_changes": 1}},
                    {"stage": "validate", "in": 4, "out": 3, "rejected": {"passes_before": 1}},
                ]
            }
        )
    )


def test_hub_folder_loads_offline_and_card_round_trips(
    built: tuple[Path, list[Task]], tmp_path: Path, offline: Path
) -> None:
    import datasets

    _, tasks = built
    out = tmp_path / "out"
    write_run_output(out, tasks)
    folder = build_hub_folder(out, tmp_path / "hub", repo_id="acme/calc-tasks")
    assert (folder.tasks, folder.shard_files) == (3, 1)

    meta = card_mod.parse_card(folder.card.read_text())
    assert meta["license"] == "other"
    assert meta["size_categories"] == ["n<1K"]
    configs = {c["config_name"]: c for c in meta["configs"]}
    assert set(configs) == {"tasks", "shards"}
    assert configs["shards"]["data_files"] == [{"split": "train", "path": "data/shards/*.parquet"}]
    card = folder.card.read_text()
    assert "| tasks | 3 |" in card and "| acme/calc | 3 |" in card
    assert "| fill_ratio | 0.875 |" in card and "| validate | 4 | 3 | passes_before 1 |" in card
    assert '"swe-smelter": "0.1.0"' in card and '"config_hash": "' in card

    loaded = datasets.load_dataset(str(folder.path), "tasks", cache_dir=str(offline))
    rows = sorted(loaded["test"], key=lambda r: r["instance_id"])
    assert [r["instance_id"] for r in rows] == [t.instance_id for t in tasks]
    assert json.loads(rows[1]["FAIL_TO_PASS"]) == tasks[1].FAIL_TO_PASS
    assert rows[1]["environment"]["instance_image"] == tasks[1].environment.instance_image
    assert rows[2]["quality"] is None and rows[0]["quality"]["specification_score"] == 3
    assert rows[0]["provenance"]["pull_number"] == 1

    shards = datasets.load_dataset(str(folder.path), "shards", cache_dir=str(offline))
    assert shards["train"].num_rows == 2
    assert shards["train"][0]["doc_ids"] == [tasks[0].instance_id, tasks[1].instance_id]
    # the task repo travels with the dataset and still passes swebench's checks
    from swebench.task.checks import check_task_repo

    assert check_task_repo(folder.path / "task_repo") == []


def test_hub_folder_without_shards_has_only_the_tasks_config(
    built: tuple[Path, list[Task]], tmp_path: Path, offline: Path
) -> None:
    import datasets

    _, tasks = built
    out = tmp_path / "out"
    out.mkdir()
    with jsonlines.open(out / "tasks.jsonl", "w") as w:
        w.write_all(t.model_dump(mode="json") for t in tasks)
    folder = build_hub_folder(out, tmp_path / "hub", repo_id="acme/x", tasks_split="train")
    meta = card_mod.parse_card(folder.card.read_text())
    assert [c["config_name"] for c in meta["configs"]] == ["tasks"]
    loaded = datasets.load_dataset(str(folder.path), "tasks", cache_dir=str(offline))
    assert loaded["train"].num_rows == 3


# ------------------------------------------------------------------------------------------ CLI


def test_cli_export_and_publish(
    built: tuple[Path, list[Task]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, tasks = built
    out = tmp_path / "out"
    write_run_output(out, tasks)
    assert main(["export", str(out)]) == 0
    assert (out / "export" / "tasks.parquet").is_file()
    assert (out / "export" / "task_repo" / "sweb.yaml").is_file()

    secret = "hf_SECRETSECRETSECRET123"
    monkeypatch.setenv("HF_TOKEN", secret)
    hub = tmp_path / "hub"
    assert main(["publish", str(out), "--dest", str(hub), "--repo-id", "acme/calc"]) == 0
    for f in hub.rglob("*"):
        if f.is_file():
            assert secret.encode() not in f.read_bytes(), f

    monkeypatch.delenv("HF_TOKEN")
    capsys.readouterr()
    assert main(["publish", str(out), "--dest", str(hub), "--repo-id", "a/b", "--push"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == (
        "smelter: error: --push needs a Hugging Face token in the HF_TOKEN environment variable"
    )


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", str(tmp_path / "nowhere")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("smelter: error: no tasks file at") and "\n" not in err

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "tasks.jsonl").write_text('{"instance_id": "x"}\n')
    assert main(["publish", str(bad), "--dest", str(tmp_path / "hub")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"smelter: error: {bad / 'tasks.jsonl'}:1: not a Task record")


def test_cli_help(capsys: pytest.CaptureFixture[str]) -> None:
    for cmd in ("export", "publish"):
        with pytest.raises(SystemExit) as e:
            main([cmd, "--help"])
        assert e.value.code == 0
        assert "OUT" in capsys.readouterr().out


def test_harness_dockerfile_links_a_workdir_that_is_not_testbed(
    built: tuple[Path, list[Task]],
) -> None:
    _, tasks = built
    plain = harness_dockerfile(tasks[0])
    assert "RUN" not in plain and plain.endswith("USER root\nWORKDIR /testbed\n")
    env = tasks[0].environment.model_copy(update={"workdir": "/src/calc"})
    moved = harness_dockerfile(tasks[0].model_copy(update={"environment": env}))
    assert "RUN ln -sfn /src/calc /testbed\n" in moved


def test_push_failure_is_one_line_and_never_shows_the_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hub that refuses connections (a closed port on 127.0.0.1): one line, no token."""
    import socket

    from smelter.transforms.errors import Fatal

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nothing listens there
    folder = tmp_path / "hub"
    folder.mkdir()
    (folder / "README.md").write_text("---\nlicense: other\n---\n")
    secret = "hf_SECRETSECRETSECRET123"
    with pytest.raises(Fatal) as e:
        push_folder(folder, "acme/calc", secret, endpoint=f"http://127.0.0.1:{port}")
    message = str(e.value)
    assert message.startswith("push to acme/calc failed: ") and "\n" not in message
    assert secret not in message


def test_binary_hunks_get_gitattributes_in_the_harness_image(
    built: tuple[Path, list[Task]], tmp_path: Path
) -> None:
    """swebench logs `git diff` as strict UTF-8: files git carries as binary are marked -diff."""
    _, tasks = built
    assert harness_gitattributes(tasks[0]) == ""
    assert harness_gitattributes(tasks[1]) == "/tests/data/blob.bin -diff\n"
    paths = export_tasks(tasks, tmp_path / "export")
    d = paths.task_repo / "tasks" / tasks[1].instance_id
    assert (d / "harness.gitattributes").read_text() == "/tests/data/blob.bin -diff\n"
    dockerfile = (d / "Dockerfile").read_text()
    assert "COPY harness.gitattributes /etc/smelter-harness.gitattributes\n" in dockerfile
    assert "GIT_CONFIG_VALUE_0=/etc/smelter-harness.gitattributes" in dockerfile
    assert not (paths.task_repo / "tasks" / tasks[0].instance_id / "harness.gitattributes").exists()


def test_evaluate_command_is_a_swebench_cli_line() -> None:
    """The line the export prints and the card shows; every option exists in swebench's CLI."""
    line = evaluate_command("X")
    assert line == "swebench eval X/tasks.jsonl --gold --run-id smelter-gold --workers 1"
    swebench = Path(sys.executable).parent / "swebench"
    help_text = subprocess.run(
        [str(swebench), "eval", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for option in [a for a in evaluate_argv("X/tasks.jsonl", "p.jsonl") if a[:2] == "--"]:
        assert option in help_text, option


def test_archives_group_tasks_by_env_image(built: tuple[Path, list[Task]]) -> None:
    _, tasks = built
    other = tasks[0].environment.model_copy(update={"env_image": "smelter/env:other-1"})
    moved = tasks[0].model_copy(update={"environment": other})
    groups = archive_groups([moved, *tasks[1:]])
    assert sorted(groups) == sorted({"smelter/env:other-1", tasks[1].environment.env_image})
    assert [t.instance_id for t in groups["smelter/env:other-1"]] == [moved.instance_id]
    assert archive_file_name("smelter/env:demo-calc_1.2") == "smelter-env-demo-calc_1.2.tar"
