"""The one door to the Docker engine: connect, start one if needed, label, retry, run, build.

Deliberate choices:
- Everything goes through the docker SDK (``docker.from_env()``), so ``DOCKER_HOST`` points the
  whole pipeline at a remote engine; nothing here shells out to the ``docker`` CLI.
- Every container and image smelter creates carries ``dev.smelter=1`` plus a kind label
  (``base``/``env``/``instance``/``check``/``test``); ``docker_prune.prune`` finds leftovers by
  label only, so it can never touch a container or image that someone else made.
- Transient engine errors (5xx, connection resets, timeouts) are retried with exponential
  backoff in ``retry``; a 4xx is the caller's fault and surfaces at once.
- ``ensure_engine`` only starts a daemon when we are root and none answers: a fresh CI machine
  needs it, a developer laptop with Docker Desktop never reaches that branch.
- Instance images are shared by content (their tag is a content hash) but *held* through
  aliases: ``<content tag>.<owner token>.<nonce>``, one per record a run builds. Every removal
  removes only the caller's alias; Docker deletes an image only with its last tag, so two runs
  (or two workers) validating the same candidate never delete each other's image. The owner
  token names the launching process (host hash + pid), so a prune spares aliases of live runs
  and removes those of a run that was SIGKILLed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import logging
import os
import re
import secrets
import shutil
import socket
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import docker
import docker.errors
import requests.exceptions

from smelter.transforms.errors import Fatal, Retryable
from smelter.transforms.lifeline import pid_alive as _pid_alive

log = logging.getLogger(__name__)

T = TypeVar("T")

LABEL = "dev.smelter"
LABEL_KIND = "dev.smelter.kind"
LABEL_SUITE = "dev.smelter.suite"
LABEL_PYTHON = "dev.smelter.python"
LABEL_SOURCE = "dev.smelter.source"
LABEL_REPO = "dev.smelter.repo"
LABEL_INSTANCE = "dev.smelter.instance"
LABEL_ENV_HASH = "dev.smelter.env-hash"
LABEL_RECIPE = "dev.smelter.recipe"
LABEL_OWNER_HOST = "dev.smelter.owner-host"  # same names as transforms.sandbox uses
LABEL_OWNER_PID = "dev.smelter.owner-pid"

KIND_ROOTFS = "rootfs"
KIND_BASE = "base"
KIND_ENV = "env"
KIND_INSTANCE = "instance"
KIND_CHECK = "check"  # throwaway containers of the environment stage (import/collect checks)
KIND_TEST = "test"  # validation containers

DOCKERD_LOG = "/var/log/smelter-dockerd.log"
START_HINT = (
    "start one (as root: `smelter engine ensure`, or `dockerd --bridge=none --iptables=false &`) "
    "or point DOCKER_HOST at a running engine"
)


def labels(kind: str, **extra: str) -> dict[str, str]:
    """The labels every smelter object carries; ``extra`` keys are label suffixes."""
    out = {LABEL: "1", LABEL_KIND: kind}
    for key, value in extra.items():
        out[f"{LABEL}.{key.replace('_', '-')}"] = str(value)
    return out


def owner_labels() -> dict[str, str]:
    """Which process made a container, so ``prune`` can spare the ones still in use."""
    return {LABEL_OWNER_HOST: socket.gethostname(), LABEL_OWNER_PID: str(os.getpid())}


def owner_alive(container_labels: Mapping[str, str], host: str | None = None) -> bool:
    """True when the owning process is alive, or lives on another machine (we cannot tell)."""
    owner_host = container_labels.get(LABEL_OWNER_HOST)
    if owner_host is None:
        return False  # made before owners were recorded: a leftover
    if owner_host != (host or socket.gethostname()):
        return True
    try:
        os.kill(int(container_labels.get(LABEL_OWNER_PID, "")), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


# --------------------------------------------------------------------------- image aliases

# <host hash>-<pid>-<random>: who made an alias (for ``prune``), unique per run.
_OWNER = r"[0-9a-f]{6}-[0-9]{1,10}-[0-9a-f]{6}"
_ALIAS = re.compile(rf"^(?P<content>.+?)\.(?P<owner>{_OWNER})\.[0-9a-f]{{6}}$")


def _host_hash(host: str | None = None) -> str:
    return hashlib.sha256((host or socket.gethostname()).encode()).hexdigest()[:6]


def new_owner(host: str | None = None, pid: int | None = None) -> str:
    """A run's owner token: host hash, pid of the launching process, and a random part.

    Made once per run in the launching process (``smelter run`` puts it in the plan, a stage
    built without one makes it in ``__init__``) and pickled to every worker with the stage,
    so all workers of one run share it and the pid is one that lives as long as the run.
    """
    return f"{_host_hash(host)}-{pid if pid is not None else os.getpid()}-{secrets.token_hex(3)}"


def alias_tag(content: str, owner: str) -> str:
    """A fresh alias of the image tagged ``content``, held by ``owner`` (one per record)."""
    return f"{content}.{owner}.{secrets.token_hex(3)}"


def content_tag(tag: str) -> str:
    """The content-hash tag an alias stands for; any other tag is its own content tag."""
    m = _ALIAS.match(tag)
    return m.group("content") if m else tag


def owner_of(tag: str) -> str | None:
    """The owner token of an alias; None for any other tag."""
    m = _ALIAS.match(tag)
    return m.group("owner") if m else None


def owner_token_alive(owner: str, host: str | None = None) -> bool:
    """True when the run that made an alias is alive, or lives on another host (we cannot tell)."""
    host_hash, pid, _ = owner.split("-")
    if host_hash != _host_hash(host):
        return True
    return _pid_alive(int(pid))


@contextlib.contextmanager
def tag_lock(tag: str, folder: Path | None) -> Iterator[None]:
    """A machine-wide lock per content tag (no-op without ``folder``): aliasing the image and
    dropping its content tag never interleave on one machine. Across machines sharing a remote
    engine ``acquire_alias`` returning None (the image went meanwhile) is the fallback.

    The lock file is deleted by its holder, so a long-lived machine does not collect one file
    per instance ever built; a waiter that wakes on a deleted file takes the lock again.
    """
    if folder is None:
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', tag)}.lock"
    while True:
        f = open(path, "a+")  # noqa: SIM115 - held until released below
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            if os.stat(path).st_ino == os.fstat(f.fileno()).st_ino:
                break  # still the file at ``path``: the lock is ours
        except FileNotFoundError:
            pass
        f.close()  # the holder before us deleted it: lock the current file instead
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


def acquire_alias(
    client: docker.DockerClient, content: str, owner: str, image_id: str | None = None
) -> str | None:
    """Tag the image (``image_id``, else the one tagged ``content``) with a fresh alias of
    ``owner``; None when that image does not exist (any more).

    Tagging by id: if another run moves or drops the content tag meanwhile, the alias still
    holds the very image that was built or found.
    """
    alias = alias_tag(content, owner)
    repo, _, tag = alias.rpartition(":")
    try:
        if image_id is None:
            image_id = retry(lambda: client.images.get(content)).id
        retry(lambda: client.api.tag(image_id, repo, tag))
    except docker.errors.NotFound:
        return None
    return alias


# --------------------------------------------------------------------------- retry


def is_transient(err: BaseException) -> bool:
    """Engine hiccups worth retrying: server errors, dropped connections, timeouts."""
    if isinstance(err, Retryable):
        return True
    if isinstance(err, docker.errors.APIError):
        status = err.status_code or 0
        return status >= 500 and "No such" not in str(err)
    return isinstance(
        err, requests.exceptions.ConnectionError | requests.exceptions.Timeout | ConnectionError
    )


def retry(
    fn: Callable[[], T],
    *,
    attempts: int = 4,
    base_delay: float = 0.5,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``fn``; retry transient engine errors with exponential backoff, re-raise the rest.

    After the last attempt the error is raised as ``Retryable`` so callers can tell "the engine
    kept failing" from "this request is wrong".
    """
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as e:
            if not is_transient(e):
                raise
            if attempt == attempts - 1:
                raise Retryable(f"docker engine kept failing: {e}") from e
            delay = base_delay * 2**attempt
            log.warning("transient docker error (%s); retrying in %.1fs", e, delay)
            sleep(delay)
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- connect / start


def connect(timeout: int = 600) -> docker.DockerClient:
    """A client for the engine DOCKER_HOST (or the local socket) names, checked with a ping.

    ``timeout`` is the HTTP read timeout; builds and long waits need a generous one.
    """
    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
        return client
    except docker.errors.DockerException as e:
        where = os.environ.get("DOCKER_HOST", "the local socket")
        raise Fatal(f"no Docker engine answers at {where} ({_short(e)}); {START_HINT}") from None
    except requests.exceptions.RequestException as e:
        where = os.environ.get("DOCKER_HOST", "the local socket")
        raise Fatal(f"no Docker engine answers at {where} ({_short(e)}); {START_HINT}") from None


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[-1][:160] if text else type(err).__name__


def _answers(timeout: int = 5) -> bool:
    try:
        client = docker.from_env(timeout=timeout)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def apt_install(packages: Sequence[str]) -> None:
    """Install Debian packages (as root) for a fresh machine; ``Fatal`` with apt's words if not."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *packages]):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise Fatal(f"`{' '.join(cmd)}` failed: {_short(Exception(done.stderr))}")


def ensure_engine(
    start: bool = True, wait_seconds: float = 60.0, say: Callable[[str], None] = print
) -> str:
    """Make sure an engine answers; start a local one when allowed, root and none is running.

    Returns a one-line description of what was found or done; raises ``Fatal`` when no engine
    answers and none can be started.
    """
    if _answers():
        client = docker.from_env()
        try:
            version = client.version().get("Version", "?")
        finally:
            client.close()
        return f"docker engine {version} answers at {os.environ.get('DOCKER_HOST', 'local socket')}"
    if not start:
        raise Fatal(f"no Docker engine answers; {START_HINT}")
    if os.environ.get("DOCKER_HOST"):
        raise Fatal(f"no Docker engine answers at DOCKER_HOST={os.environ['DOCKER_HOST']}")
    if os.geteuid() != 0:
        raise Fatal(
            f"no Docker engine answers and we are not root, so cannot start one; {START_HINT}"
        )
    if not shutil.which("dockerd"):
        say("dockerd not found: installing Debian's docker.io (apt-get)")
        apt_install(["docker.io"])
    # No bridge and no iptables: works in containers/VMs without NET_ADMIN; builds then use the
    # host network and test containers network "none", which is what we want anyway.
    cmd = ["dockerd", "--bridge=none", "--iptables=false"]
    with open(DOCKERD_LOG, "ab") as logf:
        proc = subprocess.Popen(
            cmd,
            stdout=logf,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # survives our exit; not killed with our process group
        )
    say(f"started `{' '.join(cmd)}` (pid {proc.pid}, log {DOCKERD_LOG}); waiting for it")
    deadline = time.monotonic() + wait_seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise Fatal(f"dockerd exited with code {proc.returncode}; see {DOCKERD_LOG}")
        if _answers(timeout=2):
            return f"started dockerd (pid {proc.pid}); it answers; log {DOCKERD_LOG}"
        time.sleep(0.5)
    raise Fatal(f"dockerd did not answer within {wait_seconds:.0f}s; see {DOCKERD_LOG}")


# --------------------------------------------------------------------------- containers


# Not 0: zip (and so every wheel a build back end writes, flit_core's first) cannot store a
# date before 1980-01-01, and flit copies source mtimes into the wheel ("ZIP does not support
# timestamps before 1980"). 2000-01-01T00:00:00Z is fixed, so contexts stay byte-stable.
STABLE_MTIME = 946_684_800


def tar_files(
    files: Mapping[str, bytes | str], mode: int = 0o644, dirs: Mapping[str, Path] | None = None
) -> bytes:
    """An in-memory tar of ``{path: content}`` (and whole ``{arcname: directory}`` trees), for
    put_archive and build contexts. Directory entries keep their modes; every mtime is the
    fixed ``STABLE_MTIME``, so the same files give the same bytes and the same cache key.
    """

    def stable(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.mtime, info.uid, info.gid, info.uname, info.gname = STABLE_MTIME, 0, 0, "", ""
        return info

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for arcname, directory in sorted((dirs or {}).items()):
            tar.add(str(directory), arcname=arcname, filter=stable)
        for path, content in sorted(files.items()):
            data = content.encode() if isinstance(content, str) else content
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size = len(data)
            info.mode = mode
            info.mtime = STABLE_MTIME  # stable bytes: same files, same context hash, same key
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@dataclass(frozen=True)
class RunResult:
    exit_code: int | None
    output: str
    timed_out: bool
    seconds: float


def run_container(
    client: docker.DockerClient,
    image: str,
    command: list[str],
    *,
    kind: str = KIND_CHECK,
    files: Mapping[str, bytes | str] | None = None,
    timeout: float = 300.0,
    network: str = "none",
    mem_limit: str = "4g",
    pids_limit: int = 512,
    environment: Mapping[str, str] | None = None,
    user: str | None = None,
    workdir: str | None = None,
    output_limit: int = 1_000_000,
    extra_labels: Mapping[str, str] | None = None,
) -> RunResult:
    """Run ``command`` in a fresh container and always remove it.

    ``files`` ({absolute path: bytes}) are copied in before start, so a network-less container
    still gets its patches. Output is stdout+stderr interleaved, capped at ``output_limit``
    characters (the tail is kept).
    """
    started = time.monotonic()
    container = retry(
        lambda: client.containers.create(
            image,
            command,
            detach=True,
            network_mode=network,
            mem_limit=mem_limit,
            pids_limit=pids_limit,
            environment=dict(environment or {}),
            user=user or "",
            working_dir=workdir,
            labels={**labels(kind), **owner_labels(), **(extra_labels or {})},
        )
    )
    try:
        if files:
            container.put_archive("/", tar_files(files))
        container.start()
        timed_out = False
        try:
            status = container.wait(timeout=timeout)
            exit_code: int | None = int(status.get("StatusCode", -1))
        except requests.exceptions.RequestException:  # read timeout while waiting = wall clock
            timed_out, exit_code = True, None
            with contextlib.suppress(docker.errors.APIError):  # it may have exited meanwhile
                container.kill()
        raw = container.logs(stdout=True, stderr=True, tail=2000)
        output = raw.decode("utf-8", "replace")[-output_limit:]
        return RunResult(exit_code, output, timed_out, time.monotonic() - started)
    finally:
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True)


# --------------------------------------------------------------------------- images


def read_image_file(client: docker.DockerClient, image: str, path: str) -> bytes | None:
    """A file's bytes from an image, without starting a container (create, copy out, remove)."""
    container = retry(
        lambda: client.containers.create(
            image, ["true"], labels={**labels(KIND_CHECK), **owner_labels()}
        )
    )
    try:
        try:
            chunks, _ = container.get_archive(path)
        except docker.errors.NotFound:
            return None
        with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as tar:
            member = tar.next()
            f = tar.extractfile(member) if member else None
            return f.read() if f else None
    finally:
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True)


def remove_image(
    client: docker.DockerClient, tag: str, *, force: bool = True, lock_dir: Path | None = None
) -> bool:
    """Remove ``tag`` (an image we made); False if absent. Docker untags, and deletes the image
    only with its last tag, so an image another run holds by its own alias stays.

    For an alias (``alias_tag``) the content tag goes too once no other tag holds the image:
    a finished run leaves nothing behind, and the next run rebuilds from the (kept) env layer,
    as it would have without aliases. Not forced (``force=False``), an image a container still
    uses is kept and the error surfaces.
    """
    content = content_tag(tag)
    with tag_lock(content, lock_dir):
        try:
            retry(lambda: client.images.remove(tag, force=force))
        except docker.errors.ImageNotFound:
            return False
        if content != tag:
            _drop_unheld_content_tag(client, content)
    return True


def _drop_unheld_content_tag(client: docker.DockerClient, content: str) -> None:
    """Untag ``content`` when it is its image's only tag (no alias of any run holds it)."""
    try:
        img = retry(lambda: client.images.get(content))
        if set(img.tags) <= {content}:
            retry(lambda: client.images.remove(content, force=False))
    except docker.errors.ImageNotFound:
        pass
    except docker.errors.APIError as e:  # 409: a container (e.g. a leftover) still uses it
        if e.status_code != 409:
            raise


def image_exists(client: docker.DockerClient, tag: str) -> bool:
    try:
        retry(lambda: client.images.get(tag))
        return True
    except docker.errors.ImageNotFound:
        return False


# --------------------------------------------------------------------------- builds


class BuildFailed(Exception):
    """A docker build failed; ``log`` is the full build output (callers keep its tail)."""

    def __init__(self, message: str, log: str) -> None:
        super().__init__(message)
        self.log = log


def build_image(
    client: docker.DockerClient,
    *,
    dockerfile: str,
    tag: str,
    image_labels: Mapping[str, str],
    context_files: Mapping[str, bytes | str] | None = None,
    context_dirs: Mapping[str, Path] | None = None,
    buildargs: Mapping[str, str] | None = None,
    timeout: float = 3600.0,
    on_line: Callable[[str], None] | None = None,
    network: str = "host",
) -> tuple[str, str]:
    """Build ``dockerfile`` with an in-memory context; returns (id, log).

    ``network="host"`` (layers that install dependency lines only) because the engine may have
    no bridge (``--bridge=none``) and the build must reach the package index; ``"none"`` for
    layers that run a pull request's code (its ``setup.py``, its build back end), which must not
    reach the host or anything else. ``buildargs`` carry secrets-free settings such as an index
    URL; they are not written into the Dockerfile text we record.
    """
    files = {"Dockerfile": dockerfile, **(context_files or {})}
    context = io.BytesIO(tar_files(files, mode=0o755, dirs=context_dirs))
    lines: list[str] = []
    image_id = ""
    started = time.monotonic()
    stream = client.api.build(
        fileobj=context,
        custom_context=True,
        tag=tag,
        labels=dict(image_labels),
        rm=True,
        forcerm=True,
        network_mode=network,
        buildargs=dict(buildargs or {}),
        decode=True,
        timeout=int(timeout),
    )
    error = ""
    try:
        for chunk in stream:
            if "stream" in chunk:
                text = chunk["stream"]
                lines.append(text)
                if on_line and text.strip():
                    on_line(text.rstrip())
            if "aux" in chunk and "ID" in chunk["aux"]:
                image_id = chunk["aux"]["ID"]
            if "error" in chunk:
                error = chunk["error"]
                lines.append(error + "\n")
            if time.monotonic() - started > timeout:
                error = f"build exceeded {timeout:.0f}s"
                break
    except requests.exceptions.RequestException as e:
        error = f"build stream broke: {_short(e)}"
    log_text = "".join(lines)
    if error:
        raise BuildFailed(error.strip(), log_text)
    if not image_id:  # older engines only report the tag
        image_id = client.images.get(tag).id
    return image_id, log_text
