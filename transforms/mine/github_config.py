"""The ``[github]`` options of the GitHub miner, apart from the Beam stage so the CLI can list them
without importing Beam (or PyGithub)."""

from __future__ import annotations

import dataclasses
from dataclasses import field
from pathlib import Path
from typing import TYPE_CHECKING

from smelter.transforms.adapters.git import FROM_GIT_SECTION, GitConfig
from smelter.transforms.cache import cache_dir
from smelter.transforms.dates import utc_iso
from smelter.transforms.mine.config import FROM_FILTERS_SECTION, FiltersConfig
from smelter.transforms.testpaths import FROM_PATHS_SECTION, PathsConfig
from smelter.transforms.util import stable_hash

if TYPE_CHECKING:
    from smelter.transforms.adapters.github_http import RetryPolicy

DEFAULT_BOTS = (
    "dependabot[bot]", "dependabot-preview[bot]", "renovate[bot]", "pre-commit-ci[bot]",
    "github-actions[bot]", "allcontributors[bot]", "greenkeeper[bot]", "pyup-bot",
)  # fmt: skip
OUTCOME_FORMAT = 1


@dataclasses.dataclass(frozen=True)
class GitHubConfig:
    """How PRs are mined from GitHub; every field is a ``--flag`` and a ``[github]`` TOML key."""

    github_repos: tuple[str, ...] = field(
        default=(),
        metadata={"help": "owner/name repositories to mine (CLI: --github)", "cli": False},
    )
    github_search_query: str | None = field(
        default=None,
        metadata={"help": "GitHub repository search, e.g. 'language:python stars:>500' "
                          "(CLI: --github-query)", "cli": False},
    )  # fmt: skip
    github_search_max_repos: int = field(
        default=10,
        metadata={"min": 1, "max": 1000, "help": "how many repositories a search query may add"},
    )
    github_since: str | None = field(
        default=None, metadata={"help": "only PRs merged at or after this ISO date/time (UTC)"}
    )
    github_until: str | None = field(
        default=None, metadata={"help": "only PRs merged before this ISO date/time (UTC)"}
    )
    github_since_last_run: bool = field(
        default=False,
        metadata={"help": "only PRs updated since the last completed run of each repository"},
    )
    github_require_linked_issue: bool = field(
        default=True,
        metadata={"help": "reject PRs that close no issue (closing keywords in title, body, "
                          "commit messages)"},
    )  # fmt: skip
    github_exclude_bots: bool = field(
        default=True, metadata={"help": "reject PRs opened by bot accounts"}
    )
    github_bot_logins: tuple[str, ...] = field(
        default=DEFAULT_BOTS,
        metadata={"help": "logins treated as bots besides accounts of type Bot and '*[bot]'"},
    )
    github_license_allowlist: tuple[str, ...] = field(
        default=(),
        metadata={"help": "SPDX ids a repository's license must be one of (empty: any)"},
    )
    github_max_prs_per_repo: int | None = field(
        default=None, metadata={"min": 1, "help": "stop after this many listed PRs per repository"}
    )
    github_fetch_pr_comments: bool = field(
        default=True, metadata={"help": "fetch the PR's conversation comments (1 request/PR)"}
    )
    github_base_url: str = field(
        default="https://api.github.com",
        metadata={"help": "GitHub REST API root (GitHub Enterprise: https://HOST/api/v3)"},
    )
    github_token_env: str = field(
        default="GITHUB_TOKEN",
        metadata={"help": "environment variable holding the token(s), comma-separated"},
    )
    github_cache_dir: str | None = field(
        default=None,
        metadata={"help": "local folder for the response cache, per-PR outcomes and resume state "
                          "(default: ~/.cache/smelter/github)"},
    )  # fmt: skip
    github_per_page: int = field(
        default=100,
        metadata={
            "min": 1,
            "max": 100,
            "help": "items per page of list requests (GitHub's max is 100)",
        },
    )
    github_max_wait_seconds: float | None = field(
        default=None,
        metadata={
            "min": 0,
            "help": "longest rate-limit wait accepted before stopping (default: no cap)",
        },
    )
    github_retry_attempts: int = field(
        default=6,
        metadata={
            "min": 1,
            "max": 100,
            "help": "attempts per request on 5xx and connection errors",
        },
    )
    github_backoff_seconds: float = field(
        default=1.0, metadata={"min": 0, "help": "first retry delay on 5xx; doubles per attempt"}
    )
    github_secondary_wait_seconds: float = field(
        default=60.0,
        metadata={"min": 0, "help": "wait after a secondary rate limit that gives no Retry-After"},
    )
    github_cache_max_age_seconds: float = field(
        default=0.0,
        metadata={"help": "serve cached responses younger than this without asking GitHub "
                          "(0: always revalidate; a 304 costs no quota)", "min": 0},
    )  # fmt: skip
    github_seconds_between_requests: float = field(
        default=0.0, metadata={"min": 0, "help": "minimum pause between API requests"}
    )
    github_request_timeout_seconds: int = field(
        default=30, metadata={"min": 1, "help": "timeout of one HTTP request"}
    )
    filters: FiltersConfig = field(default=FiltersConfig(), metadata=FROM_FILTERS_SECTION)
    git: GitConfig = field(default=GitConfig(), metadata=FROM_GIT_SECTION)
    test_paths: PathsConfig = field(default=PathsConfig(), metadata=FROM_PATHS_SECTION)

    def __post_init__(self) -> None:
        # Bad values fail here, once, as a one-line config error, not per record in a worker.
        for name in ("github_since", "github_until"):
            value = getattr(self, name)
            if value is not None:
                try:
                    utc_iso(value)
                except ValueError:
                    raise ValueError(f"{name}: not an ISO date or date-time: {value!r}") from None
        if not 1 <= self.github_per_page <= 100:
            raise ValueError(f"github_per_page must be 1..100, got {self.github_per_page}")
        for repo in self.github_repos:
            if repo.count("/") != 1 or not all(repo.split("/")):
                raise ValueError(f"github_repos: not OWNER/NAME: {repo!r}")
        if not self.github_base_url.startswith(("http://", "https://")):
            raise ValueError(f"github_base_url must be an http(s) URL: {self.github_base_url!r}")

    @property
    def cache_root(self) -> Path:
        return Path(self.github_cache_dir) if self.github_cache_dir else cache_dir("github")

    def outcome_fingerprint(self) -> str:
        """Hash of the fields that change what a PR's outcome is (not how it is fetched)."""
        keep = (
            "github_since", "github_until", "github_require_linked_issue", "github_exclude_bots",
            "github_bot_logins", "github_fetch_pr_comments", "test_paths",
        )  # fmt: skip
        # The [filters] values under the names they had in [github]: the same settings give the
        # same fingerprint, so outcomes stored before the move stay valid (no re-mining).
        moved = {
            "github_require_tests_and_code": self.filters.require_tests_and_code,
            "github_max_changed_files": self.filters.max_files,
            "github_max_changed_lines": self.filters.max_changed_lines,
        }
        return stable_hash(OUTCOME_FORMAT, {k: getattr(self, k) for k in keep} | moved)

    def retry_policy(self) -> RetryPolicy:
        from smelter.transforms.adapters.github_http import (
            RetryPolicy,  # PyGithub: only when mining
        )

        return RetryPolicy(
            max_attempts=self.github_retry_attempts,
            backoff_seconds=self.github_backoff_seconds,
            secondary_wait_seconds=self.github_secondary_wait_seconds,
            max_wait_seconds=self.github_max_wait_seconds,
            cache_max_age_seconds=self.github_cache_max_age_seconds,
            request_timeout_seconds=self.github_request_timeout_seconds,
        )
