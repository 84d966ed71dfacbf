"""Mining merged pull requests through the GitHub REST API (PyGithub), diffs from a local mirror.

Deliberate choices:
- The API budget goes to metadata only. Diffs, parents and changed files come from one bare
  mirror clone per repository (``GitRepo.mirror``: cloned once, fetched on later runs), taken
  exactly as the git miner takes them, so a PR mined here and from git history has the same
  base, merge commit and diff. Cheap filters run before any per-PR request: merged, date range,
  bot author, then the local diff (tests and code, size); only survivors cost API requests
  (commits, linked issues and their comments, PR comments).
- Rebase merges (one parent, no "(#N)" of this PR; ``merge_commit_sha`` is the last replayed
  commit) take their base from the PR's commits list, which every mined PR fetches anyway: the
  base is the parent of the first replayed commit, and the replayed commits must carry the
  listed commits' subjects and author dates, else the PR is rejected (DIFF_FAILED) rather than
  mined with a wrong diff. ``base.sha`` is not used: it is the base tip when the PR was opened,
  not where it was rebased to. Patch-ids of the original commits were not used either: the
  originals need not be in the mirror, and a rebase that adjusted context changes them.
- Linked issues use the same closing-keyword parser as the git miner (``prmeta.linked_issues``)
  over the PR title, body and commit messages; each issue's comments are kept with their
  timestamps and ``first_commit_at`` is recorded, so hints are "comments made before the PR's
  first commit", as SWE-bench defines them (``hints_before``).
- PRs are listed ``sort=updated, direction=desc``: ``--github-since-last-run`` stops at the
  watermark (the newest ``updated_at`` of the last *completed* run of that repository) and a
  date range stops at ``--github-since``. Each PR's outcome is stored under its ``updated_at``
  and the config fingerprint, so an interrupted run resumes without spending a request on
  finished PRs, and a warm re-run costs only conditional (304) list requests.
- Quota, retries, the response cache and the token pool live in ``github_http``; the token is
  read from the environment variable named by ``github_token_env``, never from config, and is
  never logged, cached or written (configs carry the variable's name only).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

import apache_beam as beam
import github
from github.GithubException import GithubException, UnknownObjectException

from smelter.schemas import Comment, LinkedIssue, PullRequest, Reason, Rejection
from smelter.transforms.adapters.git import GitError, GitRepo
from smelter.transforms.adapters.github_http import (
    GitHubTransport,
    ResponseCache,
    TokenPool,
    TransportHandle,
    install_connection_classes,
    stderr_countdown,
)
from smelter.transforms.dates import parse_utc, utc_iso
from smelter.transforms.diff import DiffParseError, SplitDiff
from smelter.transforms.errors import Fatal, Rejected, Retryable
from smelter.transforms.mine.git_source import (
    STAGE,  # both miners are one stage: one counter namespace, one Rejection.stage
    carry_diff,
    filter_reason,
    in_date_range,
)
from smelter.transforms.mine.github_config import GitHubConfig
from smelter.transforms.mine.prmeta import IssueRef, classify_commit, instance_id, linked_issues
from smelter.transforms.stage import Stage, StageFn
from smelter.transforms.util import stable_hash, tail

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- pure helpers


def is_bot(login: str, user_type: str | None, bot_logins: Iterable[str]) -> bool:
    return (user_type or "") == "Bot" or login.endswith("[bot]") or login in set(bot_logins)


def license_allowed(spdx_id: str | None, allowlist: Iterable[str]) -> bool:
    allowed = {a.lower() for a in allowlist}
    return not allowed or (spdx_id or "").lower() in allowed


def issue_refs(repo: str, title: str, body: str, commit_messages: Iterable[str]) -> list[IssueRef]:
    """Closing-keyword references in title, body and commits, in that order, without repeats."""
    seen: set[tuple[str, int]] = set()
    out: list[IssueRef] = []
    for text in (title, body, *commit_messages):
        for ref in linked_issues(text or "", repo):
            key = (ref.repo.lower(), ref.number)
            if key not in seen:
                seen.add(key)
                out.append(ref)
    return out


def hints_before(comments: Iterable[Comment], first_commit_at: str | None) -> list[Comment]:
    """SWE-bench hints: the comments created before the PR's first commit (all if unknown)."""
    if first_commit_at is None:
        return list(comments)
    cutoff = parse_utc(first_commit_at)
    return [c for c in comments if parse_utc(c.created_at) < cutoff]


def hints_text(issues: Iterable[LinkedIssue], first_commit_at: str | None) -> str:
    """The hint comments of every linked issue, joined as SWE-bench's ``hints_text``."""
    return "\n".join(
        c.body for issue in issues for c in hints_before(issue.comments, first_commit_at)
    )


def rejection(repo: str, number: int | None, reason: Reason, detail: str = "") -> Rejection:
    iid = instance_id(repo, number) if number is not None else repo.replace("/", "__")
    return Rejection(instance_id=iid, stage=STAGE, reason=reason, detail=tail(detail, 2000),
                     repo=repo)  # fmt: skip


# --------------------------------------------------------------------------- local state


class OutcomeStore:
    """Per-PR outcomes on local disk, valid for one (config fingerprint, updated_at)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, repo: str, number: int) -> Path:
        return self.root / repo.replace("/", "__") / f"{number}.json"

    def get(self, repo: str, number: int, key: str) -> PullRequest | Rejection | None:
        try:
            doc = json.loads(self._path(repo, number).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return None  # a torn entry is recomputed
        if doc.get("key") != key:
            return None
        model = PullRequest if doc["kind"] == "pull_request" else Rejection
        return model.model_validate(doc["record"])

    def put(self, repo: str, number: int, key: str, outcome: PullRequest | Rejection) -> None:
        path = self._path(repo, number)
        path.parent.mkdir(parents=True, exist_ok=True)
        kind = "pull_request" if isinstance(outcome, PullRequest) else "rejection"
        doc = {"key": key, "kind": kind, "record": outcome.model_dump(mode="json")}
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(doc), encoding="utf-8")
        os.replace(tmp, path)


@dataclasses.dataclass
class RepoState:
    """Resume/incremental state of one repository."""

    watermark: str | None = None  # newest updated_at of the last completed run
    completed_at: str | None = None

    @classmethod
    def load(cls, path: Path) -> RepoState:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            return cls(doc.get("watermark"), doc.get("completed_at"))
        except (OSError, ValueError):
            return cls()

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(dataclasses.asdict(self)), encoding="utf-8")
        os.replace(tmp, path)


@dataclasses.dataclass
class RepoSummary:
    repo: str
    listed: int = 0
    mined: int = 0
    rejected: int = 0
    reused: int = 0

    def line(self, transport: GitHubTransport) -> str:
        s = transport.stats
        return (
            f"github {self.repo}: {self.listed} PRs listed, {self.mined} mined, "
            f"{self.rejected} rejected ({self.reused} from cache); API: {s.sent} requests, "
            f"{s.not_modified} not modified (free), waited {s.waited_seconds:.0f}s"
        )


# --------------------------------------------------------------------------- the source


class GitHubSource:
    """PyGithub client + transport + mirrors for one worker. Open in ``setup``, not ``__init__``."""

    def __init__(
        self,
        config: GitHubConfig,
        *,
        environ: dict[str, str] | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        countdown: Callable[[float, str], None] | None = None,
        report: Callable[[str], None] | None = None,
    ) -> None:
        self.config = config
        self._environ = os.environ if environ is None else environ
        self._clock, self._sleep, self._countdown = clock, sleep, countdown
        self._report = report or (lambda line: print(f"smelter: {line}", file=sys.stderr))
        self.gh: github.Github | None = None
        self.transport: GitHubTransport | None = None
        self.tokens: TokenPool | None = None
        root = config.cache_root
        self.outcomes = OutcomeStore(root / "outcomes")
        self.state_dir = root / "state"
        self.mirror_dir = Path(config.git.mirror_root)

    # -- lifecycle -----------------------------------------------------------------------------
    def open(self) -> GitHubSource:
        cfg = self.config
        self.tokens = TokenPool.from_env(self._environ.get(cfg.github_token_env))
        if self.tokens is None:
            log.warning(
                "%s is not set: anonymous GitHub API access allows 60 requests an hour",
                cfg.github_token_env,
            )
        install_connection_classes()
        secrets = self.tokens.secrets if self.tokens else ()
        self.transport = GitHubTransport(
            cache=ResponseCache(cfg.cache_root / "http", secrets),
            tokens=self.tokens,
            policy=cfg.retry_policy(),
            clock=self._clock,
            sleep=self._sleep,
            countdown=self._countdown or stderr_countdown(),
        )
        self.gh = github.Github(
            base_url=cfg.github_base_url.rstrip("/"),
            auth=self.tokens,
            retry=TransportHandle(self.transport),
            per_page=cfg.github_per_page,
            timeout=cfg.github_request_timeout_seconds,
            seconds_between_requests=cfg.github_seconds_between_requests,
            user_agent="swe-smelter",
        )
        return self

    def close(self) -> None:
        if self.gh is not None:
            self.gh.close()
        if self.transport is not None:
            self.transport.close()

    def __enter__(self) -> GitHubSource:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def client(self) -> github.Github:
        if self.gh is None:
            raise RuntimeError("GitHubSource.open() was not called")
        return self.gh

    # -- repositories --------------------------------------------------------------------------
    def search_repos(self, query: str, limit: int | None = None) -> list[str]:
        """owner/name of the top repositories a GitHub search returns."""
        limit = self.config.github_search_max_repos if limit is None else limit
        try:
            found = self.client.search_repositories(query)
            return [r.full_name for _, r in zip(range(limit), found, strict=False)]
        except GithubException as e:
            raise Fatal(f"GitHub search {query!r} failed: {_gh_message(e)}") from None

    def mine_repo(self, name: str) -> Iterator[PullRequest | Rejection]:
        """Every closed PR of ``name`` (newest update first) as a PullRequest or a Rejection."""
        cfg = self.config
        summary = RepoSummary(name)
        try:
            repo = self.client.get_repo(name)
            full_name = repo.full_name
            spdx = repo.license.spdx_id if repo.license else None
            clone_url = repo.clone_url
        except GithubException as e:
            yield rejection(name, None, Reason.REPO_UNAVAILABLE, f"GitHub: {_gh_message(e)}")
            return
        if not license_allowed(spdx, cfg.github_license_allowlist):
            yield rejection(
                full_name,
                None,
                Reason.LICENSE_NOT_ALLOWED,
                f"license {spdx or 'none'} not in {list(cfg.github_license_allowlist)}",
            )
            return  # fmt: skip
        try:
            git = GitRepo.mirror(clone_url, self.mirror_dir)
        except GitError as e:
            yield rejection(full_name, None, Reason.REPO_UNAVAILABLE, f"mirror: {e}")
            return
        state_path = self.state_dir / f"{full_name.replace('/', '__')}.json"
        state = RepoState.load(state_path)
        watermark = parse_utc(state.watermark) if cfg.github_since_last_run and \
            state.watermark else None  # fmt: skip
        since = parse_utc(cfg.github_since) if cfg.github_since else None
        fingerprint = cfg.outcome_fingerprint()
        newest: dt.datetime | None = None
        seen: set[int] = set()
        pulls = repo.get_pulls(state="closed", sort="updated", direction="desc")
        for pr in pulls:
            updated = parse_utc(pr.updated_at or pr.created_at)
            # Sorted by update time: everything after this point is older still.
            if watermark is not None and updated <= watermark:
                break
            if since is not None and updated < since:
                break  # merged_at <= updated_at, so none of the rest can be in range
            if pr.number in seen:  # the list shifted between pages
                continue
            if cfg.github_max_prs_per_repo is not None and \
                    summary.listed >= cfg.github_max_prs_per_repo:  # fmt: skip
                break
            seen.add(pr.number)
            summary.listed += 1
            newest = max(newest, updated) if newest else updated
            key = stable_hash(fingerprint, utc_iso(updated), pr.merge_commit_sha)
            outcome = self.outcomes.get(full_name, pr.number, key)
            if outcome is not None:
                summary.reused += 1
            else:
                outcome = self._outcome(full_name, clone_url, git, pr)
                if not (isinstance(outcome, Rejection) and outcome.reason in _TRANSIENT):
                    self.outcomes.put(full_name, pr.number, key, outcome)
            if isinstance(outcome, PullRequest):
                summary.mined += 1
            else:
                summary.rejected += 1
            yield outcome
        # Only a run that listed everything moves the watermark; an interrupted one resumes.
        if newest is not None:
            old = parse_utc(state.watermark) if state.watermark else None
            mark = max(newest, old) if old else newest
            RepoState(utc_iso(mark), utc_iso(dt.datetime.now(dt.UTC))).save(state_path)
        if self.transport is not None:
            self._report(summary.line(self.transport))

    # -- one PR --------------------------------------------------------------------------------
    def _outcome(self, repo: str, clone_url: str, git: GitRepo, pr: Any) -> PullRequest | Rejection:
        try:
            return self.mine_pull(repo, clone_url, git, pr)
        except Rejected as r:
            return rejection(repo, pr.number, r.reason, r.detail)
        except (GithubException, Retryable) as e:
            detail = _gh_message(e) if isinstance(e, GithubException) else str(e)
            return rejection(repo, pr.number, Reason.INTERNAL_ERROR, f"GitHub: {detail}")

    def mine_pull(self, repo: str, clone_url: str, git: GitRepo, pr: Any) -> PullRequest:
        """One listed PR -> PullRequest; raises Rejected for the configured filters."""
        cfg = self.config
        if pr.merged_at is None:
            raise Rejected(Reason.NOT_MERGED, "closed without merging")
        merged_at = utc_iso(pr.merged_at) or ""
        if not in_date_range(merged_at, cfg.github_since, cfg.github_until):
            raise Rejected(Reason.OUT_OF_DATE_RANGE, f"merged {merged_at}")
        login = pr.user.login if pr.user else ""
        if cfg.github_exclude_bots and is_bot(login, pr.user.type if pr.user else None,
                                              cfg.github_bot_logins):  # fmt: skip
            raise Rejected(Reason.BOT_AUTHOR, login)
        merge_sha = pr.merge_commit_sha
        if not merge_sha:
            raise Rejected(Reason.DIFF_FAILED, "GitHub reports no merge commit")

        commits: list[Any] | None = None
        shape = local_shape(git, merge_sha, pr.number)
        if shape.style == "rebase":  # the base lies as many commits back as the PR had
            # The commits list is fetched for every surviving PR anyway (messages, dates), so
            # fetching it before the diff filters costs a rebase-merged PR no extra request.
            commits = list(pr.get_commits())
            shape = local_shape(git, merge_sha, pr.number, [_facts(c) for c in commits])
        diff, split = local_diff(git, shape.base, merge_sha, cfg)
        why = filter_reason(split, cfg.filters)  # the git miner's filters, same order
        if why is not None:
            raise Rejected(*why)

        if commits is None:
            commits = list(pr.get_commits())
        messages = [c.commit.message for c in commits]
        dates = [parse_utc(c.commit.author.date) for c in commits
                 if c.commit.author and c.commit.author.date]  # fmt: skip
        first_commit_at = utc_iso(min(dates)) if dates else None
        refs = issue_refs(repo, pr.title, pr.body or "", messages)
        if cfg.github_require_linked_issue and not refs:
            raise Rejected(Reason.NO_LINKED_ISSUE, "no closing keyword in title, body or commits")
        issues = [self.fetch_issue(repo, ref) for ref in refs]
        comments = [_comment(c) for c in pr.get_issue_comments()] \
            if cfg.github_fetch_pr_comments else []  # fmt: skip
        return PullRequest(
            instance_id=instance_id(repo, pr.number),
            repo=repo,
            repo_url=clone_url,
            number=pr.number,
            source="github",
            title=pr.title,
            body=pr.body or "",
            base_commit=shape.base,
            head_commit=shape.head,
            merge_commit=merge_sha,
            merge_style=shape.style,
            created_at=utc_iso(pr.created_at) or "",
            merged_at=merged_at,
            author=login,
            author_association=pr.author_association,
            labels=[label.name for label in pr.labels],
            commit_messages=messages,
            linked_issues=issues,
            comments=comments,
            first_commit_at=first_commit_at,
            branch=pr.base.ref if pr.base else "",
            changed_files=[f.path for f in split.files],
            lines_added=split.lines()[0],
            lines_deleted=split.lines()[1],
            diff=diff,
        )

    def fetch_issue(self, repo: str, ref: IssueRef) -> LinkedIssue:
        """Title, body and all comments of a linked issue; empty text when it is gone."""
        try:
            owner_repo = self.client.get_repo(ref.repo, lazy=True)
            issue = owner_repo.get_issue(ref.number)
            comments = [_comment(c) for c in issue.get_comments()] if issue.comments else []
            return LinkedIssue(
                repo=ref.repo, number=ref.number, title=issue.title or "",
                body=issue.body or "", created_at=utc_iso(issue.created_at), comments=comments,
            )  # fmt: skip
        except UnknownObjectException:
            return LinkedIssue(repo=ref.repo, number=ref.number)
        except GithubException as e:
            if e.status in (404, 410):  # deleted or transferred issue
                return LinkedIssue(repo=ref.repo, number=ref.number)
            raise


_TRANSIENT = {Reason.INTERNAL_ERROR}


# --------------------------------------------------------------------------- local git


@dataclasses.dataclass(frozen=True)
class Shape:
    base: str
    head: str | None
    style: Literal["merge", "squash", "rebase"]


@dataclasses.dataclass(frozen=True)
class CommitFacts:
    """What a rebase keeps of a commit: subject and author date (the sha and committer change)."""

    sha: str
    parents: tuple[str, ...]
    subject: str
    author_at: str | None  # any ISO 8601 form; compared as an instant


# GET /pulls/N/commits lists at most this many commits; a longer PR's count is unknown.
PR_COMMITS_LIST_CAP = 250


def rebase_base(landed: list[CommitFacts], pr_commits: list[CommitFacts], merge_sha: str) -> str:
    """The base of a rebase merge: the parent of the first of the PR's replayed commits.

    ``landed`` is the first-parent history from ``merge_sha`` (newest first, at least one more
    entry than the PR has commits when the history is that deep); ``pr_commits`` is GitHub's
    commits list of the PR, oldest first. GitHub's rebase drops merge commits (a branch that
    merged main in), so those are not counted. The replayed commits must carry the PR commits'
    subjects and author dates, in order: that rejects a squash merge whose "(#N)" was edited
    out (one parent, no number: it looks like a rebase) instead of mining other PRs' commits as
    its diff, and a count that does not describe what landed. Raises Rejected(DIFF_FAILED).
    """
    own = [c for c in pr_commits if len(c.parents) <= 1]
    if not own:
        what = "only merge commits" if pr_commits else "no commits"
        raise Rejected(Reason.DIFF_FAILED, f"GitHub lists {what} for this PR: cannot tell where "
                       f"the rebase merge ending at {merge_sha[:12]} starts")  # fmt: skip
    if len(pr_commits) >= PR_COMMITS_LIST_CAP:
        raise Rejected(Reason.DIFF_FAILED, f"GitHub lists at most {PR_COMMITS_LIST_CAP} commits "
                       "of a PR: the rebase merge's length is unknown")  # fmt: skip
    n = len(own)
    replayed = landed[:n]
    if len(replayed) < n or len(landed) < n + 1:
        raise Rejected(Reason.DIFF_FAILED, f"rebase merge of {n} commits, but the first-parent "
                       f"history of {merge_sha[:12]} has only {len(landed)} commits")  # fmt: skip
    if n == 1:
        return landed[1].sha  # one commit: its parent, whatever the merge style was
    # Newest first: for a squash merge mistaken for a rebase, the detail names the squash commit.
    for i, (got, want) in enumerate(zip(replayed, reversed(own), strict=True)):
        if len(got.parents) != 1 or got.subject != want.subject or \
                _instant(got.author_at) != _instant(want.author_at):  # fmt: skip
            raise Rejected(Reason.DIFF_FAILED, (
                f"the {n} commits ending at {merge_sha[:12]} are not the PR's commits (a squash "
                f"merge without its number?): commit {n - i} of {n} is {want.subject!r} authored "
                f"{utc_iso(want.author_at)}, but {got.sha[:12]} there is {got.subject!r} "
                f"authored {utc_iso(got.author_at)} with {len(got.parents)} parent(s)"
            ))  # fmt: skip
    return landed[n].sha


def _instant(value: str | None) -> dt.datetime | None:
    return parse_utc(value) if value else None


def _facts(c: Any) -> CommitFacts:
    """A PyGithub Commit of a PR's commits list (no request: every field is in the list)."""
    author = c.commit.author
    when = utc_iso(author.date) if author and author.date else None
    subject = (c.commit.message or "").split("\n", 1)[0].strip()
    return CommitFacts(c.sha, tuple(p.sha for p in c.parents), subject, when)


def first_parent_facts(git: GitRepo, rev: str, count: int) -> list[CommitFacts]:
    """Up to ``count`` commits of the first-parent history of ``rev``, newest first."""
    out = git.text("log", "--first-parent", f"--max-count={count}",
                   "--format=%H%x1f%P%x1f%aI%x1f%s%x1e", rev, "--")  # fmt: skip
    facts = []
    for chunk in out.split("\x1e"):
        if chunk.strip():
            sha, parents, author_at, subject = chunk.strip("\n").split("\x1f", 3)
            facts.append(CommitFacts(sha, tuple(parents.split()), subject.strip(), author_at))
    return facts


def local_shape(
    git: GitRepo, merge_sha: str, number: int, pr_commits: list[CommitFacts] | None = None
) -> Shape:
    """Base, head and merge style of a PR's merge commit, read from the mirror.

    Parents decide first (as in the git miner): two parents is a merge against the first parent;
    one parent whose message names THIS PR ("Title (#N)") is a squash. One parent without it is
    a rebase merge (GitHub's ``merge_commit_sha`` is then the last replayed commit), whose base
    ``rebase_base`` finds from the PR's commits list (when given). A "(#M)" naming another
    number is not this PR's squash: rebased commits often cite issues that way.
    """
    try:
        raw = git.text("log", "-1", "--format=%P%x1f%B", merge_sha, "--")
    except GitError as e:
        detail = f"merge commit {merge_sha[:12]} not in mirror: {e}"
        raise Rejected(Reason.DIFF_FAILED, detail) from None
    parents_text, _, message = raw.partition("\x1f")
    parents = parents_text.split()
    subject, _, body = message.strip().partition("\n")
    pc = classify_commit(subject, body, len(parents))
    if len(parents) == 2:
        return Shape(parents[0], parents[1], "merge")
    if len(parents) != 1:
        raise Rejected(Reason.DIFF_FAILED, f"merge commit has {len(parents)} parents")
    if pc is not None and pc.number == number:  # "Title (#N)", or "Merge pull request #N" by hand
        return Shape(parents[0], None, "squash")
    if pr_commits is None:
        return Shape(parents[0], None, "rebase")
    depth = min(len(pr_commits), PR_COMMITS_LIST_CAP) + 1
    try:
        landed = first_parent_facts(git, merge_sha, depth)
    except GitError as e:
        raise Rejected(Reason.DIFF_FAILED, f"history of {merge_sha[:12]}: {e}") from None
    return Shape(rebase_base(landed, pr_commits, merge_sha), None, "rebase")


def local_diff(git: GitRepo, base: str, merge: str, cfg: GitHubConfig) -> tuple[str, SplitDiff]:
    """The PR's diff from the mirror, exactly as the git miner takes it (``carry_diff``)."""
    try:
        raw = git.diff_binary(base, merge)
        return carry_diff(git, base, merge, raw, cfg.test_paths.rules)
    except GitError as e:
        raise Rejected(Reason.DIFF_FAILED, str(e)) from None
    except DiffParseError as e:
        raise Rejected(Reason.DIFF_FAILED, str(e)) from None


def _comment(c: Any) -> Comment:
    return Comment(author=c.user.login if c.user else "", created_at=utc_iso(c.created_at) or "",
                   body=c.body or "")  # fmt: skip


def _gh_message(e: GithubException) -> str:
    msg = e.data.get("message") if isinstance(e.data, dict) else None
    return f"{e.status} {msg or e.message or ''}".strip()


# --------------------------------------------------------------------------- Beam


class MineGitHubFn(StageFn[GitHubConfig, str, PullRequest]):
    """Repository name (``owner/name``) -> its PRs as PullRequest records, or rejections."""

    STAGE = STAGE

    def __init__(
        self,
        config: GitHubConfig,
        cache_root: str | None = None,
        source: Callable[[GitHubConfig], GitHubSource] | None = None,
    ) -> None:
        super().__init__(config, cache_root)
        self._make_source = source or GitHubSource  # picklable: a class or a module function

    def setup_stage(self) -> None:
        self._source = self._make_source(self._config).open()

    def teardown_stage(self) -> None:
        self._source.close()

    def instance_id_of(self, record: Any) -> str:
        return str(record).replace("/", "__")

    def cache_key(self, record: Any) -> str | None:
        return None  # per-PR outcomes are cached inside the source, keyed by updated_at

    def run(self, record: str) -> Iterator[PullRequest | Rejection]:
        yield from self._source.mine_repo(record)


class SearchReposFn(beam.DoFn):
    """A GitHub repository search -> owner/name strings (at most github_search_max_repos)."""

    def __init__(self, config: GitHubConfig) -> None:
        self._config = config

    def setup(self) -> None:
        self._source = GitHubSource(self._config).open()

    def teardown(self) -> None:
        self._source.close()

    def process(self, query: str) -> Iterator[str]:
        yield from self._source.search_repos(query)


class MineGitHub(beam.PTransform):
    """Pipeline root -> (PullRequest records, rejections) for the configured repos and search."""

    def __init__(
        self,
        config: GitHubConfig,
        cache_root: str | None = None,
        progress_dir: str | None = None,
    ) -> None:
        super().__init__()
        self._config = config
        self._cache_root, self._progress_dir = cache_root, progress_dir

    def expand(self, pbegin: Any) -> tuple[Any, Any]:
        cfg = self._config
        names = pbegin | "GitHubRepos" >> beam.Create(list(cfg.github_repos))
        if cfg.github_search_query:
            found = (
                pbegin
                | "GitHubQuery" >> beam.Create([cfg.github_search_query])
                | "SearchRepos" >> beam.ParDo(SearchReposFn(cfg))
            )
            names = (names, found) | "AllRepos" >> beam.Flatten()
        fn = MineGitHubFn(cfg).attach(self._cache_root, self._progress_dir)
        return (
            names
            | "DistinctRepos" >> beam.Distinct()
            | "SpreadRepos" >> beam.Reshuffle()
            | Stage(fn)
        )
