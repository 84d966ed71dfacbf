"""What happens to a validated record's instance image: kept under its content tag, or removed.

``dispose_instance_image`` is the one place that decides; the validate stage calls it after a
validation and when an outcome is served from its cache.
"""

from __future__ import annotations

import contextlib

import docker
import docker.errors

from smelter.transforms.adapters import docker_engine as eng
from smelter.transforms.environment.builder import locks_dir


def dispose_instance_image(
    client: docker.DockerClient, image: str, *, kept: bool, keep_all: bool = False
) -> None:
    """What happens to a validated record's instance image: the one place that decides.

    A kept task's image stays under its content tag (the name the Task records), so an export
    can build harness images from it without re-running the pipeline; a rejected record's
    image goes, unless ``keep_all`` (``--validate-keep-instance-images``, for debugging).
    Either way this run's alias goes. A registry push of kept images belongs next to the call.

    Kept, the image also gets ``kept_tag``: alone under its content tag, it went with the
    next alias of the same content that another run removed (``remove_image`` drops a
    content tag no other tag holds), e.g. a concurrent demo run that rejected the candidate.
    """
    if kept:
        content = eng.content_tag(image)
        repository, tag = content.rsplit(":", 1)
        with contextlib.suppress(docker.errors.APIError):
            eng.retry(lambda: client.images.get(image).tag(repository, tag + KEPT_SUFFIX))
    release_image(client, image, keep=kept or keep_all)


KEPT_SUFFIX = "-kept"


def kept_tag(content: str) -> str:
    """The tag that holds a kept task's image besides its content tag (see above)."""
    return content + KEPT_SUFFIX


def release_image(client: docker.DockerClient, image: str, keep: bool = False) -> None:
    """Remove a validated record's alias, and its image with it unless ``keep``; an image a
    container still uses stays (the alias then goes with ``smelter images prune`` once this
    run has ended). Kept, the content tag the task names stays and only the alias goes: an
    alias of a run that has ended then always means a killed run, which the next run's
    ``collect_dead_runs`` may remove with its image. A missing alias is no error."""
    with contextlib.suppress(docker.errors.APIError):
        if not keep:
            eng.remove_image(client, image, force=False, lock_dir=locks_dir())
        elif eng.owner_of(image) is not None:  # never a plain tag someone passed in
            eng.retry(lambda: client.images.remove(image, force=False))
