"""Base images (OS + Python + git + uv) built without any registry.

Deliberate choices:
- ``debootstrap --variant=minbase`` of a Debian suite, tarred and ``docker import``-ed: the only
  network this needs is the Debian mirror, which air-gapped clusters mirror anyway. Debian's own
  python3 fixes the version per suite (bullseye 3.9, bookworm 3.11, trixie 3.13).
- The root filesystem tarball is cached under ``~/.cache/smelter/rootfs/`` keyed by suite,
  package list and mirror, so a second bootstrap (or one on a fresh engine) is an import of a
  local file: seconds, not minutes. A file lock makes concurrent bootstraps wait for one another.
- Tags are content hashes: rootfs tag = hash of the tarball, base tag = hash of (rootfs tag,
  rendered Dockerfile, uv binary). Same inputs, same tag, nothing rebuilt.
- uv is copied from the host (the one installed next to smelter) into every base image, never
  downloaded: builds stay offline apart from the package index.
- ``source="auto"`` uses ``python:X.Y-slim`` only when it is already local or a registry answers
  within a few seconds; otherwise debootstrap. Never hangs on an unreachable registry.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from string import Template
from typing import Literal

import docker
import docker.errors
import requests

from smelter.transforms import docker_engine as eng
from smelter.transforms.errors import Fatal
from smelter.transforms.helpers import stable_hash, tail

log = logging.getLogger(__name__)

SUITE_PYTHON: dict[str, str] = {"bullseye": "3.9", "bookworm": "3.11", "trixie": "3.13"}
BASE_PACKAGES: tuple[str, ...] = (
    "python3",
    "python3-venv",  # ensurepip, so `python -m venv` works
    "python-is-python3",  # a `python` on PATH, as in the python:X.Y images
    "git",
    "ca-certificates",
)
DEFAULT_MIRROR = "http://deb.debian.org/debian"
ROOTFS_FORMAT = 1  # bump when the tarball recipe changes (invalidates every cached rootfs)
BASE_FORMAT = 2  # bump when the base layer's build changes beyond its Dockerfile text
ROOTFS_REPO = "smelter/rootfs"
BASE_REPO = "smelter/base"
LABEL_DOCKERFILE = f"{eng.LABEL}.dockerfile"  # the rendered base Dockerfile, for the records
LABEL_FROM = f"{eng.LABEL}.from"
REGISTRY_PROBE_URL = "https://registry-1.docker.io/v2/"

Source = Literal["auto", "local", "registry"]


def default_cache_dir() -> Path:
    root = os.environ.get("SMELTER_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "smelter"
    )
    return Path(root)


@dataclass(frozen=True)
class BaseImage:
    """A bootstrapped base image and how it came to be."""

    suite: str
    python_version: str
    tag: str
    source: Literal["local", "registry"]
    dockerfile: str = field(repr=False)
    rootfs_tag: str | None = None
    seconds: float = 0.0
    built: bool = False  # False: the tag already existed (cache hit)
    rootfs_cached: bool = True  # False: debootstrap ran this time


# --------------------------------------------------------------------------- pure parts


def python_for_suite(suite: str) -> str:
    try:
        return SUITE_PYTHON[suite]
    except KeyError:
        known = ", ".join(SUITE_PYTHON)
        raise Fatal(f"unknown Debian suite {suite!r}; known: {known}") from None


def suite_for_python(version: str) -> str | None:
    return next((s for s, v in SUITE_PYTHON.items() if v == version), None)


def rootfs_key(suite: str, packages: Sequence[str], mirror: str) -> str:
    """Cache key of a root filesystem tarball: what goes into debootstrap, nothing else."""
    return stable_hash(ROOTFS_FORMAT, suite, sorted(packages), mirror, length=12)


def debootstrap_command(suite: str, root: str, packages: Sequence[str], mirror: str) -> list[str]:
    return [
        "debootstrap", "--variant=minbase", f"--include={','.join(sorted(packages))}",
        suite, root, mirror,
    ]  # fmt: skip


def render_base_dockerfile(
    suite: str, from_image: str, source: Literal["local", "registry"], rootfs_note: str = ""
) -> str:
    """The base layer's Dockerfile; registry images still need git, local ones have it."""
    if source == "registry":
        setup = (
            "RUN apt-get update && apt-get install -y --no-install-recommends git ca-certificates"
            " && rm -rf /var/lib/apt/lists/*"
        )
        note = f"the registry image {from_image}"
    else:
        setup = "# (git, python3 and ca-certificates come from debootstrap --include)"
        note = rootfs_note or f"debootstrap of Debian {suite}, imported as {from_image}"
    text = resources.files("smelter.dockerfiles").joinpath("base.Dockerfile").read_text()
    return Template(text).substitute(
        suite=suite, python_version=python_for_suite(suite), from_image=from_image,
        system_setup=setup, rootfs_note=note,
    )  # fmt: skip


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def host_uv() -> Path:
    """The uv binary that ships with smelter (the venv's), copied into base images."""
    candidates = [Path(sys.executable).with_name("uv"), shutil.which("uv")]
    for c in candidates:
        if c and Path(c).is_file():
            return Path(c)
    raise Fatal("uv not found next to the Python running smelter nor on PATH; pip install uv")


# --------------------------------------------------------------------------- side effects


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock: concurrent bootstraps/builds of one thing wait, not race."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_rootfs(
    suite: str,
    cache_dir: Path,
    packages: Sequence[str] = BASE_PACKAGES,
    mirror: str = DEFAULT_MIRROR,
    say: Callable[[str], None] = print,
) -> tuple[Path, bool]:
    """The cached rootfs tarball for ``suite``; runs debootstrap when absent. (path, was_cached)."""
    key = rootfs_key(suite, packages, mirror)
    target = cache_dir / "rootfs" / f"{suite}-{key}.tar"
    with file_lock(target.with_suffix(".lock")):
        if target.exists():
            return target, True
        if os.geteuid() != 0:
            raise Fatal(
                f"debootstrap needs root; run `smelter images bootstrap --suite {suite}` as root"
            )
        if not shutil.which("debootstrap"):
            # A fresh machine: we are root (checked above), so install it like docker.io.
            say("debootstrap not found: installing Debian's debootstrap (apt-get)")
            eng.apt_install(["debootstrap"])
        work = Path(tempfile.mkdtemp(prefix=f"debootstrap-{suite}-", dir=target.parent))
        root = work / "root"
        try:
            cmd = debootstrap_command(suite, str(root), packages, mirror)
            say(f"debootstrap {suite} ({', '.join(packages)}); this takes a few minutes once")
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                log_path = work.with_suffix(".log")
                log_path.write_text(proc.stdout + proc.stderr)
                raise Fatal(
                    f"debootstrap of {suite} failed (exit {proc.returncode}); see {log_path}: "
                    f"{tail(proc.stderr.strip() or proc.stdout.strip(), 200)}"
                )
            # Package caches and lists only bloat every image built on top.
            for junk in ("var/cache/apt/archives", "var/lib/apt/lists", "var/log"):
                for p in (root / junk).glob("*"):
                    if p.is_file():
                        p.unlink()
            partial = work / "rootfs.tar"
            tar = [
                "tar", "--numeric-owner", "--sort=name", "--mtime=@0", "--xattrs",
                "-C", str(root), "-cf", str(partial), ".",
            ]  # fmt: skip
            subprocess.run(tar, check=True, capture_output=True)
            os.replace(partial, target)  # atomic: a killed bootstrap leaves no half tarball
        finally:
            _remove_tree_safely(work)
        return target, False


def _mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path`` (debootstrap mounts /proc, /sys, maybe /dev in root)."""
    prefix = str(path.resolve())
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    points = [line.split()[4] for line in lines if len(line.split()) > 4]
    return sorted((p for p in points if p == prefix or p.startswith(prefix + "/")), reverse=True)


def _remove_tree_safely(path: Path) -> None:
    """rmtree, but never into a mount: a bind-mounted host /dev must not be emptied."""
    for point in _mounts_under(path):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)
    if _mounts_under(path):
        log.warning("left %s in place: something is still mounted below it", path)
        return
    shutil.rmtree(path, ignore_errors=True)


def import_rootfs(client: docker.DockerClient, suite: str, tarball: Path) -> str:
    """``docker import`` the tarball under a content-hash tag (no-op when the tag exists)."""
    tag = f"{ROOTFS_REPO}:{suite}-{file_sha256(tarball)[:12]}"
    if eng.image_exists(client, tag):
        return tag
    repo, version = tag.split(":")
    label_args = " ".join(
        f"{k}={v}" for k, v in eng.labels(eng.KIND_ROOTFS, suite=suite,
                                             python=python_for_suite(suite)).items()
    )  # fmt: skip
    changes = [f"LABEL {label_args}", 'CMD ["/bin/sh"]', "ENV LANG=C.UTF-8"]
    eng.retry(lambda: client.api.import_image_from_file(str(tarball), repo, version, changes))
    if not eng.image_exists(client, tag):
        raise Fatal(f"docker import of {tarball} did not produce {tag}")
    return tag


def registry_answers(timeout: float = 3.0) -> bool:
    """A cheap, bounded probe: any HTTP answer from the registry (401 included) counts."""
    try:
        requests.get(REGISTRY_PROBE_URL, timeout=timeout)
        return True
    except requests.RequestException:
        return False


def _registry_image(client: docker.DockerClient, python: str, pull: bool) -> str | None:
    ref = f"python:{python}-slim"
    if eng.image_exists(client, ref):
        return ref
    if not pull:
        return None
    try:
        client.images.pull("python", tag=f"{python}-slim")
        return ref
    except docker.errors.APIError as e:
        log.warning("pull of %s failed: %s", ref, e)
        return None


def build_base(
    client: docker.DockerClient,
    suite: str,
    from_image: str,
    source: Literal["local", "registry"],
    rootfs_note: str = "",
    say: Callable[[str], None] = print,
) -> tuple[str, str, bool]:
    """Build the base layer on ``from_image``; returns (tag, rendered Dockerfile, built)."""
    dockerfile = render_base_dockerfile(suite, from_image, source, rootfs_note)
    uv = host_uv()
    tag = f"{BASE_REPO}:py{python_for_suite(suite)}-{suite}-" + stable_hash(
        BASE_FORMAT, from_image, dockerfile, file_sha256(uv), length=12
    )
    if eng.image_exists(client, tag):
        return tag, dockerfile, False
    image_labels = eng.labels(
        eng.KIND_BASE, suite=suite, python=python_for_suite(suite), source=source,
        dockerfile=dockerfile, **{"from": from_image},
    )  # fmt: skip
    try:
        eng.build_image(
            client, dockerfile=dockerfile, tag=tag, image_labels=image_labels,
            context_files={"uv": uv.read_bytes()}, timeout=1800,
        )  # fmt: skip
    except eng.BuildFailed as e:
        raise Fatal(f"base image build for {suite} failed: {e}; {tail(e.log, 300)}") from None
    say(f"built {tag}")
    return tag, dockerfile, True


def bootstrap(
    suites: Sequence[str] = ("bookworm",),
    cache_dir: Path | str | None = None,
    source: Source = "auto",
    client: docker.DockerClient | None = None,
    packages: Sequence[str] = BASE_PACKAGES,
    mirror: str = DEFAULT_MIRROR,
    say: Callable[[str], None] = print,
) -> list[BaseImage]:
    """Make sure a base image exists for each suite; build what is missing, reuse the rest."""
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    client = client or eng.connect()
    use_registry = False
    if source == "registry":
        use_registry = True
    elif source == "auto":
        use_registry = (
            all(eng.image_exists(client, f"python:{python_for_suite(s)}-slim") for s in suites)
            or registry_answers()
        )
    out: list[BaseImage] = []
    for suite in suites:
        python = python_for_suite(suite)
        started = time.monotonic()
        ref = _registry_image(client, python, pull=use_registry) if source != "local" else None
        if ref is None and source == "registry":
            raise Fatal(f"python:{python}-slim is neither local nor pullable; use --source local")
        if ref is not None:
            tag, dockerfile, built = build_base(client, suite, ref, "registry", say=say)
            out.append(BaseImage(suite, python, tag, "registry", dockerfile, None,
                                 time.monotonic() - started, built, True))  # fmt: skip
            continue
        tarball, cached = ensure_rootfs(suite, cache, packages, mirror, say=say)
        rootfs_tag = import_rootfs(client, suite, tarball)
        note = (
            f"`{' '.join(debootstrap_command(suite, 'ROOT', packages, mirror))}`, then "
            f"`tar -C ROOT -c . | docker import - {rootfs_tag}`"
        )
        tag, dockerfile, built = build_base(client, suite, rootfs_tag, "local", note, say=say)
        with contextlib.suppress(docker.errors.APIError):  # a friendly alias; tags stay hashes
            client.images.get(tag).tag(BASE_REPO, suite)
        out.append(BaseImage(suite, python, tag, "local", dockerfile, rootfs_tag,
                             time.monotonic() - started, built, cached))  # fmt: skip
    return out


def list_base_images(client: docker.DockerClient) -> list[BaseImage]:
    """Base images present on the engine, newest first, read back from their labels."""
    found: list[BaseImage] = []
    images = client.images.list(filters={"label": [f"{eng.LABEL_KIND}={eng.KIND_BASE}",
                                                     LABEL_DOCKERFILE]})  # fmt: skip
    for img in sorted(images, key=lambda i: i.attrs.get("Created", ""), reverse=True):
        lab = img.labels or {}
        tags = [t for t in img.tags if t.startswith(f"{BASE_REPO}:py")]
        if not tags:
            continue
        found.append(
            BaseImage(
                suite=lab.get(eng.LABEL_SUITE, "?"), python_version=lab.get(eng.LABEL_PYTHON, "?"),
                tag=tags[0], source=lab.get(eng.LABEL_SOURCE, "local"),  # type: ignore[arg-type]
                dockerfile=lab.get(LABEL_DOCKERFILE, ""),
                rootfs_tag=lab.get(LABEL_FROM) if lab.get(LABEL_FROM, "").startswith(ROOTFS_REPO)
                else None,
            )
        )  # fmt: skip
    return found
