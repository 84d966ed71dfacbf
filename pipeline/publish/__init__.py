"""Exports of validated tasks: SWE-bench rows, a swebench task repository, a Hugging Face folder.

``smelter export OUT`` turns ``OUT/tasks.jsonl`` into SWE-bench's field format (JSONL + Parquet)
and into a task repository in the layout of the ``swebench`` package 5.x; ``smelter publish OUT
--dest DIR`` assembles a Hugging Face dataset folder (card + ``tasks`` and ``shards`` configs)
and, with ``--push``, uploads it.

Deliberate choices:
- FAIL_TO_PASS / PASS_TO_PASS become JSON strings (``json.dumps``, as in the public SWE-bench
  datasets) here and only here; records keep lists.
- ``image``: a flat row names our instance image (``Task.environment.instance_image``), which
  exists wherever the pipeline built it; the harness uses a local image before pulling. In the
  task repository ``image`` is swebench's derived name, because ``swebench`` checks reject any
  other; the task's Dockerfile is ``FROM <our instance image>``, so building it yields exactly
  that name, and ``instance_image`` keeps ours. ``build_harness_images`` builds those
  Dockerfiles with the docker SDK, since swebench's own builder needs ``docker buildx``.
- ``eval.sh`` is self-contained: no conda. Our images put their venv on PATH through the image
  ENV, which ``docker exec`` inherits; the script resets the test files (those of the test
  patch, plus any test file or ``conftest.py`` the candidate patch touched), applies the test
  patch from a heredoc, runs the validated test command with ``-rA`` (what ``parse_log_pytest``
  reads) on the files holding the graded tests, between swebench's start/end markers.
- ``validation`` is a JSON string column: its per-run statuses are keyed by test id, which no
  fixed Arrow struct can hold. ``environment``, ``quality`` and ``provenance`` are nested
  columns whose Arrow types come from the record models, so every export has the same schema
  whatever its rows hold (a column that is null everywhere still has its struct type).
- Secrets: the Hugging Face token is read from ``HF_TOKEN`` at push time and handed to the
  client; it is never written to the folder, the card or a log. The Hub URL is ``--hub-endpoint``,
  else ``HF_ENDPOINT`` read at push time (huggingface_hub reads it only at import).
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import json
import os
import re
import shlex
import shutil
import sys
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

from smelter.pipeline.publish.card import (
    DEFAULT_DATASET_NAME,
    DEFAULT_TASKS_SPLIT,
    dataset_card,
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
WORKDIR = "/testbed"  # where swebench's harness applies patches (CONTAINER_WORKDIR)
START_MARKER = ">>>>> Start Test Output"
END_MARKER = ">>>>> End Test Output"
HARNESS_NAMESPACE = "swebench"


# --------------------------------------------------------------------------------- pure parts


def dumps_test_list(tests: Sequence[str]) -> str:
    """SWE-bench's FAIL_TO_PASS / PASS_TO_PASS form: a JSON array in a string."""
    return json.dumps(list(tests))


def harness_image_name(instance_id: str, namespace: str = HARNESS_NAMESPACE) -> str:
    """The image name swebench derives for an instance (``swebench.task.checks.expected_image``).

    Docker Hub forbids ``__`` in names, hence swebench's ``_1776_``; ours must agree or its
    checks fail and its harness looks for an image nobody built.
    """
    key = f"sweb.eval.x86_64.{instance_id}:latest".lower()
    return f"{namespace}/{key}".replace("__", "_1776_")


def evaluate_argv(
    dataset: str | Path,
    predictions: str | Path | None = None,
    run_id: str = "smelter-gold",
    workers: int = 1,
) -> list[str]:
    """swebench 5.x's evaluation of an exported ``tasks.jsonl``, as argv (gold when no
    predictions file is given).

    ``swebench eval DATASET`` is ``swebench.harness.run_evaluation.main``: a local ``.jsonl``
    is read as is, each row's ``image`` is used when the engine has it (pulled otherwise) and
    only containers are removed afterwards. No ``--task-repo``: that makes swebench delete the
    images and rebuild them with ``docker buildx``, which engines without the plugin lack.
    """
    argv = ["swebench", "eval", str(dataset)]
    argv += ["--predictions", str(predictions)] if predictions else ["--gold"]
    return [*argv, "--run-id", run_id, "--workers", str(workers)]


def evaluate_command(dest: str | Path, predictions: str | Path | None = None) -> str:
    """The shell line that evaluates ``DEST/tasks.jsonl`` after ``smelter export OUT --dest
    DEST --harness-images``: what the export prints and the card shows."""
    return shlex.join(evaluate_argv(Path(dest) / "tasks.jsonl", predictions))


@dataclasses.dataclass(frozen=True)
class PatchedFile:
    path: str
    new: bool = False
    deleted: bool = False
    binary: bool = False  # git carried it as a binary hunk (a binary file, or not UTF-8 text)


_DIFF_HEADER = re.compile(r'^diff --git "?a/(.+?)"? "?b/(.+?)"?$')


def patched_files(patch: str) -> list[PatchedFile]:
    """Files a git diff touches, with whether each is created or deleted (binary hunks too)."""
    files: list[PatchedFile] = []
    current: dict[str, Any] | None = None
    for line in patch.splitlines():
        m = _DIFF_HEADER.match(line)
        if m:
            if current:
                files.append(PatchedFile(**current))
            current = {"path": m.group(2)}
        elif current is not None and line.startswith("new file mode"):
            current["new"] = True
        elif current is not None and line.startswith("deleted file mode"):
            current["deleted"] = True
        elif current is not None and line.startswith(("GIT binary patch", "Binary files ")):
            current["binary"] = True
    if current:
        files.append(PatchedFile(**current))
    return files


def graded_test_files(task: Task) -> list[str]:
    """The files holding the tests that grade the task (node id up to ``::``), sorted."""
    return sorted({t.split("::", 1)[0] for t in [*task.FAIL_TO_PASS, *task.PASS_TO_PASS]})


def ungradable_tests(task: Task) -> list[str]:
    """Test ids ``parse_log_pytest`` cannot read back: it splits result lines on whitespace."""
    return [t for t in [*task.FAIL_TO_PASS, *task.PASS_TO_PASS] if re.search(r"\s", t)]


def _heredoc_delimiter(body: str) -> str:
    n = 0
    while f"EOF_SMELTER_{n}" in body:
        n += 1
    return f"EOF_SMELTER_{n}"


def harness_test_argv(task: Task, workdir: str = WORKDIR) -> list[str]:
    """The validated test command, made to print what ``parse_log_pytest`` reads.

    ``-rA`` prints one ``STATUS node_id`` line per test; ``--rootdir`` makes node ids relative
    to the repository root as in validation (without an ini file pytest would root them at the
    common ancestor of the arguments); ``--continue-on-collection-errors`` keeps one broken
    module from hiding the other tests' results; no cache provider keeps the tree clean.
    """
    argv = list(task.environment.test_command) or ["python", "-m", "pytest"]
    if "-rA" not in argv:
        argv.append("-rA")
    if "no:cacheprovider" not in argv and "-pno:cacheprovider" not in argv:
        argv += ["-p", "no:cacheprovider"]
    if not any(a.startswith("--rootdir") for a in argv):
        argv.append(f"--rootdir={workdir}")
    if "--continue-on-collection-errors" not in argv:
        argv.append("--continue-on-collection-errors")
    return argv + graded_test_files(task)


def _drops_privileges(task: Task) -> bool:
    """Validation ran the tests as the source tree's owner unless its script says otherwise."""
    script = task.validation.test_script
    return not script or "setpriv" in script


def eval_script(task: Task, workdir: str = WORKDIR) -> str:
    """The script swebench's harness runs in the container after applying the candidate patch.

    Self-contained (no conda): the image's ENV carries the venv. Test files are reset to
    ``base_commit`` first so a candidate patch cannot edit the tests that grade it, then the
    test patch is applied (``candidate_reset``: the test patch's files as SWE-bench does, and
    also every test file or ``conftest.py`` the candidate changed elsewhere, since pytest loads
    each ``conftest.py`` above a test file whether the test patch touched it or not). As in
    validation, the tests run as the owner of the source tree when
    that is not root (the harness runs everything as root, and a test of file permissions
    passes for a user and fails for root); the tree is chowned back to that owner first, since
    root applied the patches.

    The line before the end marker must be the test command: swebench records its ``$?``
    there to cross-check the log against the exit code. The markers appear once, as ``set -x``
    traces of ``:`` (an echo would print them twice and swebench slices at the first);
    ``exec 2>&1`` puts those traces in pytest's stream, so they bracket its output in order
    (Docker multiplexes stdout and stderr with no ordering promise).
    """
    touched = patched_files(task.test_patch)
    existing = [f.path for f in touched if not f.new]
    created = [f.path for f in touched if f.new]
    body = task.test_patch if task.test_patch.endswith("\n") else task.test_patch + "\n"
    eof = _heredoc_delimiter(body)
    reset = []
    if existing:
        reset.append(f"git checkout {task.base_commit} -- {shlex.join(existing)}")
    if created:
        reset.append(f"rm -f -- {shlex.join(created)}")
    as_owner = [
        'as_owner=""',
        'owner="$(stat -c %u:%g .)"',
        'if [ "$(id -u)" = 0 ] && [ "$owner" != 0:0 ] && command -v setpriv >/dev/null; then '
        'chown -R "$owner" . && as_owner="setpriv --reuid=${owner%:*} --regid=${owner#*:} '
        '--clear-groups env HOME=/tmp"; fi',
    ]
    run = shlex.join(harness_test_argv(task, workdir))
    lines = [
        "#!/bin/bash",
        "set -uxo pipefail",
        "exec 2>&1",
        f"cd {shlex.quote(workdir)}",
        f"git config --global --add safe.directory {shlex.quote(workdir)}",
        "git status",
        "git -c core.fileMode=false diff " + task.base_commit,
        *candidate_reset(task.base_commit),
        *reset,
        f"git apply --binary -v - <<'{eof}'\n{body}{eof}",
        "export PYTHONDONTWRITEBYTECODE=1",
        *(as_owner if _drops_privileges(task) else ['as_owner=""']),
        # compiled extensions are built again from the patched source, as in validation
        "if [ -f /opt/smelter/rebuild.sh ]; then $as_owner sh /opt/smelter/rebuild.sh; fi",
        f": '{START_MARKER}'",
        f"$as_owner {run}",
        f": '{END_MARKER}'",
        *reset,
    ]
    return "\n".join(lines) + "\n"


# smelter's default test-path rules (``testpaths.PathRules``) as git pathspecs: a candidate's
# changes to tracked files there go back to base_commit; untracked files it added go only when
# they are Python test modules or conftest.py (an image may hold built files in a test folder).
TEST_DIR_PATHSPECS = tuple(f":(glob)**/{d}/**" for d in ("test", "tests", "testing"))
TEST_FILE_PATHSPECS = tuple(f":(glob)**/{g}" for g in ("test_*.py", "*_test.py", "conftest.py"))


def candidate_reset(base_commit: str) -> list[str]:
    """Shell lines that undo a candidate patch's changes to tests and ``conftest.py`` files.

    SWE-bench resets only the test patch's files; a candidate could still add a
    ``tests/conftest.py`` (or edit one the test patch leaves alone) with a hook that turns
    failures into passes. Tracked files in test folders or named like tests are checked out
    from ``base_commit`` (modified and deleted ones); untracked test modules and conftest.py
    files are removed. Reading the paths NUL-separated keeps any byte in a name intact.
    """
    tracked = shlex.join([*TEST_DIR_PATHSPECS, *TEST_FILE_PATHSPECS])
    files = shlex.join(TEST_FILE_PATHSPECS)
    base = shlex.quote(base_commit)
    return [
        f"git diff --name-only --no-renames -z {base} -- {tracked}"
        f" | xargs -0 -r git checkout {base} --",
        f"git ls-files -z --others -- {files} | xargs -0 -r rm -f --",
    ]


HARNESS_GITATTRIBUTES = "harness.gitattributes"
HARNESS_GITATTRIBUTES_PATH = "/etc/smelter-harness.gitattributes"


def harness_gitattributes(task: Task) -> str:
    """``-diff`` for every file the patches carry as binary hunks ("" when there is none).

    swebench's harness logs ``git diff`` after applying a patch and decodes it as strict UTF-8,
    so a repository with a Latin-1 source file crashes the run before any test. Marked
    ``-diff``, git prints "Binary files differ" for those files instead; nothing else changes
    (``git apply`` ignores the attribute).
    """
    paths = sorted(
        {f.path for p in (task.patch, task.test_patch) for f in patched_files(p) if f.binary}
    )
    return "".join(f"/{p} -diff\n" for p in paths)


def harness_dockerfile(task: Task) -> str:
    """The task repo's Dockerfile: our instance image under swebench's name, nothing rebuilt.

    swebench's harness applies patches in /testbed as root. Our images keep the source there
    (``Environment.workdir``); one that does not gets a symlink, the only RUN line ever
    emitted, so the usual Dockerfile builds without network. Tasks with binary hunks get
    ``harness_gitattributes`` as git's global attributes file (COPY from the task directory,
    which is the build context, and git's environment-variable config: still no RUN).
    """
    env = task.environment
    lines = [
        f"# Instance image built by smelter (recipe {env.recipe}, env {env.env_hash}); rebuild",
        "# it from the environment block in task.yaml. This file only names it for swebench's",
        "# harness, which runs as root in /testbed.",
        f"FROM {env.instance_image}",
        "USER root",
    ]
    if env.workdir.rstrip("/") != WORKDIR:
        lines.append(f"RUN ln -sfn {shlex.quote(env.workdir)} {WORKDIR}")
    if harness_gitattributes(task):
        lines += [
            f"COPY {HARNESS_GITATTRIBUTES} {HARNESS_GITATTRIBUTES_PATH}",
            "ENV GIT_CONFIG_COUNT=1 GIT_CONFIG_KEY_0=core.attributesFile "
            f"GIT_CONFIG_VALUE_0={HARNESS_GITATTRIBUTES_PATH}",
        ]
    lines.append(f"WORKDIR {WORKDIR}")
    return "\n".join(lines) + "\n"


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


# --------------------------------------------------------------------------- Hugging Face folder


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except ValueError:
        return None


@dataclasses.dataclass(frozen=True)
class HubFolder:
    path: Path
    tasks: int
    shard_files: int
    card: Path


def build_hub_folder(
    out_dir: str | Path,
    dest: str | Path,
    repo_id: str = DEFAULT_DATASET_NAME,
    license_id: str = "other",
    tasks_split: str = DEFAULT_TASKS_SPLIT,
    harness_images: bool = False,
) -> HubFolder:
    """A Hugging Face dataset folder from a run's output: card, tasks, shards, task repo.

    The folder is rebuilt from scratch so a file from an earlier publish cannot ride along.
    With ``harness_images`` the tasks' ``image`` column names the harness images (see
    ``export_tasks``), which ``build_harness_images`` then makes from ``task_repo/``.
    """
    out_dir, dest = Path(out_dir), Path(dest)
    tasks = sorted(read_tasks(out_dir / "tasks.jsonl"), key=lambda t: t.instance_id)
    if not tasks:
        raise Fatal(f"{out_dir / 'tasks.jsonl'} holds no tasks; nothing to publish")
    if dest.resolve() == out_dir.resolve():
        raise Fatal("--dest must not be the run's output folder itself; use e.g. OUT/hub")
    if dest.exists():
        if not (dest / "README.md").is_file() and any(dest.iterdir()):
            raise Fatal(f"{dest} exists and is not a dataset folder; choose an empty --dest")
        shutil.rmtree(dest)
    (dest / "data" / "tasks").mkdir(parents=True)
    rows = [
        swebench_row(t, image=harness_image_name(t.instance_id) if harness_images else None)
        for t in tasks
    ]
    write_rows_parquet(rows, dest / "data" / "tasks" / f"{tasks_split}-00000-of-00001.parquet")
    write_task_repo(tasks, dest / "task_repo", repo_id, tasks_split)

    shard_src = sorted((out_dir / "shards").glob("*.parquet"))
    if shard_src:
        (dest / "data" / "shards").mkdir(parents=True)
        for f in shard_src:
            shutil.copy2(f, dest / "data" / "shards" / f.name)
    shard_stats = _read_json(out_dir / "shards" / "stats.json")
    if shard_stats is not None:
        (dest / "shards_stats.json").write_text(json.dumps(shard_stats, indent=2) + "\n")
    card = dataset_card(
        tasks,
        repo_id=repo_id,
        license_id=license_id,
        tasks_split=tasks_split,
        shard_stats=shard_stats,
        has_shards=bool(shard_src),
        funnel=_read_json(out_dir / "funnel.json"),
        run_info=_read_json(out_dir / "run.json"),
    )
    (dest / "README.md").write_text(card)
    return HubFolder(dest, len(tasks), len(shard_src), dest / "README.md")


def push_folder(
    folder: str | Path,
    repo_id: str,
    token: str,
    private: bool = False,
    endpoint: str | None = None,
) -> str:
    """Upload the folder as a dataset repo; returns its URL. Errors become one-line Fatals."""
    from huggingface_hub import HfApi

    api = HfApi(token=token, endpoint=endpoint)
    try:
        api.create_repo(repo_id, repo_type="dataset", exist_ok=True, private=private)
        api.upload_folder(
            folder_path=str(folder),
            repo_id=repo_id,
            repo_type="dataset",
            commit_message="smelter publish",
        )
    except Exception as e:
        raise Fatal(f"push to {repo_id} failed: {push_error_line(e, token)}") from None
    return f"{(endpoint or api.endpoint).rstrip('/')}/datasets/{repo_id}"


def push_error_line(error: BaseException, token: str) -> str:
    """One line for a failed push: the HTTP status line plus the Hub's own reason, token masked.

    huggingface_hub's messages span several lines and keep the server's reason (e.g. "Invalid
    credentials in Authorization header") below the first, where a one-line error would lose it.
    """
    text = str(error)
    line = text.splitlines()[0] if text.strip() else type(error).__name__
    reason = getattr(error, "server_message", None)
    if isinstance(reason, str) and reason.strip():
        first = reason.strip().splitlines()[0]
        if first.lower() not in line.lower():
            line = f"{line} ({first})"
    return line.replace(token, "***") if token else line


def hub_endpoint(flag: str | None, environ: typing.Mapping[str, str] = os.environ) -> str | None:
    """The Hub URL to push to: ``--hub-endpoint``, else ``HF_ENDPOINT`` as set now.

    huggingface_hub reads ``HF_ENDPOINT`` once, when it is imported; reading it at call time
    makes a value set later (a mirror, a local stand-in) count. None means the client default.
    """
    value = flag or environ.get("HF_ENDPOINT") or None
    return value.rstrip("/") if value else None


# ------------------------------------------------------------------- harness images (Docker I/O)


def build_harness_images(task_repo: str | Path, client: Any) -> dict[str, str]:
    """Build each task's Dockerfile under the ``image`` its task.yaml names; id -> image.

    swebench's own builder shells out to ``docker buildx``, which engines without the plugin
    lack; the Dockerfile is ``FROM <instance image>`` (and at most a symlink), so the SDK's
    builder suffices and needs no network. ``client`` is a ``docker.DockerClient``. Each image
    is labelled with the instance image it came from, so when that has gone since (a prune),
    an earlier export's harness image of the same content still serves; otherwise a missing
    instance image is a one-line Fatal naming every such task, after the others are built.
    """
    import docker.errors

    built: dict[str, str] = {}
    failed: list[str] = []
    for d in sorted((Path(task_repo) / "tasks").iterdir()):
        meta_path = d / "task.yaml"
        if not meta_path.is_file():
            continue
        meta = yaml.safe_load(meta_path.read_text())
        labels = {HARNESS_OF_LABEL: str(meta.get("instance_image"))}
        try:
            client.images.build(
                path=str(d), tag=meta["image"], rm=True, network_mode="host", labels=labels
            )
        except (docker.errors.BuildError, docker.errors.APIError):
            if not _built_from(client, meta["image"], labels[HARNESS_OF_LABEL]):
                failed.append(f"{meta['instance_id']} (needs {meta.get('instance_image')})")
                continue
        built[meta["instance_id"]] = meta["image"]
    if failed:
        raise Fatal(
            f"{len(failed)} harness image(s) not built, their instance images are missing: "
            + ", ".join(failed)
            + "; removed since the run (e.g. by `smelter images prune`): run `smelter run` "
            "again to rebuild them (validation keeps the images of the tasks it keeps)"
        )
    return built


HARNESS_OF_LABEL = "org.smelter.harness-of"


def _built_from(client: Any, harness: str, instance_image: str) -> bool:
    """Whether ``harness`` exists and was built from ``instance_image`` (a content-hash tag, so
    the same name means the same content): an earlier export's image still serves when the
    instance image has gone since."""
    import docker.errors

    try:
        labels = client.images.get(harness).labels or {}
    except docker.errors.ImageNotFound:
        return False
    return labels.get(HARNESS_OF_LABEL) == instance_image


ARCHIVE_MANIFEST = "manifest.json"


def archive_groups(tasks: Sequence[Task]) -> dict[str, list[Task]]:
    """Tasks by env image, sorted: one ``docker save`` archive each, so the layers an env's
    tasks share (base, env) are stored once per archive, not once per task."""
    groups: dict[str, list[Task]] = {}
    for t in sorted(tasks, key=lambda t: t.instance_id):
        groups.setdefault(t.environment.env_image, []).append(t)
    return dict(sorted(groups.items()))


def archive_file_name(env_image: str) -> str:
    """A file name for an env image's archive: its tag with ``/``, ``:`` and the like as ``-``."""
    return re.sub(r"[^\w.-]+", "-", env_image).strip("-") + ".tar"


def save_docker_archives(
    tasks: Sequence[Task], dest: str | Path, client: Any, chunk: int = 2**20
) -> Path:
    """``docker save`` archives of the tasks' images, one per env image, plus a manifest.

    Each archive holds the harness images of its tasks (what ``swebench eval`` on the exported
    JSONL runs; ``build_harness_images`` must have made them), their instance images and the
    env image under their tags where the engine still has them, so ``docker load -i FILE`` on
    another machine restores every name the exported rows use. Written to a temporary name
    and renamed, with size and sha256 in the manifest, so a half-written archive never looks
    complete. Returns the manifest's path.
    """
    import hashlib

    import docker.errors

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    archives = []
    for env_image, group in archive_groups(tasks).items():
        harness = [harness_image_name(t.instance_id) for t in group]
        missing = [h for h in harness if not _image_present(client, h)]
        if missing:
            raise Fatal(
                f"{len(missing)} harness image(s) missing for {env_image}: "
                + ", ".join(missing)
                + "; export with --harness-images first"
            )
        optional = [env_image, *(t.environment.instance_image for t in group)]
        names = [*[n for n in optional if _image_present(client, n)], *harness]
        path = dest / archive_file_name(env_image)
        part = path.with_name(path.name + ".part")
        digest, size = hashlib.sha256(), 0
        # docker-py saves one image per call (``Image.save``); the engine's /images/get takes
        # several names and writes shared layers once, which is the point of one archive.
        try:
            res = client.api._get(client.api._url("/images/get"), params={"names": names},
                                  stream=True)  # fmt: skip
            client.api._raise_for_status(res)
            with open(part, "wb") as f:
                for block in res.iter_content(chunk_size=chunk):
                    f.write(block)
                    digest.update(block)
                    size += len(block)
        except docker.errors.APIError as e:
            part.unlink(missing_ok=True)
            raise Fatal(f"docker save of {env_image} failed: {str(e).splitlines()[0]}") from None
        part.replace(path)
        archives.append(
            {
                "file": path.name,
                "env_image": env_image,
                "images": names,
                "tasks": [t.instance_id for t in group],
                "bytes": size,
                "sha256": digest.hexdigest(),
            }
        )
    manifest = {
        "format": "docker save (docker load -i FILE restores every image named below)",
        "archives": archives,
    }
    path = dest / ARCHIVE_MANIFEST
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def load_docker_archives(folder: str | Path, client: Any) -> list[str]:
    """``docker load`` of every archive a manifest lists, after checking its size; the image
    names loaded. The same as ``docker load -i FILE`` per file, for hosts without the CLI."""
    folder = Path(folder)
    manifest = json.loads((folder / ARCHIVE_MANIFEST).read_text())
    loaded: list[str] = []
    for entry in manifest["archives"]:
        path = folder / entry["file"]
        if path.stat().st_size != entry["bytes"]:
            raise Fatal(f"{path}: {path.stat().st_size} bytes, the manifest says {entry['bytes']}")
        with open(path, "rb") as f:
            for line in client.api.load_image(f):
                if "error" in line:
                    raise Fatal(f"docker load {path} failed: {line['error']}")
        loaded += entry["images"]
    return loaded


def _image_present(client: Any, name: str) -> bool:
    import docker.errors

    try:
        client.images.get(name)
    except docker.errors.ImageNotFound:
        return False
    return True


# ----------------------------------------------------------------------------------------- CLI


def _cmd_export(args: argparse.Namespace) -> int:
    out = Path(args.out)
    dest = Path(args.dest) if args.dest else out / "export"
    tasks = read_tasks(out / "tasks.jsonl")
    harness = args.harness_images or bool(args.docker_archive)
    paths = export_tasks(
        tasks, dest, dataset_name=args.dataset_name, split=args.split, harness_images=harness
    )
    warn = [(t.instance_id, ungradable_tests(t)) for t in tasks if ungradable_tests(t)]
    for iid, ids in warn:
        print(
            f"smelter: warning: {iid}: {len(ids)} test id(s) contain whitespace, which "
            "swebench's pytest log parser cannot read back",
            file=sys.stderr,
        )
    print(f"exported {paths.count} tasks: {paths.jsonl}, {paths.parquet}, {paths.task_repo}/")
    if harness:
        from smelter.transforms.adapters.docker_engine import connect

        client = connect()
        built = build_harness_images(paths.task_repo, client)
        print(f"built {len(built)} harness image(s), named in {paths.jsonl.name} and task.yaml")
        if args.docker_archive:
            manifest = save_docker_archives(tasks, args.docker_archive, client)
            n = len(json.loads(manifest.read_text())["archives"])
            print(f"wrote {n} docker save archive(s) and {manifest}; load each with docker load -i")
        print(f"evaluate with: {evaluate_command(dest)}")
    return 0


def _cmd_publish(args: argparse.Namespace) -> int:
    repo_id = args.repo_id or DEFAULT_DATASET_NAME
    folder = build_hub_folder(
        args.out,
        args.dest,
        repo_id=repo_id,
        license_id=args.license,
        tasks_split=args.split,
        harness_images=args.harness_images,
    )
    shards_note = f"{folder.shard_files} shard file(s)" if folder.shard_files else "no shards"
    print(f"dataset folder {folder.path}: {folder.tasks} tasks, {shards_note}")
    if args.harness_images:
        from smelter.transforms.adapters.docker_engine import connect

        built = build_harness_images(folder.path / "task_repo", connect())
        print(f"built {len(built)} harness image(s), named in the tasks' image column")
    if not args.push:
        return 0
    if not args.repo_id:
        raise Fatal("--push needs --repo-id OWNER/NAME")
    token = os.environ.get("HF_TOKEN")
    if not token:
        raise Fatal("--push needs a Hugging Face token in the HF_TOKEN environment variable")
    url = push_folder(
        folder.path, repo_id, token, private=args.private, endpoint=hub_endpoint(args.hub_endpoint)
    )
    print(f"pushed to {url}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``export`` and ``publish`` to the ``smelter`` command line."""
    p = subparsers.add_parser(
        "export",
        help="write tasks as SWE-bench JSONL/Parquet and a swebench task repository",
        description="Read OUT/tasks.jsonl; write tasks.jsonl, tasks.parquet (SWE-bench field "
        "format plus smelter's blocks) and task_repo/ (swebench 5.x layout) under --dest.",
    )
    p.add_argument("out", metavar="OUT", help="a run's output folder (holds tasks.jsonl)")
    p.add_argument("--dest", metavar="DIR", help="where to write (default: OUT/export)")
    p.add_argument(
        "--dataset-name",
        default=DEFAULT_DATASET_NAME,
        help=f"dataset named in the task repo's sweb.yaml (default: {DEFAULT_DATASET_NAME})",
    )
    p.add_argument(
        "--split",
        default=DEFAULT_TASKS_SPLIT,
        help=f"split of the tasks (default: {DEFAULT_TASKS_SPLIT}, swebench's default)",
    )
    p.add_argument(
        "--harness-images",
        action="store_true",
        help="also build each task's harness image (its instance image under the name "
        "swebench derives, ready for non-UTF-8 sources) and name it in tasks.jsonl, so "
        "`swebench eval DEST/tasks.jsonl --gold` runs as printed; needs the Docker engine",
    )
    p.add_argument(
        "--docker-archive",
        metavar="DIR",
        help="also write `docker save` archives of the harness, instance and env images (one "
        "per env image) and a manifest.json to DIR, for `docker load` elsewhere; implies "
        "--harness-images",
    )
    p.set_defaults(func=_cmd_export)

    q = subparsers.add_parser(
        "publish",
        help="assemble a Hugging Face dataset folder (tasks + shards) and optionally push it",
        description="Build a dataset folder (README.md card, data/tasks, data/shards, "
        "task_repo/) from a run's output; --push uploads it with the token in HF_TOKEN.",
    )
    q.add_argument("out", metavar="OUT", help="a run's output folder")
    q.add_argument("--dest", metavar="DIR", required=True, help="the dataset folder to (re)build")
    q.add_argument("--repo-id", metavar="OWNER/NAME", help="the Hub dataset repository")
    q.add_argument("--push", action="store_true", help="upload to the Hub (needs HF_TOKEN)")
    q.add_argument("--private", action="store_true", help="create the Hub repository private")
    q.add_argument(
        "--hub-endpoint",
        metavar="URL",
        help="Hub to push to, e.g. a mirror (default: $HF_ENDPOINT, else https://huggingface.co)",
    )
    q.add_argument(
        "--license", default="other", help="license id for the card metadata (default: other)"
    )
    q.add_argument("--split", default=DEFAULT_TASKS_SPLIT, help="split name of the tasks config")
    q.add_argument(
        "--harness-images",
        action="store_true",
        help="build each task's harness image and name it in the tasks' image column (as "
        "`smelter export --harness-images` does); needs the Docker engine",
    )
    q.set_defaults(func=_cmd_publish)
