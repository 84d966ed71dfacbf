"""``smelter export`` and ``smelter publish``: the command lines of ``smelter.pipeline.publish``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from smelter.pipeline.publish.card import DEFAULT_DATASET_NAME, DEFAULT_TASKS_SPLIT
from smelter.transforms.errors import Fatal


def _cmd_export(args: argparse.Namespace) -> int:
    from smelter.pipeline.publish.harness import evaluate_command, ungradable_tests
    from smelter.pipeline.publish.images import build_harness_images, save_docker_archives
    from smelter.pipeline.publish.swebench import export_tasks, read_tasks

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
    from smelter.pipeline.publish.hub import build_hub_folder, hub_endpoint, push_folder
    from smelter.pipeline.publish.images import build_harness_images

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
