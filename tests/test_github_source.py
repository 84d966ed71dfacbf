"""GitHub mining end to end: PyGithub -> the REST stand-in (127.0.0.1) + a local mirror of the
demo repository. Nothing is mocked: real HTTP, real git, the real Beam pipeline."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import apache_beam as beam
import pytest
from apache_beam.testing.util import assert_that, equal_to

from smelter.pipeline.demo.prs import DEMO_PRS, REPO_NAME
from smelter.schemas import PullRequest, Reason, Rejection
from smelter.transforms.adapters.git import GitConfig
from smelter.transforms.mine.github_config import GitHubConfig
from smelter.transforms.mine.github_source import (
    GitHubSource,
    MineGitHub,
    hints_before,
    hints_text,
    is_bot,
    issue_refs,
    license_allowed,
)
from tests.fixtures.github_standin import (
    BOT_PR,
    HINT_BODY,
    LATE_BODY,
    UNMERGED_PR,
    FakeComment,
    Faults,
    GitHubStandin,
    issue_texts,
    standin_from_demo,
)

TOKEN = "ghp_smelterStandinSecret0123456789"


def _config(standin: GitHubStandin, tmp: Path, **kw: Any) -> GitHubConfig:
    kw.setdefault("github_require_linked_issue", False)
    return GitHubConfig(
        github_base_url=standin.base_url,
        github_cache_dir=str(tmp / "gh-cache"),
        git=GitConfig(mirror_dir=str(tmp / "mirrors")),
        github_backoff_seconds=0.05,
        **kw,
    )


def _mine(
    config: GitHubConfig, repo: str = REPO_NAME, env: dict[str, str] | None = None
) -> tuple[list[PullRequest | Rejection], GitHubSource]:
    lines: list[str] = []
    source = GitHubSource(
        config,
        environ={"GITHUB_TOKEN": TOKEN} if env is None else env,
        countdown=lambda left, why: lines.append(why),
        report=lines.append,
    )
    with source:
        out = list(source.mine_repo(repo))
    source.lines = lines  # type: ignore[attr-defined]
    return out, source


def _by_number(outcomes: list[PullRequest | Rejection]) -> dict[int, PullRequest | Rejection]:
    out: dict[int, PullRequest | Rejection] = {}
    for o in outcomes:
        n = o.number if isinstance(o, PullRequest) else int(o.instance_id.rsplit("-", 1)[1])
        assert n not in out, f"duplicate outcome for #{n}"
        out[n] = o
    return out


# --------------------------------------------------------------------------- pure parts


def test_issue_refs_read_title_body_and_commits_once_each() -> None:
    refs = issue_refs(
        "acme/w", "Fix crash (closes #1)", "Fixes #2\n<!-- fixes #9 -->",
        ["resolve #2", "Closes other/lib#4"],
    )  # fmt: skip
    assert [(r.repo, r.number) for r in refs] == [
        ("acme/w", 1), ("acme/w", 2), ("other/lib", 4)
    ]  # fmt: skip


def test_hints_are_comments_before_the_first_commit() -> None:
    comments = [
        FakeComment("a", "2024-01-01T00:00:00Z", "early"),
        FakeComment("b", "2024-01-03T00:00:00Z", "late"),
    ]
    from smelter.schemas import Comment, LinkedIssue

    cs = [Comment(author=c.author, created_at=c.created_at, body=c.body) for c in comments]
    assert [c.body for c in hints_before(cs, "2024-01-02T00:00:00+00:00")] == ["early"]
    issue = LinkedIssue(repo="a/b", number=1, comments=cs)
    assert hints_text([issue], "2024-01-02T00:00:00Z") == "early"


def test_bot_and_license_predicates() -> None:
    assert is_bot("dependabot[bot]", "Bot", ())
    assert is_bot("renovate-helper", "User", ("renovate-helper",))
    assert not is_bot("alice", "User", ("dependabot[bot]",))
    assert license_allowed("MIT", ())
    assert license_allowed("mit", ("MIT", "Apache-2.0"))
    assert not license_allowed(None, ("MIT",))


# --------------------------------------------------------------------------- mining


def test_demo_prs_meet_their_expected_mine_fate(demo_github: GitHubStandin, tmp_path) -> None:
    outcomes, source = _mine(_config(demo_github, tmp_path))
    got = _by_number(outcomes)
    assert set(got) == {p.number for p in DEMO_PRS} | {UNMERGED_PR, BOT_PR}
    for pr in DEMO_PRS:
        o = got[pr.number]
        if pr.mine is None:
            assert isinstance(o, PullRequest), (pr.number, o)
            assert o.source == "github" and o.instance_id == pr.instance_id
            assert set(pr.code_files) | set(pr.test_files) <= set(o.changed_files)
        else:
            assert isinstance(o, Rejection) and o.reason == pr.mine, (pr.number, o)
    assert got[UNMERGED_PR].reason == Reason.NOT_MERGED  # type: ignore[union-attr]
    assert got[BOT_PR].reason == Reason.BOT_AUTHOR  # type: ignore[union-attr]
    assert any("PRs listed" in line for line in source.lines)  # type: ignore[attr-defined]


def test_github_only_fields(demo_github: GitHubStandin, tmp_path: Path) -> None:
    got = _by_number(_mine(_config(demo_github, tmp_path))[0])
    pr = got[11]
    assert isinstance(pr, PullRequest)
    assert pr.author == "alice" and pr.author_association == "CONTRIBUTOR"
    assert pr.labels == ["bug"]
    assert [c.body for c in pr.comments] == ["Thanks, merged!"]
    assert pr.merge_style == "merge" and pr.head_commit is not None
    assert pr.first_commit_at is not None and pr.first_commit_at <= pr.merged_at


def test_problem_statements_and_hints_come_from_the_right_issues(
    demo_github: GitHubStandin, tmp_path: Path
) -> None:
    from smelter.transforms.snapshot.snapshot import hints_text as snapshot_hints
    from smelter.transforms.snapshot.snapshot import problem_statement

    pr = _by_number(_mine(_config(demo_github, tmp_path))[0])[23]
    assert isinstance(pr, PullRequest)
    refs = [(i.repo, i.number) for i in pr.linked_issues]
    assert refs == [(REPO_NAME, 7), (REPO_NAME, 8), ("other-org/mathlib", 2)]
    for issue in pr.linked_issues:
        assert (issue.title, issue.body) == issue_texts(issue.repo, issue.number)
        assert len(issue.comments) == 2
    statement = problem_statement(pr)
    for repo, number in refs:
        assert issue_texts(repo, number)[0] in statement
    hints = snapshot_hints(pr)
    assert hints == hints_text(pr.linked_issues, pr.first_commit_at).replace("\n", "\n\n")
    for _, number in refs:
        assert HINT_BODY.format(n=number, where="core.py") in hints
    assert LATE_BODY.format(n=23) not in hints


def test_require_linked_issue(demo_github: GitHubStandin, tmp_path: Path) -> None:
    got = _by_number(_mine(_config(demo_github, tmp_path, github_require_linked_issue=True))[0])
    for pr in DEMO_PRS:
        if pr.mine is not None:
            continue
        if pr.linked_issues:
            assert isinstance(got[pr.number], PullRequest), pr.number
        else:
            assert got[pr.number].reason == Reason.NO_LINKED_ISSUE, pr.number  # type: ignore


def test_warm_rerun_costs_no_quota(demo_github: GitHubStandin, tmp_path: Path) -> None:
    cold, _ = _mine(_config(demo_github, tmp_path))
    assert len(demo_github.non_304()) > 20
    demo_github.reset_log()
    warm, source = _mine(_config(demo_github, tmp_path))
    assert warm == cold
    assert demo_github.non_304() == []
    assert source.transport is not None and source.transport.stats.sent == 0


def test_changed_filters_recompute_from_304s(demo_github: GitHubStandin, tmp_path) -> None:
    _mine(_config(demo_github, tmp_path))
    demo_github.reset_log()
    strict, _ = _mine(_config(demo_github, tmp_path, github_require_linked_issue=True))
    assert demo_github.non_304() == []  # new outcomes, but every response revalidated
    assert demo_github.count(status=304) > 5
    assert any(isinstance(o, Rejection) and o.reason == Reason.NO_LINKED_ISSUE for o in strict)


def test_interrupted_run_resumes_without_duplicates(
    demo_github: GitHubStandin, tmp_path: Path
) -> None:
    config = _config(demo_github, tmp_path)
    with GitHubSource(config, environ={"GITHUB_TOKEN": TOKEN}, report=lambda s: None) as src:
        it = src.mine_repo(REPO_NAME)
        first = [next(it) for _ in range(6)]
        it.close()  # killed half-way: no watermark, but 6 outcomes on disk
    done = {o.instance_id for o in first}
    demo_github.reset_log()
    resumed, _ = _mine(dataclasses.replace(config, github_since_last_run=True))
    got = _by_number(resumed)  # asserts no duplicates
    assert set(got) == {p.number for p in DEMO_PRS} | {UNMERGED_PR, BOT_PR}
    # Finished PRs cost nothing again: none of their own endpoints was requested.
    numbers = {int(i.rsplit("-", 1)[1]) for i in done}
    again = [
        r.path
        for r in demo_github.log
        if any(f"/pulls/{n}/" in r.path or r.path.endswith(f"/pulls/{n}") for n in numbers)
    ]
    assert again == []


def test_since_last_run_only_mines_updated_prs(demo_github: GitHubStandin, tmp_path) -> None:
    config = _config(demo_github, tmp_path, github_since_last_run=True)
    _mine(config)
    assert _mine(config)[0] == []  # nothing changed
    pull = demo_github.repos[REPO_NAME].pull(19)
    assert pull is not None
    pull.updated_at = "2030-01-01T00:00:00Z"  # someone commented on #19
    demo_github.reset_log()
    outcomes, _ = _mine(config)
    assert [o.instance_id for o in outcomes] == [f"{REPO_NAME.replace('/', '__')}-19"]


@pytest.mark.slow  # a real subprocess run: seconds (make unit skips it)
def test_quota_secondary_limit_and_502_during_mining(
    demo_repo_session: Any, github_standin_factory: Any, tmp_path: Path
) -> None:
    clean = github_standin_factory(standin_from_demo(demo_repo_session))
    expected, _ = _mine(_config(clean, tmp_path / "a"))
    faulty = github_standin_factory(
        standin_from_demo(demo_repo_session),
        faults=Faults(quota_exhausted_at=5, secondary_limit_at=9, bad_gateway_at=14),
    )
    got, source = _mine(_config(faulty, tmp_path / "b"))
    assert [o.model_dump(exclude={"repo_url"}) for o in got] == [
        o.model_dump(exclude={"repo_url"}) for o in expected
    ]
    stats = source.transport.stats  # type: ignore[union-attr]
    assert (stats.quota_waits, stats.secondary_waits, stats.retried_5xx) == (1, 1, 1)
    assert faulty.count(status=403) == 2 and faulty.count(status=502) == 1
    assert any("quota spent" in line for line in source.lines)  # type: ignore[attr-defined]


def test_token_never_in_outputs_caches_or_logs(
    demo_github: GitHubStandin, tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys
) -> None:
    caplog.set_level(logging.DEBUG)
    outcomes, _ = _mine(_config(demo_github, tmp_path))
    out = tmp_path / "pull_requests.jsonl"
    out.write_text("".join(o.to_json() + "\n" for o in outcomes))
    assert {r.token for r in demo_github.log} == {TOKEN}  # it was used on the wire
    for path in tmp_path.rglob("*"):
        if path.is_file() and "/objects/" not in str(path):
            assert TOKEN.encode() not in path.read_bytes(), path
    assert TOKEN not in caplog.text
    captured = capsys.readouterr()
    assert TOKEN not in captured.out and TOKEN not in captured.err


def test_no_token_warns_and_still_works(
    demo_github: GitHubStandin, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    outcomes, _ = _mine(_config(demo_github, tmp_path), env={})
    assert "60 requests an hour" in caplog.text
    assert any(isinstance(o, PullRequest) for o in outcomes)
    assert {r.token for r in demo_github.log} == {""}


def test_unknown_repo_and_license_allowlist(demo_github: GitHubStandin, tmp_path) -> None:
    missing, _ = _mine(_config(demo_github, tmp_path), repo="nobody/nothing")
    assert [(o.instance_id, o.reason) for o in missing] == [  # type: ignore[union-attr]
        ("nobody__nothing", Reason.REPO_UNAVAILABLE)
    ]
    denied, _ = _mine(_config(demo_github, tmp_path, github_license_allowlist=("Apache-2.0",)))
    assert [o.reason for o in denied] == [Reason.LICENSE_NOT_ALLOWED]  # type: ignore[union-attr]


def test_search_query_finds_repositories(demo_github: GitHubStandin, tmp_path: Path) -> None:
    with GitHubSource(_config(demo_github, tmp_path), environ={}) as src:
        assert src.search_repos("language:python stars:>10") == [REPO_NAME]
        assert src.search_repos("org:other-org") == ["other-org/mathlib"]


# --------------------------------------------------------------------------- Beam


def test_beam_transform_yields_records_and_rejects(
    demo_github: GitHubStandin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GITHUB_TOKEN", TOKEN)
    config = _config(demo_github, tmp_path, github_search_query="calc")
    expected_ok = sorted(p.instance_id for p in DEMO_PRS if p.mine is None)
    with beam.Pipeline() as p:
        prs, rejects = p | MineGitHub(config, cache_root=str(tmp_path / "stage-cache"))
        assert_that(prs | beam.Map(lambda r: r.instance_id), equal_to(expected_ok),
                    label="prs")  # fmt: skip
        n_rejects = len(DEMO_PRS) - len(expected_ok) + 2
        assert_that(rejects | beam.combiners.Count.Globally(), equal_to([n_rejects]),
                    label="rejects")  # fmt: skip


def test_github_mine_matches_git_mine(demo_github: GitHubStandin, demo_repo_session, tmp_path):
    """Same PRs, same candidates, whichever source mined them (problem text aside)."""
    from smelter.transforms.mine.config import MineConfig
    from smelter.transforms.mine.git_source import MineGitFn, RepoSpec
    from smelter.transforms.snapshot.config import SnapshotConfig
    from smelter.transforms.snapshot.snapshot import SnapshotFn

    git_fn = MineGitFn(MineConfig(git=GitConfig(mirror_dir=str(tmp_path / "mirrors"))))
    git_fn.setup()
    git_out = list(git_fn.process(RepoSpec.from_url(str(demo_repo_session.path), REPO_NAME)))
    gh_out, _ = _mine(_config(demo_github, tmp_path))
    git_prs = {o.number: o for o in git_out if isinstance(o, PullRequest)}
    gh_prs = {o.number: o for o in gh_out if isinstance(o, PullRequest)}
    assert set(git_prs) == set(gh_prs)
    git_rej = {o.instance_id: o.reason for o in git_out if isinstance(o, Rejection)}
    gh_rej = {o.instance_id: o.reason for o in gh_out if isinstance(o, Rejection)}
    assert {k: v for k, v in gh_rej.items() if k in git_rej} == git_rej

    same = ("base_commit", "head_commit", "merge_commit", "merge_style", "title", "body",
            "created_at", "merged_at", "changed_files", "lines_added", "lines_deleted", "diff",
            "repo", "repo_url", "instance_id", "first_commit_at")  # fmt: skip
    for n, g in git_prs.items():
        h = gh_prs[n]
        assert {k: getattr(h, k) for k in same} == {k: getattr(g, k) for k in same}, n
        assert {(i.repo, i.number) for i in g.linked_issues} <= {
            (i.repo, i.number) for i in h.linked_issues
        }

    snap = SnapshotFn(SnapshotConfig(git=GitConfig(mirror_dir=str(tmp_path / "mirrors"))))
    snap.setup()
    text_fields = {"problem_statement", "hints_text", "linked_issues", "source"}
    for n in git_prs:
        (a,) = list(snap.process(git_prs[n]))
        (b,) = list(snap.process(gh_prs[n]))
        assert type(a) is type(b), n
        if hasattr(a, "patch"):
            assert a.model_dump(exclude=text_fields) == b.model_dump(exclude=text_fields), n


def test_cli_mine_github_end_to_end(
    demo_github: GitHubStandin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from smelter.pipeline.cli import main

    monkeypatch.setenv("GITHUB_TOKEN", TOKEN)
    monkeypatch.setenv("SMELTER_MIRROR_DIR", str(tmp_path / "mirrors"))
    out = tmp_path / "out"
    code = main([
        "mine", "--github", REPO_NAME, "--out", str(out), "--no-progress",
        "--github-base-url", demo_github.base_url, "--github-cache-dir", str(tmp_path / "gh"),
        "--no-github-require-linked-issue", "--direct_running_mode=in_memory",
    ])  # fmt: skip
    assert code == 0
    prs = [json.loads(line) for line in (out / "pull_requests.jsonl").read_text().splitlines()]
    assert sorted(p["number"] for p in prs) == sorted(p.number for p in DEMO_PRS if p.mine is None)
    assert all(p["source"] == "github" for p in prs)
    candidates = (out / "candidates.jsonl").read_text()
    assert issue_texts(REPO_NAME, 7)[0] in candidates
    for path in out.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path
    captured = capsys.readouterr()
    assert TOKEN not in captured.out + captured.err


# --------------------------------------------------------------------------- CLI flags


def test_cli_source_flags(tmp_path: Path) -> None:
    import argparse

    from smelter.pipeline.github_cli import add_github_arguments, normalize_repo_name

    repos_file = tmp_path / "repos.txt"
    repos_file.write_text("# mine these\npsf/requests\nhttps://github.com/pallets/click.git\n")
    parser = argparse.ArgumentParser()
    add_github_arguments(parser)
    args = parser.parse_args([
        "--github", "acme/widgets", "--github-repos-file", str(repos_file),
        "--github-query", "language:python", "--since-last-run",
    ])  # fmt: skip
    names = tuple(normalize_repo_name(n) for n in args.github)
    assert names == ("acme/widgets", "psf/requests", "pallets/click")
    assert args.github_query == "language:python"
    assert getattr(args, "github.github_since_last_run") is True


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--github", "not-a-repo"], "not a GitHub repository name"),
        (["--github", "a/b", "--github-since", "yesterday"], "not an ISO date"),
        (
            ["--github", "a/b", "--github-per-page", "500"],
            "--github-per-page 500: out of range, accepted: 1..100",
        ),
    ],
)
def test_cli_bad_github_input_is_one_line(argv: list[str], message: str, tmp_path, capsys):
    from smelter.pipeline.cli import main

    assert main(["mine", *argv, "--out", str(tmp_path / "out")]) != 0
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
