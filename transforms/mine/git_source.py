"""The mine stage for git sources: merged pull requests found in a repository's history.

Deliberate choices:
- The first-parent history of each branch is the list of what was merged; every commit on it
  is classified by ``prmeta.classify_commit`` (parents first, subject second). The diff of a PR
  is always against the first parent, taken locally with ``--binary`` (never a web diff).
- Bulk git: per branch one ``git log --first-parent``, one ``git log`` of the whole commit graph
  (PR commits and dates of merge-style PRs come from it, not a call per PR), and one
  ``git diff-tree --stdin`` process per batch of diffs.
- ``created_at`` is the earliest author date of the PR's own commits for a merge (the commits
  reachable from the second parent and not on the first-parent line), the author date for a
  squash. ``merged_at`` is the committer date of the merge/squash commit; the date range
  filters on it.
- A section of the diff that is not UTF-8 (a latin-1 source file) is re-taken as a git binary
  patch (base85, ASCII) so the PR is carried instead of lost; records hold text. A file *name*
  that is not UTF-8 cannot be held as text: that PR alone is rejected (``undecodable_path``).
  Names with other non-ASCII letters are decoded from git's quoting (``split.unquote_path``).
- Release branches (by option) are walked after the default branch; a PR number seen before
  is a ``duplicate`` rejection, so backports are counted, not mined twice.
- Every PR that is filtered out becomes a ``Rejection`` with its own instance_id; commits that
  are not PRs at all (direct pushes, "Merge branch 'x'") are not records and are only counted.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
import re
from collections.abc import Iterable, Iterator
from typing import Any

from apache_beam.metrics import Metrics

from smelter.schemas import LinkedIssue, PullRequest, Reason, Record, Rejection, Stage
from smelter.transforms.adapters.git import GitError, GitRepo, GraphNode, LogEntry
from smelter.transforms.dates import utc_iso
from smelter.transforms.diff import (
    DiffParseError,
    SplitDiff,
    replace_sections,
    split_diff,
)
from smelter.transforms.errors import Rejected
from smelter.transforms.mine.config import FiltersConfig, MineConfig
from smelter.transforms.mine.prmeta import PrCommit, classify_commit, instance_id, linked_issues
from smelter.transforms.stage import StageFn
from smelter.transforms.testpaths import PathKind, PathRules

log = logging.getLogger(__name__)

STAGE = Stage.MINE
_DIFF_BATCH = 256


def derive_repo_name(url: str) -> str:
    """``owner/name`` of a clone URL or path: the last two path components, ``.git`` dropped."""
    u = url.rstrip("/")
    u = re.sub(r"^[a-z+]+://[^/]*/", "", u)  # scheme and host
    u = re.sub(r"^[^@/]+@[^:/]+:", "", u)  # scp-like git@host:owner/name
    parts = [p for p in u.split("/") if p and p not in (".", "..")]
    parts = [p.removesuffix(".git") for p in parts[-2:]]
    if not parts:
        return "local/repo"
    return "/".join(parts) if len(parts) == 2 else f"local/{parts[0]}"


@dataclasses.dataclass(frozen=True)
class RepoSpec:
    """One repository to mine: where it is, what it is called, which branches to walk."""

    url: str
    name: str = ""
    branches: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", derive_repo_name(self.url))

    @classmethod
    def from_url(cls, url: str, name: str | None = None, branches: Iterable[str] = ()) -> RepoSpec:
        return cls(url=str(url), name=name or "", branches=tuple(branches))


# --------------------------------------------------------------------------- pure parts


def in_date_range(merged_at: str, since: str | None, until: str | None) -> bool:
    """``since <= merged_at < until`` with bounds given as ISO dates or datetimes (UTC)."""
    when = utc_iso(merged_at)
    return (since is None or when >= utc_iso(since)) and (until is None or when < utc_iso(until))


def pr_commits(graph: dict[str, GraphNode], merge: LogEntry, mainline: set[str]) -> list[GraphNode]:
    """The PR's own commits of a merge: reachable from its second parent, off the mainline.

    Stops at first-parent (mainline) commits, which is exact for branches forked from the
    mainline, including ones that merged the mainline back in. Oldest first.
    """
    seen: set[str] = set()
    stack = list(merge.parents[1:])
    out: list[GraphNode] = []
    while stack:
        sha = stack.pop()
        if sha in seen or sha in mainline or sha not in graph:
            continue
        seen.add(sha)
        node = graph[sha]
        out.append(node)
        stack.extend(node.parents)
    return sorted(out, key=lambda n: (n.author_time, n.sha))


def filter_reason(split: SplitDiff, filters: FiltersConfig) -> tuple[Reason, str] | None:
    """Why a PR with this diff is not kept (size, test+code), or None to keep it; both miners
    ask this, so they reject a PR alike."""
    n_files = len(split.files)
    if filters.max_files and n_files > filters.max_files:
        return Reason.TOO_MANY_FILES, f"{n_files} files > {filters.max_files}"
    added, removed = split.lines(PathKind.CODE)
    t_added, t_removed = split.lines(PathKind.TEST)
    changed = added + removed + t_added + t_removed
    if filters.max_changed_lines and changed > filters.max_changed_lines:
        return Reason.TOO_MANY_LINES, f"{changed} changed lines > {filters.max_changed_lines}"
    if filters.require_tests_and_code:
        if not split.code_files:
            return Reason.NO_CODE_CHANGES, f"changes only {_kinds(split)}"
        if not split.test_files:
            return Reason.NO_TEST_CHANGES, f"changes only {_kinds(split)}"
    return None


def undecodable_detail(split: SplitDiff) -> str:
    """The detail of an ``UNDECODABLE_PATH`` rejection: the names, bytes shown as ``\\xff``."""
    return "file names that are not UTF-8: " + ", ".join(split.undecodable_paths)


def _kinds(split: SplitDiff) -> str:
    kinds = sorted({f.kind.value for f in split.files})
    return " and ".join(kinds) + " files" if kinds else "nothing"


def select_branches(default: str, available: list[str], config: MineConfig,
                    spec: RepoSpec) -> list[str]:  # fmt: skip
    """Branches to walk: spec's or config's (default branch otherwise), then release branches."""
    chosen = list(spec.branches or config.mine_branches or (default,))
    if config.mine_release_branches:
        for b in sorted(available):
            if b not in chosen and any(fnmatch.fnmatchcase(b, g) for g in
                                       config.mine_release_branch_globs):  # fmt: skip
                chosen.append(b)
    return chosen


# --------------------------------------------------------------------------- git source


@dataclasses.dataclass
class MineStats:
    """What one scan saw; printed by the benchmark, logged by the stage."""

    commits_scanned: int = 0
    prs_found: int = 0
    prs_kept: int = 0
    prs_rejected: int = 0
    not_prs: int = 0


def carry_diff(repo: GitRepo, base: str, merge: str, diff: bytes,
               rules: PathRules) -> tuple[str, SplitDiff]:  # fmt: skip
    """The diff as text, undecodable sections re-taken as git binary patches; and its split.

    A file name that is not UTF-8 rejects this PR alone (``UNDECODABLE_PATH``): carried on, it
    would fail the run where records are written, and again on every re-run from the cache.
    """
    split = split_diff(diff, rules)
    if split.undecodable_paths:
        raise Rejected(Reason.UNDECODABLE_PATH, undecodable_detail(split))
    if split.undecodable:
        paths = sorted({p for f in split.files if not f.decodable
                        for p in (f.path, f.old_path) if p})  # fmt: skip
        binary = repo.diff_binary(base, merge, paths=paths, force_binary=True)
        diff = replace_sections(diff, [binary])
        counts = {f.path: (f.added, f.removed) for f in split.files}
        split = split_diff(diff, rules)
        if split.undecodable:
            raise Rejected(Reason.UNDECODABLE_DIFF, ", ".join(split.undecodable))
        # A binary patch has no lines; keep the text counts so size filters still see them.
        split = SplitDiff(tuple(
            dataclasses.replace(f, added=counts[f.path][0], removed=counts[f.path][1])
            if f.path in counts and f.path in paths else f
            for f in split.files
        ))  # fmt: skip
    return diff.decode("utf-8"), split


class GitSource:
    """Merged PRs of one repository (a GitRepo, usually a bare mirror), oldest first per branch."""

    def __init__(self, repo: GitRepo, spec: RepoSpec, config: MineConfig) -> None:
        self.repo = repo
        self.spec = spec
        self.config = config
        self.stats = MineStats()

    def branches(self) -> list[str]:
        available = self.repo.branches()
        try:
            default = self.repo.default_branch()
        except GitError:
            default = "main" if "main" in available else (available or ["master"])[0]
        return select_branches(default, available, self.config, self.spec)

    def __iter__(self) -> Iterator[PullRequest | Rejection]:
        seen: dict[int, str] = {}
        kept = 0
        for branch in self.branches():
            for rec in self._scan_branch(branch, seen):
                if isinstance(rec, PullRequest):
                    kept += 1
                yield rec
                if self.config.mine_max_prs and kept >= self.config.mine_max_prs:
                    return

    def _reject(self, number: int, reason: Reason, detail: str) -> Rejection:
        self.stats.prs_rejected += 1
        return Rejection(instance_id=instance_id(self.spec.name, number), stage=STAGE,
                         reason=reason, detail=detail, repo=self.spec.name)  # fmt: skip

    def _scan_branch(self, branch: str, seen: dict[int, str]) -> Iterator[PullRequest | Rejection]:
        try:
            history = self.repo.first_parent_log(branch)
        except GitError as e:  # a missing branch loses that branch, not the others
            yield Rejection(instance_id=self.spec.name, stage=STAGE, reason=Reason.REPO_UNAVAILABLE,
                            detail=f"branch {branch}: {e}", repo=self.spec.name)  # fmt: skip
            return
        history.reverse()  # oldest first: the earliest landing of a PR number wins
        self.stats.commits_scanned += len(history)
        mainline = {e.sha for e in history}
        found: list[tuple[LogEntry, PrCommit]] = []
        for entry in history:
            pr = classify_commit(entry.subject, entry.body, len(entry.parents))
            if pr is None:
                self.stats.not_prs += 1
                continue
            self.stats.prs_found += 1
            if pr.number in seen:
                yield self._reject(pr.number, Reason.DUPLICATE,
                                   f"{entry.sha[:12]} on {branch}; already mined as {seen[pr.number]}")  # fmt: skip  # noqa: E501
                continue
            seen[pr.number] = f"{entry.sha[:12]} on {branch}"
            if not in_date_range(entry.committer_date, self.config.mine_since,
                                 self.config.mine_until):  # fmt: skip
                yield self._reject(pr.number, Reason.OUT_OF_DATE_RANGE,
                                   f"merged {utc_iso(entry.committer_date)}")  # fmt: skip
                continue
            found.append((entry, pr))
        graph = self.repo.commit_graph(branch) if any(p.style == "merge" for _, p in found) else {}
        for start in range(0, len(found), _DIFF_BATCH):
            batch = found[start : start + _DIFF_BATCH]
            diffs = self.repo.diff_many((e.parents[0], e.sha) for e, _ in batch)
            for (entry, pr), (_, _, diff) in zip(batch, diffs, strict=True):
                try:
                    yield self._build(entry, pr, diff, graph, mainline, branch)
                except Rejected as r:
                    yield self._reject(pr.number, r.reason, r.detail)

    def _build(self, entry: LogEntry, pr: PrCommit, diff: bytes, graph: dict[str, GraphNode],
               mainline: set[str], branch: str) -> PullRequest:  # fmt: skip
        try:
            text, split = carry_diff(self.repo, entry.parents[0], entry.sha, diff,
                                     self.config.path_rules)  # fmt: skip
        except DiffParseError as e:
            raise Rejected(Reason.DIFF_FAILED, str(e)) from e
        why = filter_reason(split, self.config.filters)
        if why is not None:
            raise Rejected(*why)
        if pr.style == "merge":
            commits = pr_commits(graph, entry, mainline)
            created = utc_iso(commits[0].author_time) if commits else utc_iso(entry.author_date)
            messages = [c.subject for c in commits]
            author = commits[0].author_name if commits else entry.author_name
        else:
            created = utc_iso(entry.author_date)
            messages = [entry.message]
            author = entry.author_name
        added, removed = split.lines()
        refs = linked_issues(f"{pr.title}\n\n{pr.body}", self.spec.name)
        self.stats.prs_kept += 1
        return PullRequest(
            instance_id=instance_id(self.spec.name, pr.number),
            repo=self.spec.name,
            repo_url=self.spec.url,
            number=pr.number,
            source="git",
            title=pr.title,
            body=pr.body,
            base_commit=entry.parents[0],
            head_commit=entry.parents[1] if pr.style == "merge" else None,
            merge_commit=entry.sha,
            merge_style=pr.style,
            created_at=created,
            merged_at=utc_iso(entry.committer_date),
            author=author,
            commit_messages=messages,
            linked_issues=[LinkedIssue(repo=r.repo, number=r.number) for r in refs],
            first_commit_at=created,
            branch=branch,
            changed_files=[f.path for f in split.files],
            lines_added=added,
            lines_deleted=removed,
            diff=text,
        )


# --------------------------------------------------------------------------- stage


class MineGitFn(StageFn[MineConfig, RepoSpec, Record]):
    """RepoSpec -> PullRequest (main) and Rejection (filtered PRs, unreachable repositories)."""

    STAGE = STAGE

    def __init__(self, config: MineConfig, cache_root: str | None = None) -> None:
        super().__init__(config, cache_root)

    def instance_id_of(self, record: Any) -> str:
        return getattr(record, "name", "") or str(record)

    def cache_key(self, record: Any) -> str | None:
        return None  # a repository's history moves: always re-scan (the scan is cheap)

    def open_repo(self, spec: RepoSpec) -> GitRepo:
        try:
            return GitRepo.mirror(spec.url, self._config.git.mirror_root)
        except GitError as e:
            raise Rejected(Reason.REPO_UNAVAILABLE, f"{spec.url}: {e}") from e

    def run(self, record: RepoSpec) -> Iterator[Record]:
        repo = self.open_repo(record)
        source = GitSource(repo, record, self._config)
        yield from source
        s = source.stats
        Metrics.counter(STAGE, "commits_scanned").inc(s.commits_scanned)
        Metrics.counter(STAGE, "not_prs").inc(s.not_prs)
        log.info("mined %s: %d commits, %d PRs found, %d kept, %d rejected", record.name,
                 s.commits_scanned, s.prs_found, s.prs_kept, s.prs_rejected)  # fmt: skip
