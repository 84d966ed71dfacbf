"""Base images (OS + Python + git + uv) built without any registry.

Deliberate choices:
- ``debootstrap --variant=minbase`` of a Debian suite, tarred and ``docker import``-ed: the only
  network this needs is the Debian mirror, which air-gapped clusters mirror anyway. Debian's own
  python3 fixes the version per suite (bullseye 3.9, bookworm 3.11, trixie 3.13, forky 3.14),
  known statically (``SUITE_PYTHON``) so a PR's Python maps to a suite before that suite's image
  exists; the base Dockerfile asserts it, so a moving suite (forky is "testing": its python3
  will become 3.15) fails its build with a clear message instead of mislabelling an image.
- Every known suite is available by default, but a suite is bootstrapped only the first time a
  PR needs its Python (``BaseProvider``): a debootstrap costs a minute or more and most runs need
  one or two interpreters. A per-suite file lock makes concurrent workers wait for one
  debootstrap instead of running two.
- A suite newer than the host's debootstrap (forky on a bookworm host) is bootstrapped with
  debootstrap's ``sid`` script, which every suite since bookworm uses.
- Package lists are deleted from the image but ``/etc/apt/sources.list`` stays: the env layer
  can ``apt-get update && apt-get install`` a compiler and the suite's ``python3-dev`` for
  dependencies without a wheel for that Python.
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
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from string import Template
from typing import Literal

import docker
import docker.errors
import requests

from smelter.transforms.adapters import docker_engine as eng
from smelter.transforms.cache import cache_dir
from smelter.transforms.errors import Fatal
from smelter.transforms.util import stable_hash, tail

log = logging.getLogger(__name__)

# Oldest first. sid is left out on purpose: it ships forky's python3 and breaks without notice.
SUITE_PYTHON: dict[str, str] = {
    "bullseye": "3.9",
    "bookworm": "3.11",
    "trixie": "3.13",
    "forky": "3.14",
}
DEFAULT_SUITES: tuple[str, ...] = tuple(SUITE_PYTHON)
DEBOOTSTRAP_SCRIPTS = Path("/usr/share/debootstrap/scripts")
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
    return cache_dir()


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


def debootstrap_command(
    suite: str, root: str, packages: Sequence[str], mirror: str, script: str | None = None
) -> list[str]:
    cmd = [
        "debootstrap", "--variant=minbase", f"--include={','.join(sorted(packages))}",
        suite, root, mirror,
    ]  # fmt: skip
    return [*cmd, script] if script else cmd


def debootstrap_script(suite: str, scripts_dir: Path = DEBOOTSTRAP_SCRIPTS) -> str | None:
    """None when the host's debootstrap knows ``suite``; else its ``sid`` script, which every
    Debian suite since bookworm uses (trixie is a symlink to it). Without this, a bookworm host's
    debootstrap (1.0.128) stops with "No such script" for forky."""
    if (scripts_dir / suite).exists() or not (scripts_dir / "sid").exists():
        return None
    return str(scripts_dir / "sid")


def render_base_dockerfile(
    suite: str, from_image: str, source: Literal["local", "registry"], rootfs_note: str = ""
) -> str:
    """The base layer's Dockerfile; registry images still need git, local ones have it."""
    if source == "registry":
        setup = (
            "RUN apt-get update && apt-get install -y --no-install-recommends git ca-certificates"
            " && rm -rf /var/lib/apt/lists/*"
            # python:X.Y-slim has its python3 in /usr/local/bin; the env layer uses /usr/bin's.
            " && ([ -e /usr/bin/python3 ] || ln -s /usr/local/bin/python3 /usr/bin/python3)"
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
            cmd = debootstrap_command(suite, str(root), packages, mirror, debootstrap_script(suite))
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


class BaseUnavailable(Fatal):
    """No base image for a Python version: not configured, bootstrap disabled, or it failed.

    Fatal when nobody handles it (a run cannot go on without the bases it was told to use), but
    its own class so a version ladder can skip to the next version instead of stopping."""


class BaseProvider(Mapping[str, BaseImage]):
    """Python version -> base image for the configured suites, each built on first need.

    Deliberate:
    - Construction does no I/O (no engine call, no debootstrap): a worker's setup stays instant,
      and the versions on offer (``versions()``) are every configured suite's, built or not, so
      the Python a PR gets never depends on what earlier runs happened to bootstrap.
    - ``get_base(version)`` returns the newest base of that suite already on the engine (as the
      old ``available_bases`` did), else bootstraps the suite, under a per-suite file lock in
      ``cache_dir``: concurrent workers (processes or threads) asking at once run one debootstrap;
      the others wait, then find its image.
    - A failure is remembered: the next PR that needs the same version gets the same
      ``BaseUnavailable`` at once instead of another minutes-long debootstrap.
    - A ``Mapping`` so code written for the old ``dict`` (``list(bases)``, ``bases[v]``) works
      unchanged; iteration, ``len`` and ``in`` never build anything, ``bases[v]`` (and so
      ``.get``, ``.values()``, ``.items()``) may.
    - It holds a Docker client: make it in ``DoFn.setup``, never pickle it.
    """

    def __init__(
        self,
        suites: Sequence[str] = DEFAULT_SUITES,
        *,
        client: docker.DockerClient,
        cache_dir: Path | str | None = None,
        source: str = "auto",
        bootstrap_missing: bool = True,
        packages: Sequence[str] = BASE_PACKAGES,
        mirror: str = DEFAULT_MIRROR,
        say: Callable[[str], None] = log.info,
    ) -> None:
        if source not in ("auto", "local", "registry"):
            raise Fatal(f"env_base_source must be auto, local or registry, not {source!r}")
        self._suites: dict[str, str] = {}  # python version -> suite; the first suite wins
        for suite in suites:
            self._suites.setdefault(python_for_suite(suite), suite)  # unknown suite: Fatal
        self.client = client
        self._cache = Path(cache_dir) if cache_dir else default_cache_dir()
        self._source: Source = source  # type: ignore[assignment]
        self._bootstrap_missing = bootstrap_missing
        self._packages, self._mirror, self._say = tuple(packages), mirror, say
        self._images: dict[str, BaseImage] = {}
        self._failed: dict[str, str] = {}

    def versions(self) -> list[str]:
        """Every configured Python version, bootstrapped or not, oldest first."""
        return sorted(self._suites, key=lambda v: tuple(int(p) for p in v.split(".")))

    def suite_for(self, version: str) -> str:
        try:
            return self._suites[version]
        except KeyError:
            known = ", ".join(self.versions()) or "none"
            raise BaseUnavailable(
                f"no configured Debian suite ships Python {version} (configured: {known})"
            ) from None

    def present(self) -> dict[str, BaseImage]:
        """Versions whose base image is already on the engine; builds nothing (for reports)."""
        found = dict(self._images)
        for b in list_base_images(self.client):  # newest first: keep the first per suite
            if self._suites.get(b.python_version) == b.suite and self._source in ("auto", b.source):
                found.setdefault(b.python_version, b)
        return found

    def get_base(self, version: str) -> BaseImage:
        """The base image for ``version``; bootstraps its suite the first time (minutes)."""
        if version in self._images:
            return self._images[version]
        if version in self._failed:
            raise BaseUnavailable(self._failed[version])
        suite = self.suite_for(version)
        with file_lock(self._cache / "locks" / f"base-{suite}.lock"):
            found = self._present_suite(suite)
            if found is None:
                found = self._bootstrap(suite, version)
            self._images[version] = found
        return found

    def _present_suite(self, suite: str) -> BaseImage | None:
        for b in list_base_images(self.client):
            if b.suite == suite and self._source in ("auto", b.source):
                return b
        return None

    def _bootstrap(self, suite: str, version: str) -> BaseImage:
        if not self._bootstrap_missing:
            message = (
                f"no base image for Python {version} ({suite}) and bootstrapping is off "
                f"(env_bootstrap_missing); run `smelter images bootstrap --suite {suite}`"
            )
            self._failed[version] = message
            raise BaseUnavailable(message)
        self._say(f"Python {version} needed: bootstrapping its base image ({suite}) once")
        try:
            (built,) = bootstrap(
                (suite,), cache_dir=self._cache, source=self._source, client=self.client,
                packages=self._packages, mirror=self._mirror, say=self._say,
            )  # fmt: skip
        except Fatal as e:
            self._failed[version] = f"base image for Python {version} ({suite}) failed: {e}"
            raise BaseUnavailable(self._failed[version]) from None
        return built

    def __getitem__(self, version: str) -> BaseImage:
        if version not in self._suites:
            raise KeyError(version)
        return self.get_base(version)

    def __iter__(self) -> Iterator[str]:
        return iter(self.versions())

    def __len__(self) -> int:
        return len(self._suites)

    def __contains__(self, version: object) -> bool:
        return version in self._suites
