"""Pure parsing of pull-request metadata: commit classification, PR body, linked issues, ids.

Shared by the git miner and the GitHub miner, so both read a PR the same way.

Deliberate choices:
- A first-parent commit is classified by its parents first, its subject second. GitHub's merge
  button writes "Merge pull request #N from owner/branch" with two parents and its squash button
  "Subject (#N)" with one, but real histories also hold a two-parent "… (#N)" (a merge whose
  title was edited: its diff is still against the first parent, so it is a merge) and a
  one-parent "Merge pull request #N …" (rebased or squashed by hand: a squash). Octopus merges
  and two-parent commits without a PR number are not PRs.
- Linked issues follow GitHub's closing keywords (close/closes/closed, fix/fixes/fixed,
  resolve/resolves/resolved; any case; optional colon) in the ``#N``, ``owner/repo#N`` and
  full-URL forms. Every match counts (a PR may close several issues); each keyword links the
  one reference right after it, as on GitHub ("Fixes #1 and #2" links only #1). Text inside HTML
  comments and fenced code blocks is ignored, as GitHub does, so a PR template's
  ``<!-- Fixes #123 -->`` example links nothing.
- Issues in another repository stay distinct from same-repo issues (``IssueRef.repo``).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Literal

MERGE_SUBJECT = re.compile(r"^Merge pull request #(?P<number>\d+) from (?P<head>\S+)")
SQUASH_SUBJECT = re.compile(r"^(?P<title>.*?)\s*\(#(?P<number>\d+)\)\s*$")
_TRAILER = re.compile(r"^(Co-authored-by|Signed-off-by|Reviewed-by|Acked-by):", re.IGNORECASE)
_HTML_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)", re.DOTALL)
_FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.DOTALL | re.MULTILINE)
_NAME = r"[A-Za-z0-9_.-]+"
_CLOSING = re.compile(
    r"(?<![\w/-])(?:close[sd]?|fix(?:e[sd])?|resolve[sd]?)(?:\s*:\s*|\s+)"
    rf"(?:https?://github\.com/(?P<url_owner>{_NAME})/(?P<url_repo>{_NAME})/issues/(?P<url_n>\d+)"
    rf"|(?:(?P<owner>{_NAME})/(?P<repo>{_NAME}))?#(?P<n>\d+))(?![\w/])",
    re.IGNORECASE,
)


@dataclasses.dataclass(frozen=True, slots=True)
class PrCommit:
    """What a first-parent commit says about the PR it merged."""

    number: int
    style: Literal["merge", "squash"]
    title: str
    body: str
    head_ref: str | None = None  # "owner/branch" of a merge commit


@dataclasses.dataclass(frozen=True, slots=True)
class IssueRef:
    """An issue a PR closes; ``same_repo`` is False for ``other/repo#N`` references."""

    repo: str
    number: int
    same_repo: bool


def instance_id(repo: str, number: int) -> str:
    """SWE-bench's id: ``owner/name`` + PR 7 -> ``owner__name-7``."""
    return f"{repo.replace('/', '__')}-{number}"


def _strip_trailers(body: str) -> str:
    lines = body.rstrip().split("\n")
    while lines and (_TRAILER.match(lines[-1].strip()) or not lines[-1].strip()):
        lines.pop()
    return "\n".join(lines).strip()


def classify_commit(subject: str, body: str, n_parents: int) -> PrCommit | None:
    """The PR a first-parent commit merged, or None when it is not a PR merge."""
    subject = subject.strip()
    merge = MERGE_SUBJECT.match(subject)
    squash = SQUASH_SUBJECT.match(subject)
    if n_parents == 2:
        if merge:
            title, _, rest = body.strip().partition("\n")
            head = merge.group("head")
            return PrCommit(
                int(merge.group("number")), "merge", title.strip() or head.split("/", 1)[-1],
                _strip_trailers(rest), head,
            )  # fmt: skip
        if squash and squash.group("title"):
            return PrCommit(
                int(squash.group("number")), "merge", squash.group("title"), _strip_trailers(body)
            )
        return None
    if n_parents == 1:
        if merge:
            title, _, rest = body.strip().partition("\n")
            head = merge.group("head")
            return PrCommit(
                int(merge.group("number")), "squash", title.strip() or head.split("/", 1)[-1],
                _strip_trailers(rest), head,
            )  # fmt: skip
        if squash and squash.group("title"):
            return PrCommit(
                int(squash.group("number")), "squash", squash.group("title"), _strip_trailers(body)
            )
    return None  # root commits and octopus merges are not PRs


def visible_text(markdown: str) -> str:
    """Markdown without HTML comments and fenced code: what GitHub scans for closing keywords."""
    return _FENCE.sub("", _HTML_COMMENT.sub("", markdown))


def linked_issues(text: str, repo: str) -> list[IssueRef]:
    """Every issue ``text`` closes with a GitHub closing keyword, in order, without repeats."""
    refs: list[IssueRef] = []
    seen: set[tuple[str, int]] = set()
    for m in _CLOSING.finditer(visible_text(text)):
        if m.group("url_n"):
            target, number = f"{m.group('url_owner')}/{m.group('url_repo')}", m.group("url_n")
        elif m.group("owner"):
            target, number = f"{m.group('owner')}/{m.group('repo')}", m.group("n")
        else:
            target, number = repo, m.group("n")
        same = target.lower() == repo.lower()
        key = (repo.lower() if same else target.lower(), int(number))
        if key in seen:
            continue
        seen.add(key)
        refs.append(IssueRef(repo if same else target, int(number), same))
    return refs
