"""An image registry shared by workers (``--image-registry HOST:PORT/prefix``): push and pull.

Deliberate choices:
- Local names never change. An image is built, checked and aliased under its local content tag
  (``smelter/env:<slug>-<hash>``); the registry name (``HOST:PORT/prefix/env:<slug>-<hash>``)
  exists only for the push or the pull and is untagged right after. So Dockerfiles (``FROM
  smelter/env:…``), content hashes, aliases and ``prune`` behave the same with or without a
  registry, and a run with one builds byte-identical instance layers to a run without.
- A pulled image keeps its id (the config digest), so "pulled, not rebuilt" is checkable: the
  env image a second worker uses has the id of the one the first worker built.
- Only two things travel: env images (pushed after a build, pulled by a worker that lacks one
  before it builds) and the instance images of kept tasks, whose registry name is what the task
  records (``Environment.instance_image``), so the published ``image`` resolves on any machine.
- Registry errors are ``Retryable`` after the adapter's own retries (a record fails with
  ``engine_error``), except "not in the registry", which is the normal miss of a pull.
- ``check`` is one GET of ``/v2/`` before the run starts: a wrong address or a registry that is
  down is one line, not a traceback from a worker. Docker itself allows plain HTTP for
  registries on 127.0.0.0/8 (and ``--insecure-registry`` ones); elsewhere it needs TLS.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import docker
import docker.errors
import requests

from smelter.schemas import Candidate, Task
from smelter.transforms.adapters import docker_engine as eng
from smelter.transforms.environment.config import parse_registry
from smelter.transforms.errors import Fatal, Retryable

log = logging.getLogger(__name__)

LOCAL_NAMESPACE = "smelter/"  # local repositories: smelter/env, smelter/instance
ATTEMPTS = 3


@dataclass(frozen=True)
class Registry:
    """``host`` (``HOST[:PORT]``) and ``prefix`` (a repository path) of ``--image-registry``."""

    host: str
    prefix: str

    @classmethod
    def parse(cls, text: str) -> Registry:
        host, prefix = parse_registry(text)
        return cls(host, prefix)

    def __str__(self) -> str:
        return f"{self.host}/{self.prefix}"

    def name(self, local: str) -> str:
        """The registry name of a local tag: ``smelter/env:t`` -> ``HOST/prefix/env:t``."""
        repo, _, tag = eng.content_tag(local).rpartition(":")
        return f"{self}/{repo.removeprefix(LOCAL_NAMESPACE)}:{tag}"

    def owns(self, name: str) -> bool:
        """True for a name in this registry under this prefix (already pushed)."""
        return name.startswith(f"{self}/")

    def check(self, timeout: float = 5.0) -> str:
        """One line saying the registry answers; ``Fatal`` with the reason when it does not."""
        problems = []
        for scheme in ("https", "http"):
            url = f"{scheme}://{self.host}/v2/"
            try:
                r = requests.get(url, timeout=timeout)
            except requests.RequestException as e:
                problems.append(f"{scheme}: {type(e).__name__}")
                continue
            if r.status_code in (200, 401):  # 401: answers, wants a login (docker login)
                return f"image registry {self} answers ({url}, HTTP {r.status_code})"
            problems.append(f"{scheme}: HTTP {r.status_code}")
        raise Fatal(
            f"--image-registry {self}: no registry answers at {self.host} "
            f"({'; '.join(problems)}); start one or fix the address"
        )

    def catalog(self, timeout: float = 10.0) -> list[str]:
        """Repository names in the registry (``/v2/_catalog``), for checks and tests."""
        for scheme in ("http", "https"):
            try:
                r = requests.get(f"{scheme}://{self.host}/v2/_catalog", timeout=timeout)
            except requests.RequestException:
                continue
            if r.ok:
                return list(r.json().get("repositories") or [])
        return []


# --------------------------------------------------------------------------- push / pull


def push(client: docker.DockerClient, registry: Registry, local: str) -> str:
    """Push the image tagged ``local`` as its registry name; returns that name.

    The registry name is a temporary tag: it goes again once the push is done, so the local
    engine holds exactly what it held before (see the module docstring).
    """
    remote = registry.name(local)
    repo, _, tag = remote.rpartition(":")
    eng.retry(lambda: client.api.tag(local, repo, tag))
    try:
        for attempt in range(ATTEMPTS):
            error = ""
            try:
                for chunk in client.api.push(repo, tag=tag, stream=True, decode=True):
                    if "error" in chunk:
                        error = str(chunk.get("error") or chunk)
            except (docker.errors.APIError, requests.RequestException) as e:
                error = eng._short(e)
            if not error:
                return remote
            if attempt + 1 < ATTEMPTS:
                log.warning("push of %s failed (%s); retrying", remote, error)
                time.sleep(1.0 * 2**attempt)
        raise Retryable(f"push of {remote} failed: {error}")
    finally:
        _untag(client, remote)


def pull(client: docker.DockerClient, registry: Registry, local: str) -> bool:
    """Pull ``local``'s registry name and tag it ``local``; False when the registry lacks it."""
    remote = registry.name(local)
    repo, _, tag = remote.rpartition(":")
    for attempt in range(ATTEMPTS):
        try:
            client.api.pull(repo, tag=tag)
            break
        except docker.errors.NotFound:
            return False
        except docker.errors.APIError as e:
            if _missing(e):
                return False
            if attempt + 1 == ATTEMPTS:
                raise Retryable(f"pull of {remote} failed: {eng._short(e)}") from None
            log.warning("pull of %s failed (%s); retrying", remote, eng._short(e))
            time.sleep(1.0 * 2**attempt)
    local_repo, _, local_tag = local.rpartition(":")
    try:
        eng.retry(lambda: client.api.tag(remote, local_repo, local_tag))
    finally:
        _untag(client, remote)
    return True


def pull_name(client: docker.DockerClient, name: str) -> None:
    """Pull a full image name as published (e.g. a task's ``instance_image``)."""
    repo, _, tag = name.rpartition(":")
    client.api.pull(repo, tag=tag)


def _missing(err: docker.errors.APIError) -> bool:
    text = str(err).lower()
    return "manifest unknown" in text or "not found" in text or "does not exist" in text


def _untag(client: docker.DockerClient, name: str) -> None:
    """Drop one extra name of an image (a temporary registry name, a hold): callers untag only
    names the image has besides the tag that keeps it, so the image itself stays."""
    try:
        client.api.remove_image(name, noprune=True)
    except docker.errors.NotFound:
        pass
    except docker.errors.APIError as e:  # 409: a container uses it; the name stays, harmless
        log.warning("could not untag %s: %s", name, eng._short(e))


def publish_task(
    client: docker.DockerClient, registry: Registry | None, task: Task, source: str | None = None
) -> Task:
    """``task`` naming its instance image in ``registry`` after a push of ``source`` (a local
    tag of that image; default: the content tag the task names, which validation keeps for
    kept tasks); unchanged without a registry or when the name already is one of it."""
    env = task.environment
    if registry is None or registry.owns(env.instance_image):
        return task
    name = push(client, registry, source or env.instance_image)
    return task.model_copy(update={"environment": env.model_copy(update={"instance_image": name})})


@dataclass
class Hold:
    """An alias held while a record is validated and its image pushed (``held_for_push``)."""

    alias: str | None = None
    task: Task | None = None  # set when validation kept the record


@contextlib.contextmanager
def held_for_push(
    client: docker.DockerClient, registry: Registry | None, record: Candidate
) -> Iterator[Hold]:
    """A second alias of the record's instance image, owned by this process, from before
    validation until after the push: between validation releasing its own alias and the push,
    a concurrent ``smelter images prune`` sees a kept content tag no live run holds and may
    remove it. Released as validation's own alias is: a plain untag when the record was kept
    (its content tag stays), with the image otherwise. A no-op without a registry."""
    hold = Hold()
    env = record.environment
    if registry is None or env is None:
        yield hold
        return
    from smelter.transforms.environment.builder import locks_dir  # that module imports this one

    content = eng.content_tag(env.instance_image)
    with eng.tag_lock(content, locks_dir()):
        hold.alias = eng.acquire_alias(client, content, eng.new_owner())
    try:
        yield hold
    finally:
        if hold.alias is not None and hold.task is not None:
            _untag(client, hold.alias)
        elif hold.alias is not None:
            eng.remove_image(client, hold.alias, force=False, lock_dir=locks_dir())


# --------------------------------------------------------------------------- a local registry

REGISTRY_BINARY = "docker-registry"  # Debian's package of distribution/distribution
REGISTRY_PACKAGE = "docker-registry"


def ensure_registry_binary(say: Callable[[str], None] = print) -> str:
    """The path of Debian's ``docker-registry``, installed (apt, as root) when missing: what the
    tests and a single-machine setup start a local registry with."""
    found = shutil.which(REGISTRY_BINARY)
    if found:
        return found
    if os.geteuid() != 0:
        raise Fatal(f"{REGISTRY_BINARY} not found and we are not root; "
                    f"install Debian's {REGISTRY_PACKAGE} package")  # fmt: skip
    say(f"{REGISTRY_BINARY} not found: installing Debian's {REGISTRY_PACKAGE} (apt-get)")
    eng.apt_install([REGISTRY_PACKAGE])
    found = shutil.which(REGISTRY_BINARY)
    if not found:
        raise Fatal(f"{REGISTRY_PACKAGE} installed but {REGISTRY_BINARY} is not on PATH")
    return found


def registry_config(root: str, addr: str) -> str:
    """The YAML of a filesystem-backed registry at ``addr`` storing under ``root``."""
    return (
        "version: 0.1\n"
        "log:\n  level: warn\n"
        "storage:\n"
        f"  filesystem:\n    rootdirectory: {root}\n"
        "  delete:\n    enabled: true\n"
        "http:\n"
        f"  addr: {addr}\n"
    )


def start_local_registry(
    config_path: str, log_path: str, wait_seconds: float = 30.0
) -> subprocess.Popen[bytes]:
    """Start ``docker-registry serve CONFIG`` and wait until ``/v2/`` answers."""
    binary = ensure_registry_binary()
    with open(config_path) as f:
        addr = re.search(r"addr: (\S+)", f.read())
    assert addr, "config without http addr"
    with open(log_path, "ab") as logf:
        proc = subprocess.Popen(
            [binary, "serve", config_path], stdout=logf, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
    deadline = time.monotonic() + wait_seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise Fatal(f"{binary} exited with code {proc.returncode}; see {log_path}")
        try:
            if requests.get(f"http://{addr.group(1)}/v2/", timeout=1).status_code == 200:
                return proc
        except requests.RequestException:
            pass
        time.sleep(0.2)
    proc.kill()
    raise Fatal(f"{binary} did not answer within {wait_seconds:.0f}s; see {log_path}")
