"""A small subprocess adapter over the git command line.

Deliberate choices:
- Plain ``git`` subprocesses, no library: git itself is the reference implementation of diff,
  apply and rename detection, and the diff we ship must be exactly what ``git apply`` accepts.
- Every failure raises ``GitError`` carrying the command and the tail of stderr, so a rejection
  detail says what git said instead of "exit status 128".
- Reads never touch the repository's state: ``apply_check`` works on a throw-away index file
  (``GIT_INDEX_FILE``) rather than a worktree or HEAD, so many workers may check patches against
  one mirror at once.
- History is read in bulk: one ``git log`` for the first-parent history and one for the commit
  graph, one ``git diff-tree --stdin`` process for many diffs. A call per commit would make
  mining a 100k-commit repository take minutes instead of seconds.
- ``export_snapshot`` writes a fresh repository whose only object graph is the one commit (its
  ``.git/shallow`` marks it as a root): no remote, no tags, no later commits, so a task cannot
  leak its own fix, while tools such as setuptools-scm still find a git checkout.
- Mirrors live in a cache folder keyed by a hash of the URL, are created by cloning into a
  temporary folder and renaming (a killed clone leaves no half mirror), and are guarded by an
  ``flock`` so concurrent workers on one machine clone or fetch once.
- Where mirrors live is one setting, ``[git] mirror_dir`` (``GitConfig``), copied into every
  stage that opens a mirror (both miners, snapshot, render), so they share one clone per
  repository. It is read here, beside the code that uses it, in a module without Beam.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from smelter.transforms.cache import cache_dir

_GIT_ENV = {
    # Deterministic, non-interactive git whatever the user's config says.
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_CONFIG_NOSYSTEM": "1",
    "LC_ALL": "C",
    "GIT_OPTIONAL_LOCKS": "0",  # `git status`-like reads must not take index.lock
}
_SHA = re.compile(rb"^[0-9a-f]{40}$")
_RS, _US = "\x1e", "\x1f"


@dataclasses.dataclass(frozen=True)
class GitConfig:
    """The ``[git]`` options, one setting for every stage that opens a mirror."""

    mirror_dir: str | None = dataclasses.field(
        default=None,
        metadata={"help": "folder of bare git mirrors, shared by the miners, the snapshot and "
                          "the render stage (default: $SMELTER_MIRROR_DIR, else "
                          "~/.cache/smelter/mirrors)"},
    )  # fmt: skip

    @property
    def mirror_root(self) -> str:
        """The folder to use; the default is looked up where it is used (on the worker)."""
        return self.mirror_dir or os.environ.get("SMELTER_MIRROR_DIR") or str(cache_dir("mirrors"))


# Metadata of a stage config's ``git`` field: a copy of the ``[git]`` section, set by the option
# loader; not a flag or key of that stage's own section.
FROM_GIT_SECTION = {"from_section": "git", "help": "git mirror settings, from [git]"}


class GitError(Exception):
    """A git command failed; ``stderr`` holds the tail of what git printed."""

    def __init__(self, args: Sequence[str], returncode: int, stderr: str) -> None:
        self.args_ = list(args)
        self.returncode = returncode
        self.stderr = stderr[-2000:]
        cmd = " ".join(args[:4]) + (" …" if len(args) > 4 else "")
        last = self.stderr.strip().splitlines()[-1] if self.stderr.strip() else ""
        super().__init__(f"git {cmd} failed ({returncode}): {last}")


@dataclasses.dataclass(frozen=True, slots=True)
class LogEntry:
    """One commit of a log: shas, people, ISO 8601 dates and the full message."""

    sha: str
    parents: tuple[str, ...]
    author_name: str
    author_email: str
    author_date: str
    committer_date: str
    message: str

    @property
    def subject(self) -> str:
        return self.message.split("\n", 1)[0].strip()

    @property
    def body(self) -> str:
        parts = self.message.split("\n", 1)
        return parts[1].strip() if len(parts) > 1 else ""


@dataclasses.dataclass(frozen=True, slots=True)
class GraphNode:
    """A commit in the commit graph: parents, author time (unix seconds), subject, author."""

    sha: str
    parents: tuple[str, ...]
    author_time: int
    subject: str
    author_name: str = ""


def _mirror_name(url_or_path: str) -> str:
    """A readable, collision-free folder name for a mirror of this URL or path."""
    tail_ = re.sub(r"[^A-Za-z0-9._-]+", "_", url_or_path.rstrip("/").split("/")[-1])[:40]
    digest = hashlib.sha256(url_or_path.encode()).hexdigest()[:12]
    return f"{tail_.removesuffix('.git')}-{digest}.git"


@contextlib.contextmanager
def _flock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _run(
    args: Sequence[str],
    *,
    cwd: Path | None = None,
    input: bytes | None = None,
    env: dict[str, str] | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[bytes]:
    full_env = {**os.environ, **_GIT_ENV, **(env or {})}
    try:
        proc = subprocess.run(
            ["git", *args], cwd=cwd, input=input, env=full_env, capture_output=True, check=False
        )
    except FileNotFoundError as e:  # no git binary at all
        raise GitError(list(args), 127, str(e)) from e
    if check and proc.returncode != 0:
        shown = list(args[2:]) if list(args[:1]) == ["-C"] else list(args)  # the path is noise here
        raise GitError(shown, proc.returncode, proc.stderr.decode("utf-8", "replace"))
    return proc


class GitRepo:
    """A git repository (bare or not) at ``path``; every method is one or a few git calls."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"GitRepo({str(self.path)!r})"

    # -- plumbing ------------------------------------------------------------------------------
    def git(
        self,
        *args: str,
        input: bytes | None = None,
        env: dict[str, str] | None = None,
        check: bool = True,
    ) -> bytes:
        """Run ``git -C path args`` and return stdout; raises GitError on failure."""
        return _run(["-C", str(self.path), *args], input=input, env=env, check=check).stdout

    def text(self, *args: str, env: dict[str, str] | None = None) -> str:
        return self.git(*args, env=env).decode("utf-8", "replace")

    # -- creation ------------------------------------------------------------------------------
    @classmethod
    def init(
        cls, path: str | os.PathLike[str], *, bare: bool = False, branch: str = "main"
    ) -> GitRepo:
        Path(path).mkdir(parents=True, exist_ok=True)
        _run(["init", "-q", f"--initial-branch={branch}", *(["--bare"] if bare else []), str(path)])
        return cls(path)

    @classmethod
    def mirror(
        cls, url_or_path: str | os.PathLike[str], cache_dir: str | os.PathLike[str]
    ) -> GitRepo:
        """A bare mirror of ``url_or_path`` under ``cache_dir``: cloned once, then fetched.

        Safe against concurrent workers on one machine (an exclusive flock per mirror).
        """
        source = _normalise_source(url_or_path)
        cache = Path(cache_dir)
        cache.mkdir(parents=True, exist_ok=True)
        dest = cache / _mirror_name(source)
        with _flock(cache / (dest.name + ".lock")):
            if (dest / "HEAD").exists():
                # Every writer of a mirror holds this flock, so a git lock file found now was
                # left by a killed process; without removing it every later fetch would fail.
                _remove_stale_git_locks(dest)
                _run(["-C", str(dest), "fetch", "--prune", "--force", "--quiet", "origin"])
                # The remote's default branch may have moved; keep HEAD pointing at it.
                _run(["-C", str(dest), "remote", "set-head", "origin", "--auto"], check=False)
                return cls(dest)
            tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".", dir=cache))
            try:
                _run(["clone", "--mirror", "--quiet", source, str(tmp / "m.git")])
                os.replace(tmp / "m.git", dest)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        return cls(dest)

    @classmethod
    def existing_mirror(
        cls, url_or_path: str | os.PathLike[str], cache_dir: str | os.PathLike[str]
    ) -> GitRepo | None:
        """The mirror of ``url_or_path`` if one exists already, without fetching (read-only use)."""
        dest = Path(cache_dir) / _mirror_name(_normalise_source(url_or_path))
        return cls(dest) if (dest / "HEAD").exists() else None

    def has_commit(self, rev: str) -> bool:
        proc = _run(["-C", str(self.path), "cat-file", "-e", f"{rev}^{{commit}}"], check=False)
        return proc.returncode == 0

    # -- reading -------------------------------------------------------------------------------
    def is_repo(self) -> bool:
        return _run(["-C", str(self.path), "rev-parse", "--git-dir"], check=False).returncode == 0

    def rev_parse(self, rev: str) -> str:
        """The full sha of ``rev`` (``^{commit}`` peeled); GitError when it does not exist."""
        return self.text("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}").strip()

    def default_branch(self) -> str:
        """The branch HEAD points at (short name)."""
        return self.text("symbolic-ref", "--short", "HEAD").strip()

    def branches(self) -> list[str]:
        """Local branch names (a mirror's branches are the remote's)."""
        out = self.text("for-each-ref", "--format=%(refname:short)", "refs/heads/")
        return [b for b in out.splitlines() if b]

    def first_parent_log(
        self, branch: str, *, since: str | None = None, until: str | None = None
    ) -> list[LogEntry]:
        """The first-parent history of ``branch``, newest first, from ONE ``git log`` call."""
        fmt = _RS + _US.join(["%H", "%P", "%an", "%ae", "%aI", "%cI", "%B"])
        args = ["-c", "log.showSignature=false", "log", "--first-parent", f"--format={fmt}"]
        if since:
            args.append(f"--since={since}")
        if until:
            args.append(f"--until={until}")
        out = self.git(*args, branch, "--").decode("utf-8", "replace")
        entries = []
        for chunk in out.split(_RS)[1:]:
            sha, parents, an, ae, ad, cd, msg = chunk.split(_US, 6)
            entries.append(LogEntry(sha, tuple(parents.split()), an, ae, ad, cd, msg.rstrip("\n")))
        return entries

    def commit_graph(self, *revs: str) -> dict[str, GraphNode]:
        """Every commit reachable from ``revs`` with parents, author time and subject (one call)."""
        out = self.git(
            "log", f"--format={_RS}%H{_US}%P{_US}%at{_US}%an{_US}%s", *revs, "--"
        ).decode("utf-8", "replace")
        graph: dict[str, GraphNode] = {}
        for chunk in out.split(_RS)[1:]:
            sha, parents, at, name, subject = chunk.rstrip("\n").split(_US, 4)
            graph[sha] = GraphNode(sha, tuple(parents.split()), int(at or 0), subject, name)
        return graph

    def read_file(self, commit: str, path: str) -> bytes | None:
        """The bytes of ``path`` at ``commit``; None when it does not exist there."""
        proc = _run(["-C", str(self.path), "cat-file", "blob", f"{commit}:{path}"], check=False)
        return proc.stdout if proc.returncode == 0 else None

    def list_files(self, commit: str) -> list[str]:
        """Every file path in the tree of ``commit``."""
        out = self.git("ls-tree", "-r", "-z", "--name-only", commit)
        return [p.decode("utf-8", "surrogateescape") for p in out.split(b"\0") if p]

    def regular_files(self, commit: str) -> list[str]:
        """Paths of the regular files at ``commit``: symlinks and submodules left out, since a
        link is data, never a path to follow (it may point at a host file)."""
        out = self.git("ls-tree", "-r", "-z", "--full-tree", commit)
        paths = []
        for entry in out.split(b"\0"):
            if not entry:
                continue
            meta, _, path = entry.partition(b"\t")
            if meta.split()[0] in (b"100644", b"100755"):
                paths.append(path.decode("utf-8", "surrogateescape"))
        return paths

    def nearest_tag(self, commit: str) -> str | None:
        """The nearest tag reachable from ``commit`` (``git describe --tags --abbrev=0``), or
        None when there is none: later tags never count, so the snapshot's past decides."""
        proc = _run(["-C", str(self.path), "describe", "--tags", "--abbrev=0", commit], check=False)
        name = proc.stdout.decode("utf-8", "replace").strip()
        return name if proc.returncode == 0 and name else None

    # -- diffs ---------------------------------------------------------------------------------
    @staticmethod
    def _diff_args(force_binary: bool) -> list[str]:
        args = []
        if force_binary:
            # Every path as binary: a base85 "GIT binary patch" is ASCII whatever the encoding.
            args += ["-c", f"core.attributesFile={_binary_attributes()}"]
        return args

    def diff_binary(
        self, a: str, b: str, *, paths: Sequence[str] = (), force_binary: bool = False
    ) -> bytes:
        """``git diff --binary --full-index -M a b`` as bytes (exactly what ``git apply`` takes)."""
        return self.git(
            *self._diff_args(force_binary),
            "diff",
            "--binary",
            "--full-index",
            "-M",
            "--no-color",
            "--no-ext-diff",
            "--no-textconv",
            "--src-prefix=a/",
            "--dst-prefix=b/",
            a,
            b,
            "--",
            *paths,
        )

    def diff_many(self, pairs: Iterable[tuple[str, str]]) -> Iterator[tuple[str, str, bytes]]:
        """Diffs of many (base, merge) pairs from one ``git diff-tree --stdin`` process.

        Yields (base, merge, diff bytes) in input order; same format as ``diff_binary``.
        """
        pairs = list(pairs)
        if not pairs:
            return
        stdin = "".join(f"{merge} {base}\n" for base, merge in pairs).encode()
        out = self.git(
            "diff-tree",
            "--stdin",
            "--always",
            "-p",
            "--binary",
            "--full-index",
            "-M",
            "--no-color",
            "--no-ext-diff",
            "--no-textconv",
            "--src-prefix=a/",
            "--dst-prefix=b/",
            input=stdin,
        )
        # Each diff is preceded by a line holding the merge sha; split on the expected ones only.
        lines = out.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        starts: list[int] = []
        k = 0
        for i, line in enumerate(lines):
            if k < len(pairs) and line == pairs[k][1].encode() and _SHA.match(line):
                starts.append(i)
                k += 1
        if k != len(pairs):
            raise GitError(["diff-tree", "--stdin"], 0, f"expected {len(pairs)} diffs, got {k}")
        starts.append(len(lines))
        for j, (base, merge) in enumerate(pairs):
            chunk = lines[starts[j] + 1 : starts[j + 1]]
            yield base, merge, (b"\n".join(chunk) + b"\n") if chunk else b""

    # -- patches -------------------------------------------------------------------------------
    def apply_check(self, commit: str, patch: bytes) -> None:
        """Raise GitError unless ``patch`` applies cleanly to the tree of ``commit``.

        Uses a private temporary index, so the repository (bare or not) is never modified and
        parallel checks do not interfere.
        """
        with tempfile.TemporaryDirectory(prefix="smelter-apply-") as tmp:
            env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
            self.git("read-tree", commit, env=env)
            self.git(
                "apply", "--check", "--cached", "--whitespace=nowarn", "-", input=patch, env=env
            )

    # -- snapshots -----------------------------------------------------------------------------
    def export_snapshot(
        self, commit: str, dest: str | os.PathLike[str], *, branch: str = "main"
    ) -> Path:
        """A working tree of ``commit`` at ``dest`` whose ``.git`` holds only that commit.

        The new repository has no remote, no tags, no reflog and no other commit (the commit is
        marked shallow, so its parents are simply absent); ``git log`` shows one commit and
        ``HEAD`` is ``commit`` itself, so the original sha is preserved.
        """
        sha = self.rev_parse(commit)
        dest_path = Path(dest)
        if dest_path.exists() and any(dest_path.iterdir()):
            raise GitError(["export_snapshot"], 1, f"destination {dest_path} is not empty")
        target = GitRepo.init(dest_path, branch=branch)
        # The objects of exactly this commit: the commit, its root tree and everything in it.
        listing = self.git("ls-tree", "-r", "-t", "-z", "--full-tree", sha)
        objects = [sha, self.text("rev-parse", f"{sha}^{{tree}}").strip()]
        for entry in listing.split(b"\0"):
            if not entry:
                continue
            meta = entry.split(b"\t", 1)[0].split()
            if meta[1] in (b"blob", b"tree"):  # gitlinks (submodules) are not our objects
                objects.append(meta[2].decode())
        pack = self.git(
            "pack-objects", "--stdout", "-q", input=("\n".join(objects) + "\n").encode()
        )
        target.git("index-pack", "--stdin", "--fix-thin", input=pack)
        (dest_path / ".git" / "shallow").write_text(sha + "\n")
        target.git("update-ref", f"refs/heads/{branch}", sha)
        target.git("symbolic-ref", "HEAD", f"refs/heads/{branch}")
        target.git("checkout", "-q", "-f", branch)
        for leftover in ("logs", "FETCH_HEAD", "ORIG_HEAD"):
            p = dest_path / ".git" / leftover
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
        return dest_path


def _normalise_source(url_or_path: str | os.PathLike[str]) -> str:
    source = str(url_or_path)
    if "://" not in source and ":" not in source.split("/")[0] and Path(source).exists():
        source = str(Path(source).resolve())
    return source


def _remove_stale_git_locks(git_dir: Path) -> None:
    for name in ("packed-refs.lock", "shallow.lock", "config.lock", "HEAD.lock", "index.lock"):
        with contextlib.suppress(FileNotFoundError):
            (git_dir / name).unlink()
    refs = git_dir / "refs"
    if refs.is_dir():
        for lock in refs.rglob("*.lock"):
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()


_ATTR_FILE: Path | None = None


def _binary_attributes() -> Path:
    """A gitattributes file that marks every path binary (written once per process)."""
    global _ATTR_FILE
    if _ATTR_FILE is None or not _ATTR_FILE.exists():
        fd, name = tempfile.mkstemp(prefix="smelter-binary-", suffix=".gitattributes")
        with os.fdopen(fd, "w") as f:
            f.write("* binary\n")
        _ATTR_FILE = Path(name)
    return _ATTR_FILE
