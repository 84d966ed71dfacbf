"""A Hugging Face dataset folder from a run's output, and its upload.

``smelter publish OUT --dest DIR`` assembles the folder (README.md card, ``data/tasks`` and
``data/shards`` configs, ``task_repo/``) and, with ``--push``, uploads it.

Deliberate choices:
- Secrets: the Hugging Face token is read from ``HF_TOKEN`` at push time and handed to the
  client; it is never written to the folder, the card or a log. The Hub URL is ``--hub-endpoint``,
  else ``HF_ENDPOINT`` read at push time (huggingface_hub reads it only at import).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import typing
from pathlib import Path
from typing import Any

from smelter.pipeline.publish.card import DEFAULT_DATASET_NAME, DEFAULT_TASKS_SPLIT, dataset_card
from smelter.pipeline.publish.harness import harness_image_name
from smelter.pipeline.publish.swebench import (
    read_tasks,
    swebench_row,
    write_rows_parquet,
    write_task_repo,
)
from smelter.transforms.errors import Fatal

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
