"""Harness images and ``docker save`` archives: the Docker I/O of an export.

``client`` is always a ``docker.DockerClient``, passed in; docker is imported inside the
functions that use it.

Deliberate choices:
- ``build_harness_images`` builds the task repository's Dockerfiles with the docker SDK, since
  swebench's own builder needs ``docker buildx``.
- One ``docker save`` archive per env image: the layers its tasks share are stored once.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from smelter.pipeline.publish.harness import harness_image_name
from smelter.schemas import Task
from smelter.transforms.errors import Fatal

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
