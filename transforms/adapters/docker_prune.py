"""Removing what smelter left on the engine: containers and images, by label, sparing the live.

Deliberate choices:
- Only objects labelled ``dev.smelter=1`` (``docker_engine.labels``) are ever judged, so a prune
  can never touch a container or image that someone else made.
- A container of a live owner process (``docker_engine.owner_labels``) stays, and so does an
  instance image one of whose aliases belongs to a live run (``docker_engine.new_owner``); a
  SIGKILLed run's leftovers go.
- What no owner can be read from (the step containers and untagged layers of an image build,
  env and base images) is spared while it may belong to a build in progress
  (``BUILD_GRACE_SECONDS``), since removing it kills that build.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import docker
import docker.errors

from smelter.transforms.adapters.docker_engine import (
    KIND_BASE,
    KIND_ENV,
    KIND_INSTANCE,
    KIND_ROOTFS,
    LABEL,
    LABEL_KIND,
    LABEL_OWNER_HOST,
    _short,
    owner_alive,
    owner_of,
    owner_token_alive,
)
from smelter.transforms.dates import parse_utc

# A build step runs in a container the engine makes from the step's parent image: it inherits
# that image's labels (a base image's dev.smelter=1) but never the build's own ``labels`` (those
# reach the final image only; checked on the engine), so it carries no owner. Putting the owner
# into the Dockerfile instead would change every layer's cache key on every run. So an unowned
# container is spared while it may be a step of a live build: running, or created / exited
# within this many seconds (the builder commits a step's container after it exits, then
# removes it; forcerm removes those of failed builds too, so real leftovers are rare).
BUILD_GRACE_SECONDS = 600.0
_FRACTION = re.compile(r"(\.\d{1,6})\d*")


def _engine_time(text: str) -> float:
    """Seconds since the epoch of an engine timestamp (``2024-05-01T10:00:00.123456789Z``)."""
    try:
        return parse_utc(_FRACTION.sub(r"\1", text)).timestamp()
    except ValueError:
        return 0.0


def maybe_live_build_step(
    client: docker.DockerClient, summary: Mapping[str, Any], now: float | None = None
) -> bool:
    """True for a container with no owner that may be a step of an image build in progress
    (see ``BUILD_GRACE_SECONDS``); ``summary`` is an entry of ``client.api.containers()``."""
    if LABEL_OWNER_HOST in (summary.get("Labels") or {}):
        return False  # owned: ``owner_alive`` decides
    now = time.time() if now is None else now
    state = summary.get("State", "")
    if state in ("running", "restarting", "paused"):
        return True
    if state == "created":
        return now - float(summary.get("Created") or 0) < BUILD_GRACE_SECONDS
    try:
        finished = client.api.inspect_container(summary["Id"])["State"].get("FinishedAt", "")
    except docker.errors.NotFound:
        return False
    return now - _engine_time(finished) < BUILD_GRACE_SECONDS


def maybe_live_build_layer(attrs: Mapping[str, Any], now: float) -> bool:
    """True for an untagged (dangling) image that may be a layer of a build in progress.

    The builder commits each step's container as an untagged image, removes the container and
    starts the next step's container from that image; the final image, too, is untagged until
    the build tags it. In those gaps no container holds the layer (which is what stops a
    non-forced removal at other times), and removing it kills the build ("No such image").
    Such a layer carries its parent's labels only (dev.smelter=1, a kind, no owner), so which
    run made it cannot be told; a fresh one is spared for ``BUILD_GRACE_SECONDS``, like an
    unowned step container. A layer a step runs on for longer is held by that container.
    ``attrs`` is an entry of ``client.api.images()`` or ``Image.attrs``.
    """
    if [t for t in attrs.get("RepoTags") or () if t != "<none>:<none>"]:
        return False
    return _younger_than_grace(attrs.get("Created"), now)


def _younger_than_grace(created: Any, now: float) -> bool:
    """``created``: epoch seconds (a listing) or an engine timestamp (``Image.attrs``)."""
    when = float(created) if isinstance(created, int | float) else _engine_time(str(created))
    return now - when < BUILD_GRACE_SECONDS


def prune(
    client: docker.DockerClient,
    *,
    images: bool = False,
    all_images: bool = False,
    all_owners: bool = False,
    match: Mapping[str, str] | None = None,
    say: Callable[[str], None] = print,
    now: float | None = None,
) -> dict[str, int]:
    """Remove leftover smelter containers; with ``images`` also instance images, with
    ``all_images`` every smelter image (env and base too). Only labelled objects are touched,
    and containers of a live owner process (see ``owner_labels``) or of an image build that may
    be running (``maybe_live_build_step``) only with ``all_owners`` (counted as
    ``containers_spared``);
    likewise an instance image one of whose aliases belongs to a live run (see ``new_owner``)
    keeps that alias and its content tag (counted as ``spared``), while aliases of dead runs
    (a SIGKILLed run's leftovers) go. An untagged image that may be a layer of a build in
    progress (``maybe_live_build_layer``) stays too, even with ``all_owners`` (counted as
    ``layers_spared``): no flag can tell it from a leftover until it is old. Env, base and
    rootfs images (``all_images``) stay while the prune meets anything of a live run, or while
    they are fresh (counted as ``base_spared``), unless ``all_owners``. ``match``
    narrows everything to objects carrying these extra labels (e.g. one repo); ``now`` is the
    clock (seconds since the epoch), for tests.
    """
    extra = [f"{k}={v}" for k, v in (match or {}).items()]
    removed = {
        "containers": 0, "images": 0, "spared": 0, "containers_spared": 0, "layers_spared": 0,
        "base_spared": 0,
    }  # fmt: skip
    now = time.time() if now is None else now
    host = socket.gethostname()
    # Low-level listing: the SDK's list() inspects each container and races with removals.
    for c in client.api.containers(all=True, filters={"label": [f"{LABEL}=1", *extra]}):
        if not all_owners and (
            owner_alive(c.get("Labels") or {}, host) or maybe_live_build_step(client, c, now)
        ):
            # A live smelter process (another run, another test) or a live build still uses it.
            removed["containers_spared"] += 1
            continue
        try:
            client.api.remove_container(c["Id"], force=True)
            removed["containers"] += 1
        except docker.errors.APIError as e:  # gone, or someone else is removing it right now
            if not isinstance(e, docker.errors.NotFound) and e.status_code != 409:
                raise
    kinds: Iterable[str] = ()
    if all_images:
        kinds = (KIND_INSTANCE, KIND_ENV, KIND_BASE, KIND_ROOTFS)
    elif images:
        kinds = (KIND_INSTANCE,)
    for kind in kinds:  # children first, so parents are free to go
        # Summaries, not ``images.list()``: that inspects each image and raises when one goes
        # meanwhile (another prune, a run's own removal).
        for img in client.api.images(filters={"label": [f"{LABEL_KIND}={kind}", *extra]}):
            tags = [t for t in img.get("RepoTags") or () if t != "<none>:<none>"]
            if not tags and maybe_live_build_layer(img, now):
                removed["layers_spared"] += 1
                continue
            fresh = _younger_than_grace(img.get("Created"), now)
            if kind != KIND_INSTANCE and not all_owners and (live_seen(removed) or fresh):
                # Env and base images carry no owner, and a live run builds on them: an
                # instance build FROM an env image removed a moment before fails (the engine
                # then looks for it on Docker Hub). Kept while any live run shows on the
                # engine, and while just built (for a run that shows nothing else yet).
                removed["base_spared"] += 1
                continue
            refs = tags or [img["Id"]]
            held = set() if all_owners else {t for t in refs if _held_by_live_run(t, host)}
            if held:
                # A running smelter run still needs this image: only dead runs' aliases go;
                # the content tag stays for it (its own removal drops it when done).
                refs = [t for t in refs if owner_of(t) is not None and t not in held]
            # Never forced: an image a container (e.g. a running validation) still uses stays.
            try:
                for ref in refs:
                    client.images.remove(ref)
            except docker.errors.ImageNotFound:
                continue  # removed meanwhile by someone else
            except docker.errors.APIError as e:
                say(f"kept image {img['Id'].removeprefix('sha256:')[:12]}: {_short(e)}")
                continue
            removed["spared" if held else "images"] += 1
    return removed


def live_seen(counts: Mapping[str, int]) -> bool:
    """Whether a prune so far met objects of live smelter processes or builds."""
    return any(counts[k] for k in ("containers_spared", "spared", "layers_spared"))


def _held_by_live_run(tag: str, host: str) -> bool:
    owner = owner_of(tag)
    return owner is not None and owner_token_alive(owner, host)
