"""Issue texts for git-mined tasks: the clean stage's one use of GitHub.

A git-mined task knows only the numbers of the issues its PR closes; with a token at hand the
clean stage takes their text through the GitHub source's cached client, for validated tasks
only (the cheap end of the funnel). Without a token nothing changes.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass

from smelter.schemas import Task
from smelter.transforms.clean.config import CleanConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IssueText:
    """Text of the issues a git-mined PR closes, fetched from GitHub (``IssueSource``)."""

    statement: str
    hints: str
    numbers: tuple[int, ...]


class IssueSource:
    """Issue texts through the GitHub source's client: its token pool, response cache (a re-run
    costs conditional requests only) and retries. Opened in ``setup``; one request at a time,
    because the clean stage's thread pool shares it and PyGithub's requester is not meant for
    concurrent use."""

    def __init__(self, config: CleanConfig) -> None:
        from smelter.transforms.mine.github_source import GitHubSource

        self._source = GitHubSource(config.github, report=lambda line: log.info("%s", line))
        self._lock = threading.Lock()

    @staticmethod
    def enabled(config: CleanConfig, environ: Mapping[str, str] = os.environ) -> bool:
        """A token is at hand and fetching is on: without a token nothing changes."""
        return config.clean_fetch_issues and bool(environ.get(config.github.github_token_env))

    def open(self) -> IssueSource:
        self._source.open()
        return self

    def close(self) -> None:
        self._source.close()

    def fetch(self, task: Task) -> IssueText | None:
        """The linked issues' title + body (as the snapshot stage joins them) and their hint
        comments; None when the task is not git-mined, closes no issue, or no issue has text.
        Issues live in the task's repository: the task keeps only their numbers."""
        from github import GithubException

        from smelter.transforms.mine.github_source import hints_text
        from smelter.transforms.mine.prmeta import IssueRef

        numbers = task.provenance.linked_issues
        if task.provenance.source != "git" or not numbers:
            return None
        try:
            with self._lock:
                issues = [
                    self._source.fetch_issue(task.repo, IssueRef(task.repo, n, True))
                    for n in numbers
                ]
        except (GithubException, OSError) as e:
            # The PR's own text is still there: a GitHub hiccup costs the issue text, not the
            # task. (A spent quota waits inside the transport, as the GitHub source does.)
            log.warning("%s: issue text not fetched: %s", task.instance_id, type(e).__name__)
            return None
        found = [i for i in issues if i.title.strip() or i.body.strip()]
        if not found:
            return None
        statement = "\n\n".join(f"{i.title.strip()}\n\n{i.body.strip()}".strip() for i in found)
        return IssueText(
            statement=statement,
            hints=hints_text(found, task.created_at),
            numbers=tuple(i.number for i in found),
        )
