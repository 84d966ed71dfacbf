"""The dataset card: YAML metadata and the README text of a published task dataset.

Every number in it is computed from the tasks and the run's own records, never typed in.

Deliberate choices:
- ``dataset_info`` features are not written by hand: they are ``datasets``' own conversion of
  the Arrow schema the Parquet files are written with (``swebench.tasks_arrow_schema``, the
  shard writer's ``SHARD_COLUMNS``), serialised by ``datasets``' own card writer, so
  ``load_dataset`` on the folder yields exactly the types the card states.
- The "How to evaluate" commands come from ``evaluate_commands``, the same lines
  ``smelter export`` runs and prints; tests/test_card.py runs them.
"""

from __future__ import annotations

import json
import shlex
import statistics
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import yaml

from smelter.schemas import Task
from smelter.transforms.util import stable_hash

if TYPE_CHECKING:
    import datasets
    import pyarrow as pa

DEFAULT_DATASET_NAME = "smelter/tasks"
DEFAULT_TASKS_SPLIT = "test"  # what swebench's harness evaluates unless told otherwise
SHARDS_SPLIT = "train"

_SIZE_BOUNDS = [
    (1_000, "n<1K"),
    (10_000, "1K<n<10K"),
    (100_000, "10K<n<100K"),
    (1_000_000, "100K<n<1M"),
    (10_000_000, "1M<n<10M"),
    (100_000_000, "10M<n<100M"),
    (1_000_000_000, "100M<n<1B"),
]


def size_category(n: int) -> str:
    """The Hub's ``size_categories`` bucket for n rows."""
    for bound, name in _SIZE_BOUNDS:
        if n < bound:
            return name
    return "n>1B"


def task_statistics(tasks: Sequence[Task]) -> dict[str, Any]:
    """Numbers the card reports about the tasks (computed, never typed in)."""
    by_repo: dict[str, int] = {}
    for t in tasks:
        by_repo[t.repo] = by_repo.get(t.repo, 0) + 1

    def summary(values: list[int]) -> dict[str, float]:
        if not values:
            return {"min": 0, "median": 0, "mean": 0, "max": 0}
        return {
            "min": min(values),
            "median": statistics.median(values),
            "mean": round(statistics.fmean(values), 2),
            "max": max(values),
        }

    def patch_lines(patch: str) -> int:
        return sum(
            1
            for line in patch.splitlines()
            if line[:1] in "+-" and not line.startswith(("+++", "---"))
        )

    used: dict[str, int] = {}
    for t in tasks:
        key = t.quality.used if t.quality else "none"
        used[key] = used.get(key, 0) + 1
    return {
        "tasks": len(tasks),
        "repos": len(by_repo),
        "tasks_per_repo": dict(sorted(by_repo.items())),
        "fail_to_pass": summary([len(t.FAIL_TO_PASS) for t in tasks]),
        "pass_to_pass": summary([len(t.PASS_TO_PASS) for t in tasks]),
        "patch_lines": summary([patch_lines(t.patch) for t in tasks]),
        "python_versions": sorted({t.environment.python_version for t in tasks}),
        "install_recipes": sorted({t.environment.recipe for t in tasks}),
        "versions": sorted({t.version for t in tasks if t.version}),
        "without_version": sum(1 for t in tasks if not t.version),
        "environment_setup_commits": len({t.environment_setup_commit for t in tasks}),
        "problem_statement_used": dict(sorted(used.items())),
        "flaky_tests_excluded": sum(len(t.validation.flaky) for t in tasks),
    }


def _table(rows: Iterable[tuple[Any, ...]], header: tuple[str, ...]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def shards_arrow_schema() -> pa.Schema:
    import pyarrow as pa  # not at module level: the CLI reads this module's defaults at start

    """The Arrow schema of a shard Parquet file, from the columns the shard writer declares."""
    from smelter.transforms.pack import parquet_writer as pw
    from smelter.transforms.pack.shards import SHARD_COLUMNS

    scalar = {pw.BOOLEAN: pa.bool_(), pw.INT32: pa.int32(), pw.INT64: pa.int64()}

    def arrow(column: pw.Column) -> pa.DataType:
        if column.ptype == pw.BYTE_ARRAY:
            return pa.string() if column.converted == pw.UTF8 else pa.binary()
        return scalar[column.ptype]

    return pa.schema(
        [pa.field(c.name, pa.list_(arrow(c)) if c.is_list else arrow(c)) for c in SHARD_COLUMNS]
    )


def config_features(has_shards: bool = True) -> dict[str, datasets.Features]:
    """config name -> the ``datasets`` features of its Parquet files."""
    import datasets

    # publish.swebench imports this module (for its defaults): at call time, not circular.
    from smelter.pipeline.publish.swebench import tasks_arrow_schema

    features = {"tasks": datasets.Features.from_arrow_schema(tasks_arrow_schema())}
    if has_shards:
        features["shards"] = datasets.Features.from_arrow_schema(shards_arrow_schema())
    return features


def dataset_info(
    tasks: int, tasks_split: str = DEFAULT_TASKS_SPLIT, has_shards: bool = True
) -> dict[str, Any] | list[dict[str, Any]]:
    """The card's ``dataset_info`` block, written by ``datasets`` itself (a mapping for one
    config, a list with ``config_name`` for several). The tasks split records its row count,
    which ``load_dataset`` verifies; the shards' count is not known to the card."""
    from datasets.info import DatasetInfo, DatasetInfosDict
    from datasets.splits import SplitDict, SplitInfo

    infos = DatasetInfosDict()
    for name, features in config_features(has_shards).items():
        splits = None
        if name == "tasks":
            splits = SplitDict()
            splits.add(SplitInfo(name=tasks_split, num_examples=tasks))
        infos[name] = DatasetInfo(features=features, splits=splits)
    meta: dict[str, Any] = {}
    infos.to_dataset_card_data(meta)  # a mapping is all it needs of a DatasetCardData
    block = meta["dataset_info"]
    for info in block if isinstance(block, list) else [block]:
        for split in info.get("splits") or []:
            if not split.get("num_bytes"):
                del split["num_bytes"]  # unknown here; a 0 would be a false figure
    return block


def evaluate_commands(out: str = "OUT", dest: str = "X") -> list[str]:
    """The card's "How to evaluate" lines: export with harness images, then swebench's eval
    (``harness.evaluate_command``, the line ``smelter export`` prints)."""
    from smelter.pipeline.publish.harness import evaluate_command

    export = shlex.join(["smelter", "export", out, "--dest", dest, "--harness-images"])
    return [export, evaluate_command(dest)]


def evaluate_section(out: str = "OUT", dest: str = "X") -> str:
    """Markdown of "How to evaluate"; its code block is exactly ``evaluate_commands``."""
    commands = "\n".join(evaluate_commands(out, dest))
    return (
        "## How to evaluate\n\n"
        "On the machine that ran smelter (the `image` of a row is built there; elsewhere first "
        "`docker load` the archives `smelter export --docker-archive` writes), with the run's "
        f"output folder `{out}`:\n\n"
        f"```sh\n{commands}\n```\n\n"
        "The first line builds swebench's harness images from `task_repo/` and writes "
        f"`{dest}/tasks.jsonl` naming them; the second runs SWE-bench's harness (swebench 5.x) "
        "on it with the reference patches: every task resolves. For a model's patches, replace "
        "`--gold` with `--predictions preds.jsonl` (rows of `instance_id`, `model_patch`, "
        "`model_name_or_path`).\n"
    )


def dataset_card(
    tasks: Sequence[Task],
    *,
    repo_id: str,
    license_id: str = "other",
    tasks_split: str = DEFAULT_TASKS_SPLIT,
    shard_stats: dict[str, Any] | None = None,
    has_shards: bool = True,
    funnel: dict[str, Any] | None = None,
    run_info: dict[str, Any] | None = None,
) -> str:
    """README.md with the Hub's YAML metadata: configs, license, size category, statistics."""
    stats = task_statistics(tasks)
    configs: list[dict[str, Any]] = [
        {
            "config_name": "tasks",
            "data_files": [{"split": tasks_split, "path": f"data/tasks/{tasks_split}-*.parquet"}],
            "default": True,
        }
    ]
    if has_shards:
        configs.append(
            {
                "config_name": "shards",
                "data_files": [{"split": SHARDS_SPLIT, "path": "data/shards/*.parquet"}],
            }
        )
    meta = {
        "pretty_name": f"{repo_id} (smelter tasks)",
        "license": license_id,
        "language": ["en"],
        "tags": ["code", "software-engineering", "swe-bench", "smelter"],
        "task_categories": ["text-generation"],
        "size_categories": [size_category(len(tasks))],
        "configs": configs,
        "dataset_info": dataset_info(len(tasks), tasks_split, has_shards),
    }
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)
    parts = [f"---\n{front}---\n", f"# {repo_id}\n"]
    parts.append(
        f"{stats['tasks']} verifiable coding task{'s' if stats['tasks'] != 1 else ''} from "
        f"{stats['repos']} {'repository' if stats['repos'] == 1 else 'repositories'}, mined "
        "from merged pull requests by "
        "[smelter](https://pypi.org/project/swe-smelter/), and packed training shards made "
        "from them.\n"
    )
    parts.append(
        "## Configs\n\n"
        f"- `tasks` (split `{tasks_split}`): one row per task in SWE-bench's field format "
        "(`FAIL_TO_PASS` / `PASS_TO_PASS` are JSON strings, as in the public SWE-bench "
        "datasets) with the swebench 5.x harness columns `image`, `eval_script`, `log_parser`, "
        "`eval_type`, and smelter's blocks: `environment` (how to rebuild the image), "
        "`validation` (JSON string: every test run, per-test statuses, flaky tests), `quality` "
        "(raw and cleaned problem statement, scores) and `provenance`. `version` is the "
        "project's `major.minor` at `base_commit` (nearest tag, else the static version in its "
        "packaging files; empty when it has neither); `environment_setup_commit` is shared by "
        "the tasks of one repository and env image: the `base_commit` of its earliest task.\n"
        + (
            f"- `shards` (split `{SHARDS_SPLIT}`): fixed-length packed sequences "
            "(`input_ids` int32, `position_ids` reset per document, `loss_mask` bool, "
            "`doc_lengths` (their cumulative sum is `cu_seqlens`), `doc_ids`, `doc_starts`), "
            "Best-Fit Decreasing packing, no document truncated.\n"
            if has_shards
            else ""
        )
        + "- `task_repo/`: the same tasks as a swebench task repository; its Dockerfiles "
        'are the harness images of "How to evaluate".\n\n'
        "```python\n"
        "from datasets import load_dataset\n"
        f'tasks = load_dataset("{repo_id}", "tasks", split="{tasks_split}")\n'
        + (
            f'shards = load_dataset("{repo_id}", "shards", split="{SHARDS_SPLIT}")\n'
            if has_shards
            else ""
        )
        + "```\n"
    )

    def med_max(key: str) -> str:
        return "{median} / {max}".format(**stats[key])

    summary_rows = [
        ("tasks", stats["tasks"]),
        ("repositories", stats["repos"]),
        ("FAIL_TO_PASS per task (median / max)", med_max("fail_to_pass")),
        ("PASS_TO_PASS per task (median / max)", med_max("pass_to_pass")),
        ("patch lines changed (median / max)", med_max("patch_lines")),
        ("Python versions", ", ".join(stats["python_versions"])),
        ("install recipes", ", ".join(stats["install_recipes"])),
        ("versions", ", ".join(stats["versions"]) or "-"),
        ("tasks without a version (no tag, no static version)", stats["without_version"]),
        ("environment setup commits", stats["environment_setup_commits"]),
        ("flaky tests excluded", stats["flaky_tests_excluded"]),
    ]
    parts.append("## Statistics\n\n" + _table(summary_rows, ("tasks", "value")) + "\n")
    parts.append(
        "\n" + _table(sorted(stats["tasks_per_repo"].items()), ("repository", "tasks")) + "\n"
    )
    if shard_stats:
        flat = [(k, _fmt(v)) for k, v in shard_stats.items() if isinstance(v, int | float | str)]
        parts.append("\n" + _table(flat, ("shards", "value")) + "\n")
    if funnel and funnel.get("stages"):
        rows = []
        for s in funnel["stages"]:
            rejected = ", ".join(f"{r} {n}" for r, n in sorted((s.get("rejected") or {}).items()))
            rows.append((s.get("stage"), s.get("in"), s.get("out"), rejected or "-"))
        parts.append("\n### Funnel\n\n" + _table(rows, ("stage", "in", "out", "rejected")) + "\n")
    parts.append(
        "\n## How it was made\n\n"
        "1. **mine**: merged pull requests from git history (merge and squash commits) or GitHub, "
        "keeping those that change both tests and code.\n"
        "2. **snapshot**: the PR split into a code `patch` and a `test_patch`, both checked to "
        "apply at `base_commit`; the snapshot holds nothing after it.\n"
        "3. **environment**: a layered Docker image (base → env → instance) whose dependencies "
        "resolve as of the PR date; tags are content hashes.\n"
        "4. **validate**: the tests run in fresh containers without network, several times, "
        "with the test patch alone and with the fix; `FAIL_TO_PASS` fail before and pass after in "
        "every run, `PASS_TO_PASS` pass in both, flaky tests are excluded; results come from "
        "pytest's JUnit XML.\n"
        "5. **clean**: the problem statement normalised (optionally rewritten by an LLM, raw "
        "text kept in `quality`), rewrites that leak the fix rejected.\n"
        "6. **render, tokenize, pack**: ChatML samples, loss on the assistant turn only, packed "
        "with Best-Fit Decreasing into the `shards`.\n"
    )
    parts.append("\n" + evaluate_section())
    if run_info:
        wanted = ("started_at", "wall_seconds", "stage_seconds", "versions")
        keep = {k: run_info[k] for k in wanted if k in run_info}
        config = (run_info.get("plan") or {}).get("config")
        if config:
            keep["config_hash"] = stable_hash(config)  # the full config is in run.json
        if keep:
            parts.append(
                "\n### Run\n\n```json\n" + json.dumps(keep, indent=2, sort_keys=True) + "\n```\n"
            )
    parts.append(
        "\n## License\n\n"
        f"Card metadata license: `{license_id}`. Each task's code, patches and issue text come "
        "from its source repository and stay under that repository's license.\n"
    )
    return "\n".join(parts)


def parse_card(text: str) -> dict[str, Any]:
    """The YAML metadata of a dataset card (between the leading ``---`` lines)."""
    if not text.startswith("---\n"):
        raise ValueError("dataset card has no YAML metadata block")
    block = text[4:].split("\n---\n", 1)[0]
    return yaml.safe_load(block)
