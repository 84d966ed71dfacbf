"""SWE-bench's field format: flat rows (JSONL + Parquet) and a task repository.

``export_tasks`` is everything ``smelter export OUT`` writes: ``tasks.jsonl`` and
``tasks.parquet`` in SWE-bench's field format plus smelter's blocks, and ``task_repo/`` in the
layout of the ``swebench`` package 5.x. What the harness runs in a task's container (its
Dockerfile, ``eval.sh``) comes from ``publish.harness``.

Deliberate choices:
- FAIL_TO_PASS / PASS_TO_PASS become JSON strings (``json.dumps``, as in the public SWE-bench
  datasets) here and only here; records keep lists.
- ``image``: a flat row names our instance image (``Task.environment.instance_image``), which
  exists wherever the pipeline built it; the harness uses a local image before pulling. In the
  task repository ``image`` is swebench's derived name (``harness.harness_image_name``), because
  ``swebench`` checks reject any other; the task's Dockerfile is ``FROM <our instance image>``,
  so building it (``images.build_harness_images``) yields exactly that name, and
  ``instance_image`` keeps ours.
- ``validation`` is a JSON string column: its per-run statuses are keyed by test id, which no
  fixed Arrow struct can hold. ``environment``, ``quality`` and ``provenance`` are nested
  columns whose Arrow types come from the record models, so every export has the same schema
  whatever its rows hold (a column that is null everywhere still has its struct type).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import shutil
import types
import typing
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import jsonlines
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from pydantic import BaseModel

from smelter.pipeline.publish.card import DEFAULT_DATASET_NAME, DEFAULT_TASKS_SPLIT
from smelter.pipeline.publish.harness import (
    HARNESS_GITATTRIBUTES,
    HARNESS_NAMESPACE,
    WORKDIR,
    eval_script,
    harness_dockerfile,
    harness_gitattributes,
    harness_image_name,
)
from smelter.schemas import Environment, Provenance, Quality, Task
from smelter.transforms.errors import Fatal

# ----------------------------------------------------------------------------------- constants

# The columns of the public SWE-bench datasets, in their order, then the 5.x harness columns.
SWEBENCH_COLUMNS = (
    "repo",
    "instance_id",
    "base_commit",
    "patch",
    "test_patch",
    "problem_statement",
    "hints_text",
    "created_at",
    "version",
    "FAIL_TO_PASS",
    "PASS_TO_PASS",
    "environment_setup_commit",
)
HARNESS_COLUMNS = ("image", "eval_script", "log_parser", "eval_type")
EXTRA_COLUMNS = ("instance_image", "environment", "validation", "quality", "provenance")

LOG_PARSER = "parse_log_pytest"
EVAL_TYPE = "pass_and_fail"


# --------------------------------------------------------------------------------- rows (pure)


def dumps_test_list(tests: Sequence[str]) -> str:
    """SWE-bench's FAIL_TO_PASS / PASS_TO_PASS form: a JSON array in a string."""
    return json.dumps(list(tests))


def swebench_row(task: Task, image: str | None = None, workdir: str = WORKDIR) -> dict[str, Any]:
    """One task in SWE-bench's field format, plus the harness columns and our extra blocks."""
    row: dict[str, Any] = {
        "repo": task.repo,
        "instance_id": task.instance_id,
        "base_commit": task.base_commit,
        "patch": task.patch,
        "test_patch": task.test_patch,
        "problem_statement": task.problem_statement,
        "hints_text": task.hints_text,
        "created_at": task.created_at,
        "version": task.version,
        "FAIL_TO_PASS": dumps_test_list(task.FAIL_TO_PASS),
        "PASS_TO_PASS": dumps_test_list(task.PASS_TO_PASS),
        # Shared by the tasks of one repository and env image (transforms.versions); a record
        # without one (the field's default) names base_commit, where its own env was built.
        "environment_setup_commit": task.environment_setup_commit or task.base_commit,
        "image": image or task.environment.instance_image,
        "eval_script": eval_script(task, workdir),
        "log_parser": LOG_PARSER,
        "eval_type": EVAL_TYPE,
        "instance_image": task.environment.instance_image,
        "environment": task.environment.model_dump(mode="json"),
        "validation": task.validation.model_dump_json(),
        "quality": task.quality.model_dump(mode="json") if task.quality else None,
        "provenance": task.provenance.model_dump(mode="json"),
    }
    return row


# ------------------------------------------------------------------------- Arrow schema (pure)


def arrow_type(annotation: Any) -> pa.DataType:
    """Arrow type of a record field's annotation; nested records become structs."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        (inner,) = [a for a in args if a is not type(None)]  # only X | None is used
        return arrow_type(inner)
    if origin is Literal:
        return pa.string()
    if origin in (list, tuple):
        return pa.list_(arrow_type(args[0]))
    if isinstance(annotation, type):
        if issubclass(annotation, BaseModel):
            return pa.struct(
                [pa.field(n, arrow_type(f.annotation)) for n, f in annotation.model_fields.items()]
            )
        if issubclass(annotation, enum.Enum) or annotation is str:
            return pa.string()
        if annotation is bool:
            return pa.bool_()
        if annotation is int:
            return pa.int64()
        if annotation is float:
            return pa.float64()
    raise TypeError(f"no Arrow type for {annotation!r}; export it as a JSON string")


def tasks_arrow_schema() -> pa.Schema:
    """The schema of every tasks Parquet file, independent of the rows it holds."""
    fields = [pa.field(c, pa.string()) for c in (*SWEBENCH_COLUMNS, *HARNESS_COLUMNS)]
    fields += [
        pa.field("instance_image", pa.string()),
        pa.field("environment", arrow_type(Environment)),
        pa.field("validation", pa.string()),
        pa.field("quality", arrow_type(Quality)),
        pa.field("provenance", arrow_type(Provenance)),
    ]
    return pa.schema(fields)


# ---------------------------------------------------------------------------------- YAML (pure)


class _Dumper(yaml.SafeDumper):
    """Multi-line strings as literal blocks, as swebench writes task.yaml: readable diffs."""


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _represent_str)


def dump_yaml(data: dict[str, Any]) -> str:
    return yaml.dump(
        data, Dumper=_Dumper, sort_keys=True, allow_unicode=True, default_flow_style=False
    )


# ------------------------------------------------------------------------------------ writers


def read_tasks(path: str | Path) -> list[Task]:
    """Task records from a JSONL file, validated (a malformed line is a one-line Fatal)."""
    path = Path(path)
    if not path.is_file():
        raise Fatal(f"no tasks file at {path}; run `smelter run --out {path.parent}` first")
    tasks = []
    with jsonlines.open(path) as reader:
        for n, obj in enumerate(reader, 1):
            try:
                tasks.append(Task.model_validate(obj))
            except ValueError as e:
                first = str(e).splitlines()[0]
                raise Fatal(f"{path}:{n}: not a Task record ({first})") from None
    return tasks


def write_rows_jsonl(rows: Iterable[dict[str, Any]], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with jsonlines.open(path, mode="w", compact=True) as writer:
        writer.write_all(rows)
    return path


def write_rows_parquet(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(list(rows), schema=tasks_arrow_schema())
    pq.write_table(table, path)
    return path


TASK_YAML_KEYS = (
    "instance_id",
    "repo",
    "version",
    "base_commit",
    "created_at",
    "environment_setup_commit",
    "image",
    "log_parser",
    "eval_type",
    "instance_image",
    "environment",
    "quality",
    "provenance",
)


def write_task_repo(
    tasks: Sequence[Task],
    root: str | Path,
    dataset_name: str = DEFAULT_DATASET_NAME,
    split: str = DEFAULT_TASKS_SPLIT,
    namespace: str = HARNESS_NAMESPACE,
) -> Path:
    """A task repository in swebench 5.x's layout (``swebench.task.repo``), one dir per task.

    Files: task.yaml, tests.json, problem_statement.md, hints.md (only when there are
    hints), gold.patch, test.patch, eval.sh, Dockerfile, test_assets/ (empty: our test patches
    carry binary files as git binary hunks), validation.json (our full per-run evidence).
    """
    root = Path(root)
    tasks_dir = root / "tasks"
    if tasks_dir.exists():
        shutil.rmtree(tasks_dir)  # a task dropped since the last export must not linger
    tasks_dir.mkdir(parents=True)
    config = {"datasets": [dataset_name], "splits": [split]}
    (root / "sweb.yaml").write_text(dump_yaml(config))
    for task in tasks:
        d = tasks_dir / task.instance_id
        d.mkdir()
        row = swebench_row(task, image=harness_image_name(task.instance_id, namespace))
        meta = {k: row[k] for k in TASK_YAML_KEYS if row[k] is not None}
        meta["split"] = split
        meta["datasets"] = [dataset_name]
        (d / "task.yaml").write_text(dump_yaml(meta))
        tests = {"FAIL_TO_PASS": list(task.FAIL_TO_PASS), "PASS_TO_PASS": list(task.PASS_TO_PASS)}
        (d / "tests.json").write_text(json.dumps(tests, indent=2, ensure_ascii=False) + "\n")
        # newline="" keeps CRLF inside patches byte for byte (swebench reads them the same way)
        for name, text in (
            ("problem_statement.md", task.problem_statement),
            ("gold.patch", task.patch),
            ("test.patch", task.test_patch),
            ("eval.sh", row["eval_script"]),
            ("Dockerfile", harness_dockerfile(task)),
        ):
            with open(d / name, "w", newline="") as f:
                f.write(text)
        if attributes := harness_gitattributes(task):
            (d / HARNESS_GITATTRIBUTES).write_text(attributes)
        if task.hints_text:
            with open(d / "hints.md", "w", newline="") as f:
                f.write(task.hints_text)
        (d / "test_assets").mkdir()
        (d / "validation.json").write_text(task.validation.model_dump_json(indent=2) + "\n")
    return root


@dataclasses.dataclass(frozen=True)
class ExportPaths:
    jsonl: Path
    parquet: Path
    task_repo: Path
    count: int


def export_tasks(
    tasks: Sequence[Task],
    dest: str | Path,
    dataset_name: str = DEFAULT_DATASET_NAME,
    split: str = DEFAULT_TASKS_SPLIT,
    harness_images: bool = False,
) -> ExportPaths:
    """Everything ``smelter export`` writes: tasks.jsonl, tasks.parquet and task_repo/.

    With ``harness_images`` the rows' ``image`` is the harness image name (built by
    ``build_harness_images`` from the task repo's Dockerfile), so the flat JSONL uses the
    image that carries the task's fixes for swebench (gitattributes for non-UTF-8 files,
    /testbed); otherwise it names our instance image.
    """
    dest = Path(dest)
    tasks = sorted(tasks, key=lambda t: t.instance_id)  # stable files for stable diffs
    rows = [
        swebench_row(t, image=harness_image_name(t.instance_id) if harness_images else None)
        for t in tasks
    ]
    return ExportPaths(
        jsonl=write_rows_jsonl(rows, dest / "tasks.jsonl"),
        parquet=write_rows_parquet(rows, dest / "tasks.parquet"),
        task_repo=write_task_repo(tasks, dest / "task_repo", dataset_name, split),
        count=len(rows),
    )
