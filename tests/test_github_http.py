"""The HTTP layer under PyGithub against the stand-in: cache, 304s, rate limits, token pool."""

from __future__ import annotations

import io
import json
from pathlib import Path

import github
import pytest

from smelter.transforms.adapters.github_http import (
    CachedResponse,
    GitHubTransport,
    ResponseCache,
    RetryPolicy,
    TokenPool,
    TransportHandle,
    backoff_delay,
    install_connection_classes,
    parse_retry_after,
)
from smelter.transforms.errors import Fatal
from tests.fixtures.github_standin import FakePull, FakeRepo, Faults, GitHubStandin

TOKEN_A, TOKEN_B = "ghp_standinTokenAAAA1111", "ghp_standinTokenBBBB2222"


def _repo(n_pulls: int = 7) -> FakeRepo:
    pulls = [
        FakePull(
            number=i,
            title=f"PR {i}",
            body="",
            merge_commit_sha=f"{i:040x}",
            head_sha="b" * 40,
            base_sha="c" * 40,
            created_at="2024-01-01T00:00:00Z",
            updated_at=f"2024-02-{i:02d}T00:00:00Z",
            merged_at="2024-02-01T00:00:00Z",
            closed_at="2024-02-01T00:00:00Z",
        )
        for i in range(1, n_pulls + 1)
    ]
    return FakeRepo("acme/widgets", "/nonexistent", pulls=pulls)


def _client(
    standin: GitHubStandin, cache_dir: Path, tokens: list[str], **policy: float
) -> tuple[github.Github, GitHubTransport]:
    install_connection_classes()
    pool = TokenPool(tokens) if tokens else None
    stream = io.StringIO()
    transport = GitHubTransport(
        cache=ResponseCache(cache_dir, pool.secrets if pool else ()),
        tokens=pool,
        policy=RetryPolicy(backoff_seconds=0.05, **policy),  # type: ignore[arg-type]
        countdown=lambda left, why: stream.write(f"{why} {left:.0f}\n"),
    )
    transport.countdown_stream = stream  # type: ignore[attr-defined]
    gh = github.Github(
        base_url=standin.base_url, auth=pool, retry=TransportHandle(transport), per_page=3,
        seconds_between_requests=0,
    )  # fmt: skip
    return gh, transport


def _numbers(gh: github.Github) -> list[int]:
    repo = gh.get_repo("acme/widgets")
    return [p.number for p in repo.get_pulls(state="closed", sort="updated", direction="desc")]


def test_pagination_and_warm_cache_costs_no_quota(github_standin_factory, tmp_path: Path) -> None:
    standin = github_standin_factory([_repo()])
    gh, transport = _client(standin, tmp_path, [TOKEN_A])
    assert _numbers(gh) == [7, 6, 5, 4, 3, 2, 1]
    assert transport.stats.sent == 4  # repo + 3 pages of 3
    standin.reset_log()
    gh2, warm = _client(standin, tmp_path, [TOKEN_A])
    assert _numbers(gh2) == [7, 6, 5, 4, 3, 2, 1]
    assert standin.non_304() == []
    assert warm.stats.not_modified == 4 and warm.stats.sent == 0


def test_changed_resource_is_refetched(github_standin_factory, tmp_path: Path) -> None:
    repo = _repo(2)
    standin = github_standin_factory([repo])
    gh, _ = _client(standin, tmp_path, [TOKEN_A])
    assert gh.get_repo("acme/widgets").get_pull(1).title == "PR 1"
    repo.pulls[0].title = "PR 1, renamed"
    gh2, warm = _client(standin, tmp_path, [TOKEN_A])
    assert gh2.get_repo("acme/widgets").get_pull(1).title == "PR 1, renamed"
    assert warm.stats.sent == 1 and warm.stats.not_modified == 1  # pull changed, repo did not


def test_exhausted_quota_waits_for_reset(github_standin_factory, tmp_path: Path) -> None:
    standin = github_standin_factory([_repo()], faults=Faults(quota_exhausted_at=2))
    gh, transport = _client(standin, tmp_path, [TOKEN_A])
    assert _numbers(gh) == [7, 6, 5, 4, 3, 2, 1]
    assert transport.stats.quota_waits == 1
    assert 1.0 <= transport.stats.waited_seconds <= 6.0
    assert "quota spent" in transport.countdown_stream.getvalue()  # type: ignore[attr-defined]
    assert standin.count(status=403) == 1


def test_exhausted_quota_switches_token_instead_of_waiting(
    github_standin_factory, tmp_path: Path
) -> None:
    standin = github_standin_factory([_repo()], faults=Faults(quota_exhausted_at=2))
    gh, transport = _client(standin, tmp_path, [TOKEN_A, TOKEN_B])
    assert _numbers(gh) == [7, 6, 5, 4, 3, 2, 1]
    assert transport.stats.token_switches == 1 and transport.stats.quota_waits == 0
    used = {r.token for r in standin.log}
    assert used == {TOKEN_A, TOKEN_B}


def test_secondary_limit_and_502_are_retried(github_standin_factory, tmp_path: Path) -> None:
    standin = github_standin_factory(
        [_repo()], faults=Faults(secondary_limit_at=2, bad_gateway_at=4)
    )
    gh, transport = _client(standin, tmp_path, [TOKEN_A])
    assert _numbers(gh) == [7, 6, 5, 4, 3, 2, 1]
    assert transport.stats.secondary_waits == 1 and transport.stats.retried_5xx == 1
    assert standin.count(status=502) == 1 and standin.count(status=403) == 1


def test_persistent_5xx_surfaces_after_the_attempts(github_standin_factory, tmp_path) -> None:
    standin = github_standin_factory([_repo()])
    standin.repos.clear()  # every route 404s; make 5xx by scheduling faults at each request
    standin.faults = Faults(bad_gateway_at=1)
    gh, transport = _client(standin, tmp_path, [], max_attempts=1)
    with pytest.raises(github.GithubException) as e:
        gh.get_repo("acme/widgets")
    assert e.value.status == 502 and transport.stats.retried_5xx == 0


def test_wait_longer_than_cap_is_fatal(github_standin_factory, tmp_path: Path) -> None:
    standin = github_standin_factory(
        [_repo()], faults=Faults(quota_exhausted_at=1, quota_reset_after_seconds=120)
    )
    gh, _ = _client(standin, tmp_path, [TOKEN_A], max_wait_seconds=5)
    with pytest.raises(Fatal, match="more than the 5s allowed"):
        gh.get_repo("acme/widgets")


def test_token_never_reaches_the_cache(github_standin_factory, tmp_path: Path) -> None:
    standin = github_standin_factory([_repo()])
    gh, _ = _client(standin, tmp_path, [TOKEN_A])
    _numbers(gh)
    files = list(tmp_path.rglob("*.json"))
    assert files
    for f in files:
        text = f.read_text()
        assert TOKEN_A not in text and "authorization" not in text.lower()
    assert all(r.token == TOKEN_A for r in standin.log)  # the token was really sent


def test_cache_refuses_an_entry_that_echoes_a_secret(tmp_path: Path) -> None:
    cache = ResponseCache(tmp_path, (TOKEN_A,))
    echo = CachedResponse("http://x/y", 200, {}, json.dumps({"t": TOKEN_A}), 0.0)
    assert cache.put(ResponseCache.key("http://x/y"), echo) is False
    assert list(tmp_path.rglob("*.json")) == []


def test_token_pool_rotates_and_hides_tokens() -> None:
    pool = TokenPool.from_env(f" {TOKEN_A} , {TOKEN_B},")
    assert pool is not None and len(pool) == 2
    assert TOKEN_A not in repr(pool)
    assert pool.token == TOKEN_A
    assert pool.rest(until=100.0, now=50.0) is None and pool.token == TOKEN_B
    assert pool.rest(until=90.0, now=50.0) == 90.0  # both resting: the earliest comes back
    assert pool.token == TOKEN_B
    assert TokenPool.from_env("") is None and TokenPool.from_env(None) is None


def test_retry_helpers() -> None:
    assert parse_retry_after("3") == 3.0 and parse_retry_after("soon") is None
    policy = RetryPolicy(backoff_seconds=1.0, backoff_max_seconds=5.0)
    assert [backoff_delay(i, policy) for i in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 5.0]


def test_plain_pygithub_clients_are_untouched(github_standin_factory) -> None:
    standin = github_standin_factory([_repo()])
    install_connection_classes()
    plain = github.Github(base_url=standin.base_url, seconds_between_requests=0)
    assert plain.get_repo("acme/widgets").full_name == "acme/widgets"
    assert standin.log[-1].status == 200


def test_rate_resource_buckets() -> None:
    from smelter.transforms.adapters.github_http import rate_resource

    assert rate_resource("https://api.github.com/search/repositories?q=x") == "search"
    assert rate_resource("https://ghe.example/api/v3/search/issues?q=x") == "search"
    assert rate_resource("https://api.github.com/repos/a/b/pulls") == "core"
