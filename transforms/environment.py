"""The environment stage: Candidate -> Candidate + Environment (an instance image its tests run in).

Deliberate choices:
- Three layers as in SWE-bench: base (OS + Python + git + uv, see ``base_images``) → env (a venv
  with the dependency lines of one install-ladder rung, installed by uv) → instance (the source at
  base_commit, installed editable into that venv). Tags are content hashes of what goes in, so
  an identical build is ``client.images.get(tag)`` and nothing else.
- The env layer never sees the source: only requirement lines inferred statically by
  ``recipe``. Its tag therefore depends on (base, rung, lines, resolver cutoff, CA bundle), and
  every PR of a repository whose lines are the same shares it. The cutoff of the env layer is the
  PR date rounded down to a ``env_exclude_newer_bucket_days`` bucket (so neighbouring PRs share
  it); the instance layer installs with the exact PR date, filling in anything newer it needs.
- Rendered Dockerfiles inline every requirement line, so a task can be rebuilt from its record
  alone (plus the snapshot and the uv binary); ``frozen_requirements`` pins what was installed.
- A rung is accepted only when the package imports and ``pytest --collect-only`` collects the
  touched test files with the gold patch applied, in a throwaway container with no network. The
  rung that worked is remembered per repository and tried first next time.
- Secrets never enter an image or a record: the index URL (which may carry credentials) is a
  build argument, not Dockerfile text. The CA bundle is public material and is baked into the
  env layer so that builds verify TLS behind an intercepting proxy.
- The stage's own outcome cache is off (``cache_key`` is None): the Docker image cache is the
  resume mechanism, and a cached record whose image was pruned would send validation to a
  missing image.
- ``Environment.instance_image`` is not the content-hash tag but this record's own alias of it
  (``<content tag>.<run owner token>.<nonce>``, see ``docker_engine.alias_tag``). The content
  tag stays the reuse key: a run finding it only adds its alias, and builds hold a per-tag lock
  so two runs never build one image twice. Every removal (a failed rung here, validation
  afterwards) removes only the caller's alias, and drops the content tag once no alias is left
  on the image, so runs sharing an engine never delete each other's image and a finished run
  leaves nothing behind (the env layer and Docker's build cache make the next build cheap).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import logging
import os
import re
import shlex
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

import docker
import docker.errors

from smelter.schemas import Candidate, Dockerfiles, Environment, Reason
from smelter.transforms import base_images as bi
from smelter.transforms import docker_engine as eng
from smelter.transforms import recipe as rc
from smelter.transforms.common import Fatal, Rejected, Retryable, StageFn, stable_hash, tail
from smelter.transforms.environment_config import EnvConfig
from smelter.transforms.gitrepo import GitError, GitRepo

log = logging.getLogger(__name__)

STAGE = "environment"
ENV_REPO = "smelter/env"
INSTANCE_REPO = "smelter/instance"
WORKDIR = "/testbed"
TEST_USER = "smelter"
CHECK_DIR = "/smelter-check"
MAX_RECIPE_FILE_BYTES = 1_000_000
# Furthest stage a failed rung reached; the rejection reports the furthest one.
_PROGRESS = [Reason.BUILD_FAILED, Reason.INSTALL_FAILED, Reason.IMPORT_FAILED,
             Reason.COLLECTION_FAILED]  # fmt: skip


# --------------------------------------------------------------------------- pure parts


def env_cutoff(created_at: str, bucket_days: int) -> str:
    """The env layer's resolver cutoff: the PR's UTC date rounded down to a day bucket."""
    when = _parse_time(created_at)
    days = (when.date() - dt.date(1970, 1, 1)).days
    start = dt.date(1970, 1, 1) + dt.timedelta(days=days - days % max(1, bucket_days))
    return start.isoformat()


def instance_cutoff(created_at: str) -> str:
    """The instance layer's cutoff: the PR's own timestamp, RFC 3339 UTC."""
    return _parse_time(created_at).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(text: str) -> dt.datetime:
    when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.astimezone(dt.UTC)


def slug(text: str, limit: int = 60) -> str:
    """A Docker-repository-safe rendering of a repo or instance id."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit] or "x"


def uv_flags(cutoff: str | None) -> str:
    return f"--exclude-newer {cutoff}" if cutoff else ""


def _template(name: str) -> Template:
    return Template(resources.files("smelter.dockerfiles").joinpath(name).read_text())


def render_env_dockerfile(
    *, repo: str, recipe: str, base_image: str, requirements: Sequence[str],
    cutoff: str | None, with_ca: bool,
) -> str:  # fmt: skip
    ca_setup = (
        "COPY extra-ca.crt /usr/local/share/smelter/extra-ca.crt\n"
        "RUN cat /usr/local/share/smelter/extra-ca.crt >> /etc/ssl/certs/ca-certificates.crt\n"
        "ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"
        if with_ca
        else "# (no extra CA bundle)"
    )
    return _template("env.Dockerfile").substitute(
        repo=repo, recipe=recipe, base_image=base_image, ca_setup=ca_setup,
        exclude_newer_note=cutoff or "the build date (no cutoff)", uv_flags=uv_flags(cutoff),
        requirements=" ".join(shlex.quote(r) for r in requirements),
    )  # fmt: skip


def render_instance_dockerfile(
    *, repo: str, instance_id: str, base_commit: str, env_image: str, installable: bool,
    extras: Sequence[str], cutoff: str | None, install_env: Mapping[str, str],
    source_paths: Sequence[str] = (),
) -> str:  # fmt: skip
    if installable:
        target = "." + (f"[{','.join(extras)}]" if extras else "")
        cmd = f"uv pip install {uv_flags(cutoff)} -e {shlex.quote(target)}".replace("  ", " ")
        prefix = "".join(f"{k}={shlex.quote(v)} " for k, v in sorted(install_env.items()))
        # The env layer holds the build requirements, so no isolated build env has to be
        # downloaded and created (seconds per PR); an isolated build remains the fallback.
        no_iso = cmd.replace("uv pip install", "uv pip install --no-build-isolation", 1)
        install = f"({prefix}{no_iso} || {prefix}{cmd})"
    else:
        install = "true"  # nothing to install; the source runs from PYTHONPATH
    source_env = (
        f"ENV PYTHONPATH={':'.join(source_paths)}"
        if source_paths
        else "# (installed into the venv; no PYTHONPATH needed)"
    )
    return _template("instance.Dockerfile").substitute(
        repo=repo, instance_id=instance_id, base_commit=base_commit, env_image=env_image,
        source_env=source_env, install=install,
    )  # fmt: skip


def env_requirements(rung: rc.Rung, project: rc.Project) -> list[str]:
    """The env layer's lines: the rung's, plus the build requirements not already named."""
    lines = list(rung.requirements)
    for req in project.build_requires:
        if req not in lines:
            lines.append(req)
    return lines


def check_script(import_names: Sequence[str], collect_files: Sequence[str], patches: int) -> str:
    """Shell run in the check container; its exit code says which step failed (91/92/93)."""
    lines = ["set -u", f"cd {WORKDIR} || exit 90"]
    if import_names:
        stmt = "; ".join(f"import {n}" for n in import_names)
        lines.append(f"python -c {shlex.quote(stmt)} || exit 91")
    for i in range(patches):
        lines.append(f"git apply --whitespace=nowarn {CHECK_DIR}/{i}.diff || exit 92")
    if collect_files:
        files = " ".join(shlex.quote(f) for f in collect_files)
        lines.append(
            f"python -m pytest --collect-only -q -p no:cacheprovider -p no:randomly {files}"
            " || exit 93"
        )
    return "\n".join(lines) + "\n"


CHECK_EXIT_REASONS = {91: Reason.IMPORT_FAILED, 92: Reason.COLLECTION_FAILED,
                      93: Reason.COLLECTION_FAILED}  # fmt: skip


def failure_reason(err: eng.BuildFailed) -> Reason:
    """A RUN step that exited non-zero is an install failure; anything else a build failure."""
    return Reason.INSTALL_FAILED if "returned a non-zero code" in str(err) else Reason.BUILD_FAILED


def read_recipe_files(root: Path) -> tuple[dict[str, str], list[str]]:
    """({path: text} of the files recipe inference reads, every path) of a source tree."""
    files: dict[str, str] = {}
    paths: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != ".git"]
        for name in filenames:
            full = Path(dirpath) / name
            rel = full.relative_to(root).as_posix()
            paths.append(rel)
            if rc.wanted(rel) and full.is_file() and full.stat().st_size <= MAX_RECIPE_FILE_BYTES:
                files[rel] = full.read_text(errors="replace")
    return files, sorted(paths)


# --------------------------------------------------------------------------- side effects


@contextlib.contextmanager
def build_slot(cache_dir: Path, slots: int) -> Iterator[None]:
    """One of ``slots`` machine-wide build permits (flock on slot files); waits when all busy."""
    folder = cache_dir / "build-slots"
    folder.mkdir(parents=True, exist_ok=True)
    while True:
        for i in range(max(1, slots)):
            f = open(folder / f"slot-{i}.lock", "a+")  # noqa: SIM115 - held until released
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.close()
                continue
            try:
                yield
                return
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
                f.close()
        time.sleep(0.5)


class RecipeMemory:
    """The rung that last worked for each repository, one small JSON file per repo."""

    def __init__(self, cache_dir: Path) -> None:
        self._dir = cache_dir / "recipes"

    def _path(self, repo: str) -> Path:
        return self._dir / f"{slug(repo, 100)}.json"

    def get(self, repo: str) -> str | None:
        try:
            return json.loads(self._path(repo).read_text()).get("rung")
        except (OSError, ValueError):
            return None

    def put(self, repo: str, rung: str) -> None:
        self._dir.mkdir(parents=True, exist_ok=True)
        tmp = self._path(repo).with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"repo": repo, "rung": rung}))
        os.replace(tmp, self._path(repo))  # atomic: concurrent workers never see half a file


@dataclass
class _Attempt:
    rung: str
    reason: Reason
    log: str


@dataclass
class Builder:
    """Builds and checks images for candidates; owns the client, the bases and the caches."""

    client: docker.DockerClient
    config: EnvConfig
    bases: Mapping[str, bi.BaseImage]  # python version -> base image
    cache_dir: Path
    ca_bundle: bytes | None = None
    index_url: str | None = None
    # Owner token of the run (``docker_engine.new_owner``) that the instance aliases name.
    owner: str = field(default_factory=eng.new_owner)
    memory: RecipeMemory = field(init=False)

    def __post_init__(self) -> None:
        self.memory = RecipeMemory(self.cache_dir)

    # -- public --------------------------------------------------------------------------------
    def build(self, candidate: Candidate) -> Environment:
        started = time.monotonic()
        tmp = Path(tempfile.mkdtemp(prefix="snapshot-", dir=self._tmp_root()))
        try:
            tree = tmp / "testbed"
            self._export(candidate, tree)
            files, paths = read_recipe_files(tree)
            python = rc.choose_python(files, list(self.bases))
            if python is None:
                project = rc.project_metadata(files)
                raise Rejected(
                    Reason.NO_PYTHON_VERSION,
                    f"requires-python {project.requires_python!r} admits none of the available "
                    f"bases ({', '.join(sorted(self.bases)) or 'none'})",
                )
            return self._ladder(candidate, tree, files, paths, python, started)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    # -- steps ---------------------------------------------------------------------------------
    def _tmp_root(self) -> Path:
        root = self.cache_dir / "tmp"
        root.mkdir(parents=True, exist_ok=True)
        return root

    def _export(self, candidate: Candidate, dest: Path) -> None:
        try:
            url = candidate.repo_url
            local = Path(url)
            repo = (
                GitRepo(local)
                if "://" not in url and local.exists()
                else GitRepo.mirror(url, self.cache_dir / "mirrors")
            )
            repo.export_snapshot(candidate.base_commit, dest)
        except GitError as e:
            raise Rejected(Reason.BUILD_FAILED, f"snapshot export failed: {e}") from None

    def _ladder(
        self, c: Candidate, tree: Path, files: Mapping[str, str], paths: list[str],
        python: str, started: float,
    ) -> Environment:  # fmt: skip
        base = self.bases[python]
        project = rc.project_metadata(files)
        rungs = rc.order_ladder(rc.install_ladder(files), self.memory.get(c.repo))
        rungs = rungs[: max(1, self.config.env_max_rungs)]
        names = rc.import_names(paths, project.name) if project.installable else []
        collect = [f for f in rc.collectable_test_files(c.test_files)]
        attempts: list[_Attempt] = []
        inst_cut = instance_cutoff(c.created_at) if self.config.env_exclude_newer else None
        env_cuts: list[str | None] = [None]
        if self.config.env_exclude_newer:
            bucket = env_cutoff(c.created_at, self.config.env_exclude_newer_bucket_days)
            env_cuts = list(dict.fromkeys([bucket, env_cutoff(c.created_at, 1)]))
        for rung in rungs:
            built = self._build_rung(c, project, paths, base, rung, env_cuts, inst_cut, tree)
            if isinstance(built, _Attempt):
                attempts.append(built)
                continue
            (env_df, env_hash, env_tag, inst_df, _), env_hit, env_log, (alias, inst_log) = built
            done = False
            try:
                check = self._check(alias, c, names, collect)
                if check is not None and check.reason is not None:
                    attempts.append(_Attempt(rung.name, check.reason, check.output))
                    continue
                self.memory.put(c.repo, rung.name)
                frozen = eng.read_image_file(self.client, alias, "/opt/smelter/frozen.txt") or b""
                size = self.client.images.get(alias).attrs.get("Size")
                install_commands = [
                    line.removeprefix("RUN ").strip()
                    for df in (env_df, inst_df)
                    for line in _logical_lines(df)
                    if line.startswith("RUN ")
                ]
                env = Environment(
                    python_version=python, base_image=base.tag, env_image=env_tag,
                    instance_image=alias, env_hash=env_hash, recipe=rung.name,
                    install_commands=install_commands,
                    pre_install=[f"{k}={v}" for k, v in sorted(rc.scm_environment(
                        project, self.config.env_scm_pretend_version).items())],
                    test_command=list(rc.TEST_COMMAND), test_files=list(c.test_files),
                    workdir=WORKDIR, test_user=check.user if check else TEST_USER,
                    exclude_newer=inst_cut,
                    frozen_requirements=[
                        ln for ln in frozen.decode(errors="replace").splitlines() if ln.strip()
                    ],
                    dockerfiles=Dockerfiles(base=base.dockerfile, env=env_df, instance=inst_df),
                    build_seconds=round(time.monotonic() - started, 3), env_cache_hit=env_hit,
                    image_size_bytes=int(size) if size is not None else None,
                    build_log_tail=tail(env_log + inst_log, 2000),
                )  # fmt: skip
                done = True
                return env
            finally:
                # Only our alias goes (a failed rung, or the engine failing midway): another run
                # holding the same image keeps it.
                if not done and not self.config.env_keep_instance_images:
                    eng.remove_image(self.client, alias, force=False, lock_dir=locks_dir())
        best = max(attempts, key=lambda a: _PROGRESS.index(a.reason))
        tried = ", ".join(f"{a.rung}: {a.reason.value}" for a in attempts)
        # The summary goes last: details are cut from the front, and the end is what matters.
        raise Rejected(
            best.reason, f"{tail(best.log, 1400)}\n-- {best.rung} log above; tried {tried}"
        )

    def _build_rung(
        self, c: Candidate, project: rc.Project, paths: list[str], base: bi.BaseImage,
        rung: rc.Rung, env_cuts: Sequence[str | None], inst_cut: str | None, tree: Path,
    ) -> tuple[tuple[str, str, str, str, str], bool, str, tuple[str, str]] | _Attempt:  # fmt: skip
        """Env + instance images of one rung: (plan, env cache hit, env log, (our alias of the
        instance image, its build log)), or the failure.

        The bucketed env cutoff may predate a release the PR's dependency lines need; then the
        env layer resolves again as of the PR's own day before the rung counts as failed.
        """
        for i, env_cut in enumerate(env_cuts):
            plan = self._plan(c, project, paths, base, rung, env_cut, inst_cut)
            env_df, env_hash, env_tag, inst_df, inst_tag = plan
            try:
                env_hit, env_log = self._ensure_env(env_tag, env_df, c.repo, rung.name, env_hash)
            except eng.BuildFailed as e:
                if i + 1 < len(env_cuts) and "No solution found" in e.log:
                    continue
                return _Attempt(rung.name, failure_reason(e), f"{e}\n{tail(e.log)}")
            try:
                inst = self._ensure_instance(inst_tag, inst_df, tree, c, rung.name, env_hash)
            except eng.BuildFailed as e:
                return _Attempt(rung.name, failure_reason(e), f"{e}\n{tail(e.log)}")
            return plan, env_hit, env_log, inst
        raise AssertionError("env_cuts is never empty")

    def _plan(
        self, c: Candidate, project: rc.Project, paths: list[str], base: bi.BaseImage,
        rung: rc.Rung, env_cut: str | None, inst_cut: str | None,
    ) -> tuple[str, str, str, str, str]:  # fmt: skip
        """(env Dockerfile, env hash, env tag, instance Dockerfile, instance tag) of one rung."""
        env_df = render_env_dockerfile(
            repo=c.repo, recipe=rung.name, base_image=base.tag,
            requirements=env_requirements(rung, project), cutoff=env_cut,
            with_ca=self.ca_bundle is not None,
        )  # fmt: skip
        ca_hash = hashlib.sha256(self.ca_bundle or b"").hexdigest()
        env_hash = stable_hash(rc.RECIPE_VERSION, env_df, ca_hash, length=16)
        env_tag = f"{ENV_REPO}:{slug(c.repo)}-{env_hash}"
        inst_df = render_instance_dockerfile(
            repo=c.repo, instance_id=c.instance_id, base_commit=c.base_commit,
            env_image=env_tag, installable=project.installable, extras=rung.extras,
            cutoff=inst_cut,
            install_env=rc.scm_environment(project, self.config.env_scm_pretend_version),
            source_paths=[] if project.installable else _source_paths(paths),
        )  # fmt: skip
        inst_tag = (
            f"{INSTANCE_REPO}:{slug(c.instance_id)}-"
            f"{stable_hash(env_tag, c.base_commit, inst_df, length=16)}"
        )
        return env_df, env_hash, env_tag, inst_df, inst_tag

    def _buildargs(self) -> dict[str, str]:
        return {"UV_DEFAULT_INDEX": self.index_url} if self.index_url else {}

    def _ensure_env(
        self, tag: str, dockerfile: str, repo: str, rung: str, env_hash: str
    ) -> tuple[bool, str]:
        """(cache hit, build log). A per-tag lock: two workers never build one env twice."""
        if eng.image_exists(self.client, tag):
            return True, ""
        with bi.file_lock(locks_dir() / f"{tag.replace('/', '_').replace(':', '_')}.lock"):
            if eng.image_exists(self.client, tag):
                return True, ""
            files = {"extra-ca.crt": self.ca_bundle} if self.ca_bundle else {}
            with build_slot(locks_dir(), self.config.env_build_parallelism):
                _, text = eng.build_image(
                    self.client, dockerfile=dockerfile, tag=tag, context_files=files,
                    image_labels=eng.labels(eng.KIND_ENV, repo=repo, recipe=rung,
                                            env_hash=env_hash),
                    buildargs=self._buildargs(), timeout=self.config.env_build_timeout_seconds,
                )  # fmt: skip
            return False, text

    def _ensure_instance(
        self, tag: str, dockerfile: str, tree: Path, c: Candidate, rung: str, env_hash: str
    ) -> tuple[str, str]:
        """(our alias of the instance image, build log): the image under the content tag
        ``tag`` when present, else a fresh build. The per-tag lock keeps a concurrent removal
        from dropping the content tag between our look-up and our alias, and makes a second
        run wait for the first one's build instead of building the same image again."""
        with eng.tag_lock(tag, locks_dir()):
            alias = eng.acquire_alias(self.client, tag, self.owner)
            if alias is not None:
                return alias, ""
            with build_slot(locks_dir(), self.config.env_build_parallelism):
                image_id, text = eng.build_image(
                    self.client, dockerfile=dockerfile, tag=tag, context_dirs={"testbed": tree},
                    image_labels=eng.labels(eng.KIND_INSTANCE, repo=c.repo,
                                            instance=c.instance_id, recipe=rung,
                                            env_hash=env_hash),
                    buildargs=self._buildargs(), timeout=self.config.env_build_timeout_seconds,
                )  # fmt: skip
            alias = eng.acquire_alias(self.client, tag, self.owner, image_id=image_id)
        if alias is None:  # removed by someone else (a prune on another machine) right away
            raise Retryable(f"instance image {tag} vanished right after its build")
        return alias, text

    def _check(
        self, tag: str, c: Candidate, names: Sequence[str], collect: Sequence[str]
    ) -> _Check | None:
        """Import + collect with the gold patch, as the test user, then as root if that fails."""
        if not names and not collect:
            return None
        patches = [p for p in (c.patch, c.test_patch) if p.strip()]
        files = {f"{CHECK_DIR}/{i}.diff": p for i, p in enumerate(patches)}
        script = check_script(names, collect, len(patches))
        first: _Check | None = None
        for user in (TEST_USER, "root"):
            res = eng.run_container(
                self.client, tag, ["sh", "-c", script], files=files, user=user,
                timeout=self.config.env_check_timeout_seconds, network="none",
                extra_labels={eng.LABEL_INSTANCE: c.instance_id},
            )  # fmt: skip
            if res.exit_code == 0:
                return _Check(None, res.output, None if user == "root" else user)
            reason = (
                Reason.COLLECTION_FAILED
                if res.timed_out
                else CHECK_EXIT_REASONS.get(res.exit_code or 0, Reason.BUILD_FAILED)
            )
            first = first or _Check(
                reason, f"[as {user}, exit {res.exit_code}]\n{res.output}", None
            )
        return first


@dataclass(frozen=True)
class _Check:
    reason: Reason | None
    output: str
    user: str | None


def locks_dir() -> Path:
    """Build and image-tag locks are per machine (one engine), whatever cache folder a run was
    given; validation takes the same tag locks when it removes its alias."""
    return bi.default_cache_dir() / "locks"


def _source_paths(paths: Iterable[str]) -> list[str]:
    has_src = any(p.startswith("src/") for p in paths)
    return [f"{WORKDIR}/src", WORKDIR] if has_src else [WORKDIR]


def _logical_lines(dockerfile: str) -> list[str]:
    """Dockerfile instructions with backslash continuations joined."""
    out: list[str] = []
    buf = ""
    for line in dockerfile.splitlines():
        if line.lstrip().startswith("#") and not buf:
            continue
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1].rstrip() + " "
            continue
        out.append((buf + line.strip()).strip())
        buf = ""
    return [o for o in out if o]


def resolve_ca_bundle(setting: str | None) -> bytes | None:
    """The extra CA bundle's bytes: a path, 'auto' ($SSL_CERT_FILE if set), or none."""
    if setting in (None, "", "none"):
        return None
    path = os.environ.get("SSL_CERT_FILE") if setting == "auto" else setting
    if not path:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as e:
        if setting == "auto":
            return None
        raise Fatal(f"cannot read the extra CA bundle {path}: {e.strerror}") from None


def resolve_index_url(setting: str | None) -> str | None:
    return setting or os.environ.get("UV_DEFAULT_INDEX") or os.environ.get("UV_INDEX_URL") or None


def available_bases(
    client: docker.DockerClient, config: EnvConfig, cache_dir: Path
) -> dict[str, bi.BaseImage]:
    """Python version -> base image for the configured suites, bootstrapping missing ones."""
    if config.env_base_source not in ("auto", "local", "registry"):
        raise Fatal(
            f"env_base_source must be auto, local or registry, not {config.env_base_source!r}"
        )
    present: dict[str, bi.BaseImage] = {}
    for b in bi.list_base_images(client):  # newest first: keep the first per suite
        if b.suite in config.env_base_suites and (
            config.env_base_source == "auto" or b.source == config.env_base_source
        ):
            present.setdefault(b.suite, b)
    missing = [s for s in config.env_base_suites if s not in present]
    if missing and not config.env_bootstrap_missing:
        raise Fatal(
            f"no base image for {', '.join(missing)}; run `smelter images bootstrap --suite "
            f"{' --suite '.join(missing)}`"
        )
    if missing:
        for b in bi.bootstrap(
            tuple(missing), cache_dir=cache_dir,
            source=config.env_base_source,  # type: ignore[arg-type]
            client=client, say=lambda m: log.info("%s", m),
        ):  # fmt: skip
            present[b.suite] = b
    return {b.python_version: b for b in present.values()}


# --------------------------------------------------------------------------- the stage


class EnvironmentFn(StageFn):
    """Candidate -> Candidate with ``environment`` set, or a Rejection with the build log tail."""

    STAGE = STAGE

    def __init__(
        self, config: EnvConfig, cache_root: str | None = None, owner: str | None = None
    ) -> None:
        super().__init__(config, cache_root)
        # Made here, in the launching process, when the graph does not pass the run's token:
        # the pickled copies on every worker then carry the same value.
        self._owner = owner or eng.new_owner()

    def setup_stage(self) -> None:
        config: EnvConfig = self._config
        cache = Path(config.env_cache_dir) if config.env_cache_dir else bi.default_cache_dir()
        client = eng.connect(timeout=max(600, config.env_build_timeout_seconds))
        self._builder = Builder(
            client=client, config=config, bases=available_bases(client, config, cache),
            cache_dir=cache, ca_bundle=resolve_ca_bundle(config.env_extra_ca_bundle),
            index_url=resolve_index_url(config.env_index_url), owner=self._owner,
        )  # fmt: skip

    def teardown_stage(self) -> None:
        builder = getattr(self, "_builder", None)
        if builder is not None:
            builder.client.close()

    def cache_key(self, record: Any) -> str | None:
        return None  # the image cache is the resume mechanism (see module docstring)

    def run(self, record: Candidate) -> Iterable[Candidate]:
        try:
            env = self._builder.build(record)
        except (docker.errors.APIError, Retryable) as e:  # the engine failed, not the record
            raise Rejected(Reason.ENGINE_ERROR, str(e)) from None
        yield record.model_copy(update={"environment": env})
