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
- What goes into each layer is rendered in ``dockerfiles`` (pure), and a failed build's log
  is read in ``buildlog``.
- A rung is accepted only when the package imports and ``pytest --collect-only`` collects the
  touched test files with the gold patch applied, in a throwaway container with no network
  (``check``). The rung that worked is remembered per repository and tried first next time.
- Secrets never enter an image or a record: the index URL (which may carry credentials) is a
  build argument, not Dockerfile text. The CA bundle is public material and is baked into the
  env layer so that builds verify TLS behind an intercepting proxy.
- The stage's outcome is cached like every stage's, but a hit is served only while its
  instance image still exists (``EnvironmentFn.reuse``), under a fresh alias of this run;
  once validation or a prune removed the image, the record is rebuilt (the env layer and
  Docker's build cache make that cheap), so validation never meets a missing image.
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
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors

from smelter.schemas import Candidate, Dockerfiles, EnvAttempt, Environment, Reason, Stage
from smelter.transforms.adapters import base_images as bi
from smelter.transforms.adapters import docker_engine as eng
from smelter.transforms.adapters import registry as reg
from smelter.transforms.adapters.git import GitError, GitRepo
from smelter.transforms.environment import buildlog as bl
from smelter.transforms.environment import check as ck
from smelter.transforms.environment import dockerfiles as df
from smelter.transforms.environment import project as pj
from smelter.transforms.environment import pyversion as pyv
from smelter.transforms.environment import recipe as rc
from smelter.transforms.environment import versions as vers
from smelter.transforms.environment.config import EnvConfig
from smelter.transforms.errors import Fatal, Rejected, Retryable
from smelter.transforms.stage import StageFn
from smelter.transforms.util import stable_hash, tail

log = logging.getLogger(__name__)

STAGE = Stage.ENVIRONMENT
ENV_REPO = "smelter/env"
INSTANCE_REPO = "smelter/instance"
MAX_RECIPE_FILE_BYTES = 1_000_000
# Furthest stage a failed rung reached; the rejection reports the furthest one.
_PROGRESS = [Reason.BUILD_FAILED, Reason.INSTALL_FAILED, Reason.IMPORT_FAILED,
             Reason.COLLECTION_FAILED]  # fmt: skip


def read_recipe_files_at(repo: GitRepo, commit: str) -> tuple[dict[str, str], list[str]]:
    """({path: text} of the files recipe inference reads, every regular file) at ``commit``,
    from git objects: a symlink in the repository is never followed to a host file."""
    try:
        paths = sorted(repo.regular_files(commit))
    except GitError as e:
        raise Rejected(Reason.BUILD_FAILED, f"cannot list the files at {commit}: {e}") from None
    files: dict[str, str] = {}
    for path in paths:
        if rc.wanted(path):
            data = repo.read_file(commit, path)
            if data is not None and len(data) <= MAX_RECIPE_FILE_BYTES:
                files[path] = data.decode(errors="replace")
    return files, paths


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
        return self._dir / f"{df.slug(repo, 100)}.json"

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


@dataclass(frozen=True)
class _Attempt:
    rung: str
    reason: Reason
    log: str
    python: str = ""


@dataclass(frozen=True)
class _Plan:
    env_df: str
    env_hash: str
    env_tag: str
    inst_df: str
    inst_tag: str


@dataclass(frozen=True)
class _Source:
    """What one candidate's builds share: its tree, recipe files and version."""

    tree: Path
    files: Mapping[str, str]
    paths: list[str]
    project: pj.Project
    scm_version: str
    version: str  # SWE-bench's major.minor (transforms.versions)


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
    # Where env images are shared (``--image-registry``); None: they stay on this engine.
    registry: reg.Registry | None = None
    memory: RecipeMemory = field(init=False)
    _pushed: set[str] = field(init=False, default_factory=set)

    def __post_init__(self) -> None:
        self.memory = RecipeMemory(self.cache_dir)

    # -- public --------------------------------------------------------------------------------
    def build(self, candidate: Candidate) -> Environment:
        started = time.monotonic()
        tmp = Path(tempfile.mkdtemp(prefix="snapshot-", dir=self._tmp_root()))
        try:
            tree = tmp / "testbed"
            repo = self._repo(candidate)
            files, paths = read_recipe_files_at(repo, candidate.base_commit)
            self._export(repo, candidate, tree)
            project = pj.project_metadata(files)
            tag = repo.nearest_tag(candidate.base_commit)
            scm_version = rc.version_from_tag(tag) or self.config.env_scm_pretend_version
            version = vers.project_version(tag, files)
            src = _Source(tree, files, paths, project, scm_version, version)
            versions = self._python_candidates(files, df.resolve_date(candidate))
            if not versions:
                raise Rejected(
                    Reason.NO_PYTHON_VERSION,
                    f"requires-python {project.requires_python!r} admits none of the available "
                    f"bases ({', '.join(self._versions()) or 'none'})",
                )
            attempts: list[EnvAttempt] = []
            failures: list[_Attempt] = []
            for python in versions[: max(1, self.config.env_max_pythons)]:
                try:
                    env = self._ladder(
                        candidate, src, python, versions, attempts, failures, started
                    )
                except bi.BaseUnavailable as e:  # this version only: the next one may build
                    failures.append(_Attempt("base", Reason.BUILD_FAILED, str(e), python))
                    attempts.append(EnvAttempt(
                        python_version=python, rung="base", outcome=Reason.BUILD_FAILED.value,
                        error=str(e)[:300],
                    ))  # fmt: skip
                    continue
                if env is not None:
                    return env
            best = max(failures, key=lambda a: _PROGRESS.index(a.reason))
            tried = ", ".join(f"{a.python_version}/{a.rung}: {a.outcome}" for a in attempts)
            summary = f"{best.rung} on Python {best.python} failed; tried {tried}"
            raise Rejected(best.reason, bl.reject_detail(best.log, summary))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    # -- steps ---------------------------------------------------------------------------------
    def _versions(self) -> list[str]:
        versions = self.bases.versions() if hasattr(self.bases, "versions") else list(self.bases)
        return sorted(versions, key=pj._vkey)

    def _base(self, version: str) -> bi.BaseImage:
        """The base image of ``version``, bootstrapped by a lazy provider on first need."""
        if hasattr(self.bases, "get_base"):
            return self.bases.get_base(version)  # type: ignore[no-any-return]
        return self.bases[version]  # type: ignore[index]

    def _python_candidates(self, files: Mapping[str, str], when: str) -> list[str]:
        return pyv.python_candidates(files, self._versions(), when)

    def _tmp_root(self) -> Path:
        root = self.cache_dir / "tmp"
        root.mkdir(parents=True, exist_ok=True)
        return root

    def _repo(self, candidate: Candidate) -> GitRepo:
        try:
            url = candidate.repo_url
            local = Path(url)
            if "://" not in url and local.exists():
                return GitRepo(local)
            return GitRepo.mirror(url, self.cache_dir / "mirrors")
        except GitError as e:
            raise Rejected(Reason.BUILD_FAILED, f"repository unavailable: {e}") from None

    def _export(self, repo: GitRepo, candidate: Candidate, dest: Path) -> None:
        try:
            repo.export_snapshot(candidate.base_commit, dest)
        except GitError as e:
            raise Rejected(Reason.BUILD_FAILED, f"snapshot export failed: {e}") from None

    def _ladder(
        self, c: Candidate, src: _Source, python: str, versions: Sequence[str],
        attempts: list[EnvAttempt], failures: list[_Attempt], started: float,
    ) -> Environment | None:  # fmt: skip
        """The first rung that builds and checks on ``python``, or None (``attempts`` and
        ``failures`` say why). A rung whose build wanted a compiler is tried once more with
        one in its env layer."""
        base = self._base(python)
        project = src.project
        rungs = rc.order_ladder(rc.install_ladder(src.files), self.memory.get(c.repo))
        rungs = rungs[: max(1, self.config.env_max_rungs)]
        names = pj.import_names(src.paths, project.name) if project.installable else []
        collect = [f for f in rc.collectable_test_files(c.test_files)]
        when = df.resolver_cutoff(df.resolve_date(c), python)
        inst_cut = df.instance_cutoff(when) if self.config.env_exclude_newer else None
        env_cuts: list[str | None] = [None]
        if self.config.env_exclude_newer:
            bucket = df.env_cutoff(when, self.config.env_exclude_newer_bucket_days)
            env_cuts = list(dict.fromkeys([bucket, df.env_cutoff(when, 1)]))
        native = pj.builds_native_code(src.files, src.paths)
        systems: tuple[tuple[str, ...], ...] = (
            (df.COMPILER_PACKAGES,) if native else ((), df.COMPILER_PACKAGES)
        )
        for rung in rungs:
            for system in systems:
                label = rung.name + ("+compiler" if system else "")
                built = self._build_rung(c, src, base, rung, env_cuts, inst_cut, system)
                if isinstance(built, _Attempt):
                    built = dataclasses.replace(built, rung=label, python=python)
                    failures.append(built)
                    attempts.append(EnvAttempt(
                        python_version=python, rung=label, outcome=built.reason.value,
                        error=bl.first_error_line(built.log),
                    ))  # fmt: skip
                    compiler = self.config.env_compiler_rung and bl.needs_compiler(built.log)
                    if not system and compiler:
                        continue
                    break
                plan, env_hit, env_log, (alias, inst_log), rung_built = built
                done = False
                try:
                    check = ck.run_check(
                        self.client, alias, c, names, collect,
                        self.config.env_check_timeout_seconds,
                    )  # fmt: skip
                    if check is not None and check.reason is not None:
                        failures.append(_Attempt(label, check.reason, check.output, python))
                        attempts.append(EnvAttempt(
                            python_version=python, rung=label, outcome=check.reason.value,
                            error=bl.first_error_line(check.output),
                        ))  # fmt: skip
                        break
                    label = label.replace(rung.name, rung_built.name, 1)
                    attempts.append(EnvAttempt(python_version=python, rung=label, outcome="ok"))
                    self.memory.put(c.repo, rung.name)
                    env = self._record(
                        c, src, python, versions, base, rung_built, plan, alias, check,
                        inst_cut, env_hit, env_log + inst_log, attempts, system, started,
                    )  # fmt: skip
                    done = True
                    return env
                finally:
                    # Only our alias goes (a failed rung, or the engine failing midway): another
                    # run holding the same image keeps it.
                    if not done and not self.config.env_keep_instance_images:
                        eng.remove_image(self.client, alias, force=False, lock_dir=locks_dir())
        return None

    def _record(
        self, c: Candidate, src: _Source, python: str, versions: Sequence[str],
        base: bi.BaseImage, rung: rc.Rung, plan: _Plan, alias: str, check: ck.Check | None,
        inst_cut: str | None, env_hit: bool, build_log: str, attempts: Sequence[EnvAttempt],
        system: Sequence[str], started: float,
    ) -> Environment:  # fmt: skip
        """The Environment of a rung that worked: everything needed to rebuild its image."""
        frozen = eng.read_image_file(self.client, alias, "/opt/smelter/frozen.txt") or b""
        mode = eng.read_image_file(self.client, alias, df.INSTALL_MODE_FILE) or b""
        size = self.client.images.get(alias).attrs.get("Size")
        install_commands = [
            line.removeprefix("RUN ").strip()
            for dockerfile in (plan.env_df, plan.inst_df)
            for line in df.logical_lines(dockerfile)
            if line.startswith("RUN ")
        ]
        scm = rc.scm_environment(src.project, src.scm_version)
        return Environment(
            python_version=python, base_image=base.tag, env_image=plan.env_tag,
            instance_image=alias, env_hash=plan.env_hash, recipe=rung.name,
            install_commands=install_commands,
            pre_install=[f"{k}={v}" for k, v in sorted(scm.items())],
            test_command=list(rc.TEST_COMMAND), test_files=list(c.test_files),
            workdir=df.WORKDIR, test_user=check.user if check else df.TEST_USER,
            exclude_newer=inst_cut,
            frozen_requirements=[
                ln for ln in frozen.decode(errors="replace").splitlines() if ln.strip()
            ],
            dockerfiles=Dockerfiles(base=base.dockerfile, env=plan.env_df, instance=plan.inst_df),
            build_seconds=round(time.monotonic() - started, 3), env_cache_hit=env_hit,
            image_size_bytes=int(size) if size is not None else None,
            build_log_tail=tail(build_log, 2000),
            python_candidates=list(versions), attempts=list(attempts),
            install_mode=mode.decode(errors="replace").strip(),
            scm_version=src.scm_version if scm else None, system_packages=list(system),
            project_version=src.version,
        )  # fmt: skip

    def _build_rung(
        self, c: Candidate, src: _Source, base: bi.BaseImage, rung: rc.Rung,
        env_cuts: Sequence[str | None], inst_cut: str | None, system: Sequence[str],
    ) -> tuple[_Plan, bool, str, tuple[str, str], rc.Rung] | _Attempt:  # fmt: skip
        """Env + instance images of one rung: (plan, env cache hit, env log, (our alias of the
        instance image, its build log), the rung as built), or the failure.

        The bucketed env cutoff may predate a release the PR's dependency lines need; then the
        env layer resolves again as of the PR's own day before the rung counts as failed. An
        instance whose offline install lacked dependencies (computed by its setup.py, say) gets
        them in a new env layer, once: dependency lines reach the network, PR code never does.
        """
        for i, env_cut in enumerate(env_cuts):
            extended = False
            while True:
                plan = self._plan(c, src, base, rung, env_cut, inst_cut, system)
                try:
                    env_hit, env_log = self._ensure_env(
                        plan.env_tag, plan.env_df, c.repo, rung.name, plan.env_hash
                    )
                except eng.BuildFailed as e:
                    if i + 1 < len(env_cuts) and "No solution found" in e.log:
                        break
                    return _Attempt(rung.name, bl.failure_reason(e), f"{e}\n{e.log}")
                try:
                    alias, inst_log = self._ensure_instance(
                        plan.inst_tag, plan.inst_df, src.tree, c, rung.name, plan.env_hash
                    )
                except eng.BuildFailed as e:
                    return _Attempt(rung.name, bl.failure_reason(e), f"{e}\n{e.log}")
                mode = self._image_text(alias, df.INSTALL_MODE_FILE).strip()
                if mode != "failed" and mode not in df.UNCHECKED_MODES:
                    return plan, env_hit, env_log, (alias, inst_log), rung
                installed = df.frozen_names(
                    self._image_text(plan.env_tag, "/opt/smelter/env-frozen.txt")
                )
                missing = df.missing_requirements(
                    self._image_text(alias, df.PR_METADATA_FILE), installed, rung.extras,
                    base.python_version,
                )  # fmt: skip
                if mode in df.UNCHECKED_MODES and not missing:
                    return plan, env_hit, env_log, (alias, inst_log), rung
                log_text = self._image_text(alias, df.INSTALL_LOG_FILE) or inst_log
                if not self.config.env_keep_instance_images:
                    eng.remove_image(self.client, alias, force=False, lock_dir=locks_dir())
                if extended or not missing:
                    why = f"missing after adding {', '.join(missing)}" if extended else ""
                    return _Attempt(
                        rung.name, Reason.INSTALL_FAILED,
                        f"the offline install of the project failed {why}\n{log_text}",
                    )  # fmt: skip
                rung = dataclasses.replace(
                    rung, name=f"{rung.name}+pr-deps", requirements=(*rung.requirements, *missing)
                )
                extended = True
        raise AssertionError("the last env cutoff never breaks out")

    def _image_text(self, image: str, path: str) -> str:
        data = eng.read_image_file(self.client, image, path)
        return data.decode(errors="replace") if data else ""

    def _plan(
        self, c: Candidate, src: _Source, base: bi.BaseImage, rung: rc.Rung,
        env_cut: str | None, inst_cut: str | None, system: Sequence[str],
    ) -> _Plan:  # fmt: skip
        project = src.project
        env_df = df.render_env_dockerfile(
            repo=c.repo, recipe=rung.name, base_image=base.tag,
            requirements=df.env_requirements(rung, project), cutoff=env_cut,
            with_ca=self.ca_bundle is not None, system_packages=system,
        )  # fmt: skip
        ca_hash = hashlib.sha256(self.ca_bundle or b"").hexdigest()
        env_hash = stable_hash(rc.RECIPE_VERSION, env_df, ca_hash, length=16)
        env_tag = f"{ENV_REPO}:{df.slug(c.repo)}-{env_hash}"
        inst_df = df.render_instance_dockerfile(
            repo=c.repo, instance_id=c.instance_id, base_commit=c.base_commit,
            env_image=env_tag, installable=project.installable, extras=rung.extras,
            cutoff=inst_cut, install_env=rc.scm_environment(project, src.scm_version),
            source_paths=[] if project.installable else df.pythonpath(src.paths),
            has_setup_py="setup.py" in src.files, legacy_develop=project.setuptools_backend,
            rebuild=bool(system),
        )  # fmt: skip
        inst_tag = (
            f"{INSTANCE_REPO}:{df.slug(c.instance_id)}-"
            f"{stable_hash(env_tag, c.base_commit, inst_df, length=16)}"
        )
        return _Plan(env_df, env_hash, env_tag, inst_df, inst_tag)

    def _buildargs(self) -> dict[str, str]:
        return {"UV_DEFAULT_INDEX": self.index_url} if self.index_url else {}

    def _ensure_env(
        self, tag: str, dockerfile: str, repo: str, rung: str, env_hash: str
    ) -> tuple[bool, str]:
        """(cache hit, build log). A per-tag lock: two workers never build one env twice.

        With a registry, a missing env image is pulled before it is built (a pull is a cache
        hit), a built one is pushed, and one found locally is pushed once per worker, so
        workers on other engines find what an earlier run here built before the registry.
        """
        if eng.image_exists(self.client, tag):
            self._share_env(tag)
            return True, ""
        with bi.file_lock(locks_dir() / f"{tag.replace('/', '_').replace(':', '_')}.lock"):
            if eng.image_exists(self.client, tag):
                self._share_env(tag)
                return True, ""
            if self.registry is not None and reg.pull(self.client, self.registry, tag):
                self._pushed.add(tag)
                return True, f"pulled {self.registry.name(tag)}\n"
            files = {"extra-ca.crt": self.ca_bundle} if self.ca_bundle else {}
            with build_slot(locks_dir(), self.config.env_build_parallelism):
                _, text = eng.build_image(
                    self.client, dockerfile=dockerfile, tag=tag, context_files=files,
                    image_labels=eng.labels(eng.KIND_ENV, repo=repo, recipe=rung,
                                            env_hash=env_hash),
                    buildargs=self._buildargs(), timeout=self.config.env_build_timeout_seconds,
                )  # fmt: skip
            self._share_env(tag)
            return False, text

    def _share_env(self, tag: str) -> None:
        """Push an env image to the registry (if any), once per worker and tag."""
        if self.registry is not None and tag not in self._pushed:
            reg.push(self.client, self.registry, tag)
            self._pushed.add(tag)

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
                    timeout=self.config.env_build_timeout_seconds, network="none",
                )  # fmt: skip
            alias = eng.acquire_alias(self.client, tag, self.owner, image_id=image_id)
        if alias is None:  # removed by someone else (a prune on another machine) right away
            raise Retryable(f"instance image {tag} vanished right after its build")
        return alias, text


def locks_dir() -> Path:
    """Build and image-tag locks are per machine (one engine), whatever cache folder a run was
    given; validation takes the same tag locks when it removes its alias."""
    return bi.default_cache_dir() / "locks"


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
) -> bi.BaseProvider:
    """Python version -> base image for every configured suite, built lazily: nothing is
    bootstrapped here (a debootstrap costs a minute or more, and most runs need one or two
    interpreters); a suite is built the first time a PR's Python needs it, and with
    ``env_bootstrap_missing`` off that first need raises ``bi.BaseUnavailable``."""
    return bi.BaseProvider(
        config.env_base_suites, client=client, cache_dir=cache_dir,
        source=config.env_base_source, bootstrap_missing=config.env_bootstrap_missing,
        say=lambda m: log.info("%s", m),
    )  # fmt: skip


# --------------------------------------------------------------------------- the stage


class EnvironmentFn(StageFn[EnvConfig, Candidate, Candidate]):
    """Candidate -> Candidate with ``environment`` set, or a Rejection with the build log tail."""

    STAGE = STAGE
    # 2: records carry project_version and an ANSI-free build_log_tail; cached outcomes
    # without them would give tasks an empty version.
    VERSION = "2"

    def __init__(
        self,
        config: EnvConfig,
        cache_root: str | None = None,
        owner: str | None = None,
        validated: Callable[[Candidate], bool] | None = None,
    ) -> None:
        super().__init__(config, cache_root)
        # Made here, in the launching process, when the graph does not pass the run's token:
        # the pickled copies on every worker then carry the same value.
        self._owner = owner or eng.new_owner()
        # Picklable probe from the graph: does validation already have this output's outcome?
        self._validated = validated

    def setup_stage(self) -> None:
        config: EnvConfig = self._config
        cache = Path(config.env_cache_dir) if config.env_cache_dir else bi.default_cache_dir()
        client = eng.connect(timeout=max(600, config.env_build_timeout_seconds))
        self._builder = Builder(
            client=client, config=config, bases=available_bases(client, config, cache),
            cache_dir=cache, ca_bundle=resolve_ca_bundle(config.env_extra_ca_bundle),
            index_url=resolve_index_url(config.env_index_url), owner=self._owner,
            registry=reg.Registry.parse(config.registry.image_registry)
            if config.registry.image_registry else None,
        )  # fmt: skip

    def teardown_stage(self) -> None:
        builder = getattr(self, "_builder", None)
        if builder is not None:
            builder.client.close()

    def reuse(self, record: Any, cached: list[Any]) -> list[Any] | None:
        """A cached outcome with a fresh alias of its instance image, or None (rebuild) when
        that image is gone: validation removed it, or a prune did. Except when validation
        already has the outcome for that record (``validated``): then nothing will run the
        image, and the record is served as cached, image or not, so a resumed or repeated run
        rebuilds nothing it validated (validation's cache hit releases the alias the record
        names, and a missing one is no error there).

        Served as cached, the record would name the alias of the run that built it, which
        validation or a prune may remove at any time, or already has: validation would meet a
        missing image. The tag lock keeps a concurrent removal from dropping the content tag
        between our look-up and our alias, as in ``Builder._ensure_instance``. A cached engine
        failure is recomputed: it said nothing about the record.
        """
        out: list[Any] = []
        for outcome in cached:
            if getattr(outcome, "reason", None) is Reason.ENGINE_ERROR:
                self._release(out)
                return None
            env = outcome.environment if isinstance(outcome, Candidate) else None
            if env is None:
                out.append(outcome)
                continue
            content = eng.content_tag(env.instance_image)
            try:
                with eng.tag_lock(content, locks_dir()):
                    alias = eng.acquire_alias(self._builder.client, content, self._owner)
            except (docker.errors.APIError, Retryable):  # recomputing reports engine errors
                alias = None
            if alias is None and self._validated is not None and self._validated(outcome):
                out.append(outcome)
                continue
            if alias is None:
                self._release(out)
                return None
            env = env.model_copy(update={"instance_image": alias})
            out.append(outcome.model_copy(update={"environment": env}))
        return out

    def _release(self, outcomes: list[Any]) -> None:
        """Drop the aliases taken for a cached outcome that is not served after all."""
        for o in outcomes:
            if isinstance(o, Candidate) and o.environment is not None:
                with contextlib.suppress(docker.errors.APIError, Retryable):
                    eng.remove_image(self._builder.client, o.environment.instance_image,
                                     force=False, lock_dir=locks_dir())  # fmt: skip

    def run(self, record: Candidate) -> Iterable[Candidate]:
        try:
            env = self._builder.build(record)
        except (docker.errors.APIError, Retryable) as e:  # the engine failed, not the record
            raise Rejected(Reason.ENGINE_ERROR, str(e)) from None
        yield record.model_copy(update={"environment": env})
