"""Run one command in a fresh, locked-down container and always get rid of it.

Deliberate choices:
- Limits are the engine's, not ours: ``network_mode="none"`` (only ``lo`` exists), memory with
  no extra swap, CPU quota, a pids limit (a fork bomb hits ``EAGAIN``, not the host), all
  capabilities dropped except the few a root setup step needs to chown and drop privileges,
  ``no-new-privileges``, and a size-capped tmpfs on ``/tmp``.
- Output is bounded twice: the engine's json-file log rotates at a few times the cap (so a test
  printing gigabytes cannot fill the engine's disk), and we read the log stream chunk by chunk
  keeping only the last ``log_bytes`` (the end is where pytest's summary is). Nothing ever
  buffers the whole output.
- Files go in with ``put_archive`` before start (a network-less container still gets its
  patches) and come out with ``get_archive`` after exit, read with a size cap.
- The wall clock is enforced from outside (``wait(timeout)`` then ``kill``): a hung test cannot
  ignore it.
- Every container is labelled with the owning process (host + pid). It is removed in
  ``finally``; on SIGTERM/SIGINT a handler removes this process's live containers and refuses
  new ones before the usual exit (threads blocked in ``wait`` then return at once). Python runs
  handlers only in the main thread, so callers must not block it indefinitely (validate.py
  polls its futures). After a SIGKILL nothing in the process runs, so ``prune_containers``
  removes containers whose owner is dead.
- Containers also carry the pid of the *run* (``LABEL_RUN_PID``, the launching ``smelter run``),
  and no container is created or started once that run is gone (``lifeline.check``): a worker
  outliving a SIGKILLed run must not start tests for it. When the run dies, the worker's
  lifeline removes this process's live containers before killing it; ``collect_dead_runs``, at
  the start of the next run, removes what is left: containers of a dead worker or dead run, and
  instance image aliases of dead runs.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import logging
import signal
import socket
import tarfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import docker
import docker.errors
import requests.exceptions
from docker.types import LogConfig

from smelter.transforms import lifeline
from smelter.transforms.adapters import docker_engine as eng

log = logging.getLogger(__name__)

LABEL_OWNER_HOST = eng.LABEL_OWNER_HOST
LABEL_OWNER_PID = eng.LABEL_OWNER_PID
LABEL_RUN_PID = f"{eng.LABEL}.run-pid"  # the launching process; same host as the owner
INBOX = "/smelter"  # where put_archive drops files; outside /tmp, which is a tmpfs at run time
MAX_FETCH_BYTES = 64 * 1024 * 1024
NEEDED_CAPS = ("CHOWN", "DAC_OVERRIDE", "FOWNER", "SETUID", "SETGID", "KILL")


@dataclass(frozen=True)
class SandboxLimits:
    """What one test container may use."""

    timeout_seconds: float = 900.0
    memory: str = "4g"
    cpus: float = 2.0
    pids: int = 1024
    log_bytes: int = 200_000
    tmpfs_size: str = "1g"


@dataclass(frozen=True)
class SandboxResult:
    """How a container run ended; ``files`` holds what came back (missing paths are absent)."""

    exit_code: int | None
    timed_out: bool
    seconds: float
    log: str
    log_truncated: bool = False
    oom_killed: bool = False
    files: dict[str, bytes] = field(default_factory=dict)


# --------------------------------------------------------------------------- live registry

_live: dict[str, Any] = {}
_live_lock = threading.Lock()
_handlers_installed = False
_closing = threading.Event()  # set by a signal: no new container may start after it
_previous: dict[int, Any] = {}


owner_labels = eng.owner_labels


def remove_live_containers() -> int:
    """Force-remove every container this process still has running; returns how many."""
    with _live_lock:
        containers = list(_live.values())
        _live.clear()
    for c in containers:
        with contextlib.suppress(docker.errors.APIError, requests.exceptions.RequestException):
            c.remove(force=True)
    return len(containers)


class SandboxClosed(RuntimeError):
    """The process is shutting down (a signal arrived); no new test container starts."""


def _on_run_death() -> None:
    """The run ended (its lifeline fired): start nothing more, remove what runs."""
    _closing.set()
    removed = remove_live_containers()
    if removed:
        log.warning("run ended: removed %d test container(s)", removed)


lifeline.at_run_death(_on_run_death)


def run_labels() -> dict[str, str]:
    """Which run a container serves: the next run collects it once that run is gone."""
    return {LABEL_RUN_PID: str(lifeline.current_run()[1])}


def _on_signal(signum: int, frame: FrameType | None) -> None:
    _closing.set()
    removed = remove_live_containers()
    if removed:
        log.warning("signal %d: removed %d test container(s)", signum, removed)
    previous = _previous.get(signum)
    if callable(previous):
        previous(signum, frame)
    elif signum == signal.SIGINT:
        raise KeyboardInterrupt
    else:
        raise SystemExit(128 + signum)


def install_cleanup_handlers() -> bool:
    """Chain SIGTERM/SIGINT handlers that remove live containers first; True when installed.

    Signal handlers can only be set from the main thread; elsewhere (a Beam worker thread)
    the ``finally`` blocks and ``prune_containers`` remain the cleanup paths.
    """
    global _handlers_installed
    if _handlers_installed:
        return True
    if threading.current_thread() is not threading.main_thread():
        return False
    for signum in (signal.SIGTERM, signal.SIGINT):
        _previous[signum] = signal.getsignal(signum)
        signal.signal(signum, _on_signal)
    atexit.register(remove_live_containers)  # an exit that skipped some thread's finally
    _handlers_installed = True
    return True


# --------------------------------------------------------------------------- prune


def prune_containers(client: docker.DockerClient, *, all_owners: bool = False) -> int:
    """Remove test containers whose owning process is gone (or all of them with ``all_owners``).

    Safe while other smelter runs share the engine: a live owner's containers are kept.
    """
    host, removed = socket.gethostname(), 0
    flt = {"label": [f"{eng.LABEL}=1", f"{eng.LABEL_KIND}={eng.KIND_TEST}"]}
    # Low-level listing: the SDK's list() inspects each container and races with removals.
    for c in client.api.containers(all=True, filters=flt):
        if all_owners or not eng.owner_alive(c.get("Labels") or {}, host):
            try:
                client.api.remove_container(c["Id"], force=True)
                removed += 1
            except docker.errors.APIError as e:  # gone, or being removed by someone else
                if not isinstance(e, docker.errors.NotFound) and e.status_code != 409:
                    raise
    return removed


def collect_dead_runs(client: docker.DockerClient | None = None) -> dict[str, int]:
    """Remove what killed runs on this host left: smelter containers whose owning process or
    run is gone, and instance image aliases of runs that are gone (their content tag too once
    no live alias holds it). Called by a run at its start, before it makes anything.

    Only objects with an owner on this host are judged, and a live owner's are kept, so runs
    and tests sharing the engine are safe; an image a container still uses stays.
    """
    from smelter.transforms.environment.builder import (
        locks_dir,  # the environment stage's tag locks
    )

    own = client is None
    client = client or eng.connect()
    host, out = socket.gethostname(), {"containers": 0, "aliases": 0}
    try:
        flt = {"label": [f"{eng.LABEL}=1", f"{LABEL_OWNER_HOST}={host}"]}
        for c in client.api.containers(all=True, filters=flt):
            labels = c.get("Labels") or {}
            pids = [labels.get(LABEL_OWNER_PID, ""), labels.get(LABEL_RUN_PID, "")]
            if all(not p.isdigit() or lifeline.pid_alive(int(p)) for p in pids):
                continue
            try:
                client.api.remove_container(c["Id"], force=True)
                out["containers"] += 1
            except docker.errors.APIError as e:  # gone, or being removed by someone else
                if not isinstance(e, docker.errors.NotFound) and e.status_code != 409:
                    raise
        # The low-level listing: ``images.list`` inspects each image after listing, and one
        # removed in between by a concurrent run raised ImageNotFound and stopped this run.
        images = client.api.images(filters={"label": f"{eng.LABEL_KIND}={eng.KIND_INSTANCE}"})
        for img in images:
            for tag in img.get("RepoTags") or []:
                owner = eng.owner_of(tag)
                if owner is None or eng.owner_token_alive(owner, host):
                    continue
                with contextlib.suppress(docker.errors.APIError):  # 409: a container uses it
                    if eng.remove_image(client, tag, force=False, lock_dir=locks_dir()):
                        out["aliases"] += 1
    finally:
        if own:
            client.close()
    return out


# --------------------------------------------------------------------------- tar helpers


def read_capped(chunks: Iterable[bytes], limit: int) -> tuple[bytes, bool]:
    """The last ``limit`` bytes of a stream, and whether anything was dropped; O(limit) memory."""
    kept: deque[bytes] = deque()
    size, dropped = 0, False
    for chunk in chunks:
        if not chunk:
            continue
        kept.append(chunk)
        size += len(chunk)
        while size > limit and kept:
            extra = size - limit
            head = kept[0]
            dropped = True
            if len(head) <= extra:
                kept.popleft()
                size -= len(head)
            else:
                kept[0] = head[extra:]
                size -= extra
    return b"".join(kept), dropped


def untar_single(data: bytes) -> bytes | None:
    """The content of the one regular file in a ``get_archive`` tarball."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar:
            if member.isfile():
                f = tar.extractfile(member)
                return f.read() if f else None
    return None


# --------------------------------------------------------------------------- sandbox


class Sandbox:
    """Runs commands in throwaway containers with the limits above; one client, many runs."""

    def __init__(
        self,
        client: docker.DockerClient,
        limits: SandboxLimits | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self.limits = limits or SandboxLimits()
        self._clock = clock

    def run(
        self,
        image: str,
        command: Sequence[str],
        *,
        files: Mapping[str, bytes | str] | None = None,
        fetch: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        user: str | None = None,
        workdir: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> SandboxResult:
        """Run ``command`` in a fresh container from ``image``; the container never outlives it.

        ``files`` are {absolute path: content} copied in before start; ``fetch`` are absolute
        paths copied out after exit (absent from ``SandboxResult.files`` when missing).
        """
        lim = self.limits
        log_cap = max(4 * lim.log_bytes, 1 << 20)
        lifeline.check()  # no container for a run that is gone
        container = eng.retry(
            lambda: self._client.containers.create(
                image,
                list(command),
                detach=True,
                network_mode="none",
                mem_limit=lim.memory,
                memswap_limit=lim.memory,  # no swap beyond the memory limit
                nano_cpus=int(lim.cpus * 1e9),
                pids_limit=lim.pids,
                cap_drop=["ALL"],
                cap_add=list(NEEDED_CAPS),
                security_opt=["no-new-privileges"],
                tmpfs={"/tmp": f"rw,exec,nosuid,size={lim.tmpfs_size},mode=1777"},
                environment=dict(env or {}),
                user=user or "",
                working_dir=workdir,
                log_config=LogConfig(
                    type=LogConfig.types.JSON,
                    # Two files: after a rotation the previous one still holds a full tail.
                    config={"max-size": str(log_cap), "max-file": "2"},
                ),
                labels={
                    **eng.labels(eng.KIND_TEST),
                    **owner_labels(),
                    **run_labels(),
                    **(labels or {}),
                },
            )
        )
        with _live_lock:
            _live[container.id] = container
        try:
            if _closing.is_set():
                raise SandboxClosed("shutting down; not starting a test container")
            return self._run(container, files or {}, fetch)
        finally:
            with _live_lock:
                _live.pop(container.id, None)
            # Also on KeyboardInterrupt/SystemExit: a container must not outlive its run.
            # NotFound/409: a signal handler or a prune removed it (or is removing it) already.
            try:
                container.remove(force=True)
            except docker.errors.APIError as e:
                if not isinstance(e, docker.errors.NotFound) and e.status_code != 409:
                    raise

    def _run(
        self, container: Any, files: Mapping[str, bytes | str], fetch: Sequence[str]
    ) -> SandboxResult:
        lim = self.limits
        if files:
            container.put_archive("/", eng.tar_files(files, mode=0o755))
        lifeline.check()  # the run may have ended while the files went in
        started = self._clock()
        container.start()
        if _closing.is_set():  # the signal came while we were starting: the handler missed it
            raise SandboxClosed("shutting down; test container stopped")
        lifeline.check()
        timed_out, exit_code = False, None
        try:
            status = container.wait(timeout=lim.timeout_seconds)
            exit_code = int(status.get("StatusCode", -1))
        except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
            timed_out = True
            with contextlib.suppress(docker.errors.APIError):
                container.kill()
            with contextlib.suppress(docker.errors.APIError, requests.exceptions.RequestException):
                container.wait(timeout=30)
        seconds = self._clock() - started
        stream = container.logs(stdout=True, stderr=True, stream=True, follow=False)
        try:
            raw, truncated = read_capped(stream, lim.log_bytes)
        finally:
            with contextlib.suppress(Exception):
                stream.close()
        oom = False
        with contextlib.suppress(docker.errors.APIError):
            container.reload()
            oom = bool(container.attrs.get("State", {}).get("OOMKilled"))
        out: dict[str, bytes] = {}
        for path in fetch:
            data = self._fetch(container, path)
            if data is not None:
                out[path] = data
        return SandboxResult(
            exit_code=exit_code,
            timed_out=timed_out,
            seconds=seconds,
            log=raw.decode("utf-8", "replace"),
            log_truncated=truncated,
            oom_killed=oom,
            files=out,
        )

    @staticmethod
    def _fetch(container: Any, path: str) -> bytes | None:
        try:
            chunks, stat = container.get_archive(path)
        except docker.errors.NotFound:
            return None
        if int(stat.get("size", 0)) > MAX_FETCH_BYTES:
            log.warning("not fetching %s: %d bytes is over the cap", path, stat.get("size"))
            return None
        data, dropped = read_capped(chunks, MAX_FETCH_BYTES + 1024 * 1024)
        return None if dropped else untar_single(data)
