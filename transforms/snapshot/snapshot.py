"""The snapshot stage: a mined PullRequest becomes a Candidate with a code and a test patch.

Deliberate choices:
- The diff comes from the PR record (taken locally by the miner); when a source left it empty
  (the GitHub miner may), it is taken here from the mirror with the same ``git diff --binary``
  and the same re-take of undecodable sections, never from a web diff.
- ``split_diff`` cuts it byte-exactly into ``patch`` (code), ``test_patch`` (tests and their
  fixtures) and ``aux_patch`` (docs, changelog). The test patch, the code patch and both
  together must pass ``git apply --check`` at ``base_commit``; the check runs in a private
  index, so workers share one mirror safely.
- The raw problem statement is the linked issues' title and body when a source could fetch
  them (GitHub), else the PR's title and body; cleaning happens later, and the raw text is kept.
  Hints are the linked issues' comments written before the PR's first commit (SWE-bench's rule:
  later comments may discuss the fix).
- Mirrors are opened once per worker and repository (``setup_stage`` starts an empty map), so a
  batch of PRs of one repository costs one fetch.
"""

from __future__ import annotations

from smelter.schemas import Candidate, PullRequest, Reason, Stage
from smelter.transforms.adapters.git import GitError, GitRepo
from smelter.transforms.dates import utc_iso
from smelter.transforms.diff import DiffParseError, SplitDiff, split_diff
from smelter.transforms.errors import Rejected
from smelter.transforms.mine.git_source import carry_diff, undecodable_detail
from smelter.transforms.snapshot.config import SnapshotConfig
from smelter.transforms.stage import StageFn
from smelter.transforms.testpaths import PathKind

STAGE = Stage.SNAPSHOT


# --------------------------------------------------------------------------- pure parts


def problem_statement(pr: PullRequest) -> str:
    """Linked issues' title + body when known, else the PR's title + body (raw, uncleaned)."""
    issues = [i for i in pr.linked_issues if i.title.strip() or i.body.strip()]
    if issues:
        return "\n\n".join(f"{i.title.strip()}\n\n{i.body.strip()}".strip() for i in issues)
    return f"{pr.title.strip()}\n\n{pr.body.strip()}".strip()


def hints_text(pr: PullRequest) -> str:
    """Linked-issue comments written before the PR's first commit, oldest first."""
    cutoff = utc_iso(pr.first_commit_at or pr.created_at)
    comments = [
        c for i in pr.linked_issues for c in i.comments
        if c.body.strip() and utc_iso(c.created_at) < cutoff
    ]  # fmt: skip
    comments.sort(key=lambda c: utc_iso(c.created_at))
    return "\n\n".join(c.body.strip() for c in comments)


def build_candidate(pr: PullRequest, split: SplitDiff) -> Candidate:
    """The Candidate of a PR whose split diff has a non-empty code and test patch."""
    if not split.test_patch:
        raise Rejected(Reason.EMPTY_PATCH, "no test changes")
    if not split.patch:
        raise Rejected(Reason.EMPTY_PATCH, "no code changes")
    try:
        patch, test_patch = split.text(PathKind.CODE), split.text(PathKind.TEST)
        aux_patch = split.text(PathKind.AUX)
    except UnicodeDecodeError as e:
        raise Rejected(Reason.UNDECODABLE_DIFF, ", ".join(split.undecodable) or str(e)) from e
    return Candidate(
        instance_id=pr.instance_id,
        repo=pr.repo,
        repo_url=pr.repo_url,
        pull_number=pr.number,
        base_commit=pr.base_commit,
        merge_commit=pr.merge_commit,
        created_at=pr.created_at,
        merged_at=pr.merged_at,
        problem_statement=problem_statement(pr),
        hints_text=hints_text(pr),
        patch=patch,
        test_patch=test_patch,
        aux_patch=aux_patch,
        code_files=split.code_files,
        test_files=split.test_files,
        aux_files=split.aux_files,
        linked_issues=list(pr.linked_issues),
        pr_title=pr.title,
        pr_body=pr.body,
        source=pr.source,
    )


# --------------------------------------------------------------------------- stage


class SnapshotFn(StageFn[SnapshotConfig, PullRequest, Candidate]):
    """PullRequest -> Candidate (main) or Rejection."""

    STAGE = STAGE

    def __init__(self, config: SnapshotConfig, cache_root: str | None = None) -> None:
        super().__init__(config, cache_root)

    def setup_stage(self) -> None:
        self._repos: dict[str, GitRepo] = {}

    def repo_for(self, url: str, needs: str = "") -> GitRepo:
        """The mirror of ``url``: used as is when it holds ``needs``, else fetched (once)."""
        repos = getattr(self, "_repos", None)
        if repos is None:
            repos = self._repos = {}
        mirror_dir = self._config.git.mirror_root
        if url not in repos:
            # The miner has just fetched this mirror; fetching again per worker is wasted work.
            existing = GitRepo.existing_mirror(url, mirror_dir)
            if existing is not None and (not needs or existing.has_commit(needs)):
                repos[url] = existing
                return existing
        if url not in repos or (needs and not repos[url].has_commit(needs)):
            try:
                repos[url] = GitRepo.mirror(url, mirror_dir)
            except GitError as e:
                raise Rejected(Reason.REPO_UNAVAILABLE, f"{url}: {e}") from e
        return repos[url]

    def run(self, record: PullRequest) -> list[Candidate]:
        cfg = self._config
        repo = self.repo_for(record.repo_url, record.merge_commit)
        try:
            repo.rev_parse(record.base_commit)
            repo.rev_parse(record.merge_commit)
        except GitError as e:
            raise Rejected(Reason.REPO_UNAVAILABLE, f"commit missing from mirror: {e}") from e
        try:
            if record.diff:
                split = split_diff(record.diff.encode("utf-8"), cfg.path_rules)
            else:
                diff = repo.diff_binary(record.base_commit, record.merge_commit)
                _, split = carry_diff(repo, record.base_commit, record.merge_commit, diff,
                                      cfg.path_rules)  # fmt: skip
        except DiffParseError as e:
            raise Rejected(Reason.DIFF_FAILED, str(e)) from e
        except GitError as e:
            raise Rejected(Reason.DIFF_FAILED, str(e)) from e
        if split.undecodable_paths:  # a source that did not check names (the miner does)
            raise Rejected(Reason.UNDECODABLE_PATH, undecodable_detail(split))
        candidate = build_candidate(record, split)
        if cfg.snapshot_check_apply:
            for label, patch in (("test_patch", split.test_patch), ("patch", split.patch),
                                 ("patch+test_patch", split.patch + split.test_patch)):  # fmt: skip
                try:
                    repo.apply_check(record.base_commit, patch)
                except GitError as e:
                    raise Rejected(Reason.PATCH_DOES_NOT_APPLY,
                                   f"{label} at {record.base_commit[:12]}: {e.stderr.strip()}") from e  # fmt: skip  # noqa: E501
        return [candidate]
