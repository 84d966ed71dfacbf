"""PRs merged with GitHub's "Rebase and merge" button, mined through the REST stand-in.

A rebase merge leaves no merge commit and no "(#N)" on main: the PR's commits are replayed one
by one on top of the base branch, and GitHub's ``merge_commit_sha`` is the commit the base branch
was updated to, i.e. the LAST replayed commit. The origin repository here is built the way GitHub
builds it (the PR's original commits on a branch, replayed with ``git cherry-pick``, which keeps
author, author date and message and writes a new committer date), so the miner sees what it
would see on github.com. Nothing is mocked: real git, real HTTP, PyGithub.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from smelter.schemas import Candidate, PullRequest, Reason, Rejection
from smelter.transforms.adapters.git import GitConfig
from smelter.transforms.mine.config import MineConfig
from smelter.transforms.mine.git_source import MineGitFn, RepoSpec
from smelter.transforms.mine.github_config import GitHubConfig
from smelter.transforms.mine.github_source import (
    CommitFacts,
    GitHubSource,
    rebase_base,
)
from smelter.transforms.snapshot.config import SnapshotConfig
from smelter.transforms.snapshot.snapshot import SnapshotFn
from tests._gitutil import Repo
from tests.fixtures.github_standin import FakeCommit, FakePull, FakeRepo, GitHubStandin, _commits

NAME = "acme/calc"
TOKEN = "ghp_smelterRebaseStandin0123456789"

CORE_V0 = "def add(a, b):\n    return a + b\n"
CORE_V1 = "def add(a, b):\n    return float(a) + float(b)\n"
CORE_V2 = (
    "def add(a, b):\n    total = float(a) + float(b)\n"
    "    return int(total) if total.is_integer() else total\n"
)
TESTS_V0 = "from calc.core import add\n\n\ndef test_add():\n    assert add(1, 2) == 3\n"
TESTS_V1 = TESTS_V0 + "\n\ndef test_add_strings():\n    assert add('1', '2') == 3\n"


@dataclasses.dataclass
class Landed:
    """One rebase-merged PR: its original commits and the commits replayed on main."""

    number: int
    originals: list[str]
    replayed: list[str]
    base: str  # the commit the first replayed one sits on


@dataclasses.dataclass
class Origin:
    repo: Repo
    prs: dict[int, Landed]
    squash_sha: str  # PR #7, squash-merged as "Add sub (#7)"
    squash_edited_sha: str  # PR #9, squash-merged with "(#9)" edited out of the message
    squash_edited_originals: list[str]
    unrelated_after_5: str


def _rebase_merge(
    repo: Repo, number: int, commits: list[tuple[str, dict[str, str]]], *, main_moves: bool
) -> Landed:
    """Commit ``commits`` on a PR branch, then replay them on main as GitHub's button does."""
    fork = repo.head()
    repo.git("checkout", "-q", "-b", f"pr-{number}", fork)
    originals = [repo.commit(message, files) for message, files in commits]
    repo.git("checkout", "-q", "main")
    if main_moves:  # the base branch moved on while the PR was open: a real rebase
        repo.commit(f"Docs for release {number}", {"README.md": f"calc, release {number}\n"})
    base = repo.head()
    repo.git("cherry-pick", *originals)
    replayed = repo.git("rev-list", "--reverse", f"{base}..main").split()
    repo.git("update-ref", f"refs/pull/{number}/head", originals[-1])
    repo.git("branch", "-q", "-D", f"pr-{number}")
    return Landed(number, originals, replayed, base)


def build_origin(path: Path) -> Origin:
    repo = Repo(path)
    repo.commit("Initial layout", {
        "pyproject.toml": "[project]\nname = 'calc'\nversion = '0.1'\n",
        "calc/__init__.py": "", "calc/core.py": CORE_V0, "tests/test_core.py": TESTS_V0,
    })  # fmt: skip
    prs = {}
    # PR #5: code, then test, then more code; main moved on meanwhile.
    prs[5] = _rebase_merge(repo, 5, [
        ("Make add accept strings", {"calc/core.py": CORE_V1}),
        ("Test string inputs", {"tests/test_core.py": TESTS_V1}),
        ("Keep integral sums as ints", {"calc/core.py": CORE_V2}),
    ], main_moves=True)  # fmt: skip
    unrelated = repo.commit("Bump version to 0.2", {
        "pyproject.toml": "[project]\nname = 'calc'\nversion = '0.2'\n"})  # fmt: skip
    # PR #6: one commit, rebase-merged: indistinguishable from a direct push in git history.
    prs[6] = _rebase_merge(repo, 6, [
        ("Add neg", {"calc/core.py": CORE_V2 + "\n\ndef neg(a):\n    return -a\n",
                     "tests/test_neg.py": "from calc.core import neg\n\n\ndef test_neg():\n"
                                          "    assert neg(2) == -2\n"}),
    ], main_moves=False)  # fmt: skip
    # PR #7: an ordinary squash merge, which both miners recognise.
    squash = repo.commit("Add sub (#7)", {
        "calc/sub.py": "def sub(a, b):\n    return a - b\n",
        "tests/test_sub.py": "from calc.sub import sub\n\n\ndef test_sub():\n"
                             "    assert sub(3, 2) == 1\n"})  # fmt: skip
    # PR #8: rebase merge whose last commit names an ISSUE the GitHub way, "(#2)".
    prs[8] = _rebase_merge(repo, 8, [
        ("Add mul", {"calc/mul.py": "def mul(a, b):\n    return a * b\n"}),
        ("Test mul", {"tests/test_mul.py": "from calc.mul import mul\n\n\ndef test_mul():\n"
                                           "    assert mul(2, 3) == 6\n"}),
        ("Handle mul by zero (#2)", {"calc/mul.py": "def mul(a, b):\n"
                                     "    return 0 if 0 in (a, b) else a * b\n"}),
    ], main_moves=True)  # fmt: skip
    # PR #9: three commits squash-merged, with "(#9)" edited out of the squash message.
    fork = repo.head()
    repo.git("checkout", "-q", "-b", "pr-9", fork)
    originals9 = [
        repo.commit("Start div", {"calc/div.py": "def div(a, b):\n    return a / b\n"}),
        repo.commit("Test div", {"tests/test_div.py": "from calc.div import div\n\n\n"
                                 "def test_div():\n    assert div(6, 3) == 2\n"}),
        repo.commit("div: floor", {"calc/div.py": "def div(a, b):\n    return a // b\n"}),
    ]  # fmt: skip
    repo.git("checkout", "-q", "main")
    repo.git("merge", "-q", "--squash", "pr-9")
    repo.git("commit", "-q", "-m", "Add integer division")
    squash_edited = repo.head()
    repo.git("update-ref", "refs/pull/9/head", originals9[-1])
    repo.git("branch", "-q", "-D", "pr-9")
    repo.commit("Changelog", {"CHANGELOG.md": "0.2: strings, neg, sub, mul, div\n"})
    return Origin(repo, prs, squash, squash_edited, originals9, unrelated)


def _iso(repo: Repo, sha: str, fmt: str) -> str:
    from smelter.transforms.dates import utc_iso

    return utc_iso(repo.git("log", "-1", f"--format={fmt}", sha)) or ""


def standin_repo(origin: Origin) -> FakeRepo:
    """GitHub's view: each PR's ORIGINAL commits (what /pulls/N/commits lists) and its sha."""
    repo, path = origin.repo, origin.repo.path
    fake = FakeRepo(NAME, str(path))

    def pull(number: int, title: str, merge_sha: str, originals: list[str], base_sha: str) -> None:
        commits = _commits(path, [f"{originals[0]}^..{originals[-1]}"])  # oldest first
        merged_at = _iso(repo, merge_sha, "%cI")
        fake.pulls.append(FakePull(
            number=number, title=title, body="", merge_commit_sha=merge_sha,
            head_sha=originals[-1], base_sha=base_sha, created_at=commits[0].author_date,
            updated_at=merged_at, merged_at=merged_at, closed_at=merged_at, commits=commits,
        ))  # fmt: skip

    for n, title in ((5, "Accept strings in add"), (6, "Add neg"), (8, "Add mul")):
        landed = origin.prs[n]
        # base.sha is the base branch tip when the PR was opened: NOT the rebase base for #5/#8.
        fork = repo.git("rev-parse", f"{landed.originals[0]}^")
        pull(n, title, landed.replayed[-1], landed.originals, fork)
    pull(7, "Add sub", origin.squash_sha, [origin.squash_sha],
         repo.git("rev-parse", f"{origin.squash_sha}^"))  # fmt: skip
    pull(9, "Add integer division", origin.squash_edited_sha, origin.squash_edited_originals,
         repo.git("rev-parse", f"{origin.squash_edited_originals[0]}^"))  # fmt: skip
    return fake


@pytest.fixture
def origin(tmp_path: Path) -> Origin:
    return build_origin(tmp_path / "origin")


@pytest.fixture
def standin(origin: Origin, github_standin_factory: Any) -> GitHubStandin:
    return github_standin_factory([standin_repo(origin)])


def _mine(standin: GitHubStandin, tmp: Path) -> dict[int, PullRequest | Rejection]:
    config = GitHubConfig(
        github_base_url=standin.base_url, github_cache_dir=str(tmp / "gh-cache"),
        git=GitConfig(mirror_dir=str(tmp / "mirrors")), github_require_linked_issue=False,
        github_backoff_seconds=0.05,
    )  # fmt: skip
    with GitHubSource(config, environ={"GITHUB_TOKEN": TOKEN}, report=lambda s: None) as src:
        out = list(src.mine_repo(NAME))
    by_number: dict[int, PullRequest | Rejection] = {}
    for o in out:
        n = o.number if isinstance(o, PullRequest) else int(o.instance_id.rsplit("-", 1)[1])
        by_number[n] = o
    return by_number


def _snapshot(pr: PullRequest, tmp: Path) -> Candidate:
    fn = SnapshotFn(SnapshotConfig(git=GitConfig(mirror_dir=str(tmp / "mirrors"))))
    fn.setup()
    (candidate,) = list(fn.process(pr))
    assert isinstance(candidate, Candidate), candidate
    return candidate


def _diff(repo: Repo, a: str, b: str, path: str) -> str:
    return repo.git("diff", "--full-index", a, b, "--", path)


# --------------------------------------------------------------------------- the base


def test_three_commit_rebase_merge_is_mined_with_all_its_commits(
    origin: Origin, standin: GitHubStandin, tmp_path: Path
) -> None:
    landed = origin.prs[5]
    pr = _mine(standin, tmp_path)[5]
    assert isinstance(pr, PullRequest), pr
    assert pr.merge_style == "rebase" and pr.merge_commit == landed.replayed[-1]
    assert pr.base_commit == landed.base  # the commit before the first replayed one
    assert pr.base_commit == origin.repo.git("rev-parse", f"{landed.replayed[0]}^")
    fork = standin.repos[NAME].pull(5).base_sha  # type: ignore[union-attr]
    assert pr.base_commit != fork  # base.sha (tip at PR time) is not the rebase base
    assert pr.commit_messages == [
        "Make add accept strings", "Test string inputs", "Keep integral sums as ints"
    ]  # fmt: skip

    cand = _snapshot(pr, tmp_path)
    assert cand.base_commit == landed.base
    assert cand.code_files == ["calc/core.py"] and cand.test_files == ["tests/test_core.py"]
    # Commit 1's float() line is gone again after commit 3; the patch is base -> last, whole.
    assert "-    return a + b" in cand.patch  # base side: before commit 1
    assert "+    return int(total) if total.is_integer() else total" in cand.patch  # commit 3
    assert "+    total = float(a) + float(b)" in cand.patch  # commit 3 on top of commit 1
    assert "+def test_add_strings():" in cand.test_patch  # commit 2
    # Exactly git's diff of the three commits together, not of the last one alone.
    repo = origin.repo
    assert cand.patch.strip() == _diff(repo, landed.base, landed.replayed[-1], "calc/core.py")
    only_last = _diff(repo, landed.replayed[1], landed.replayed[2], "calc/core.py")
    assert cand.patch.strip() != only_last
    assert cand.test_patch.strip() == _diff(
        repo, landed.base, landed.replayed[-1], "tests/test_core.py"
    )
    assert "README.md" not in pr.diff  # main's own commit before the PR stays out


def test_rebase_merge_costs_no_extra_request(
    origin: Origin, standin: GitHubStandin, tmp_path: Path
) -> None:
    """The commits list that finds the base is the one every mined PR fetches anyway."""
    _mine(standin, tmp_path)
    for n in (5, 7):  # rebase and squash: the same requests
        paths = [r.path.split("?")[0] for r in standin.log]
        own = sorted(p for p in paths if f"/pulls/{n}/" in p or f"/issues/{n}/" in p
                     or p.endswith(f"/pulls/{n}"))  # fmt: skip
        assert own == [f"/repos/{NAME}/issues/{n}/comments", f"/repos/{NAME}/pulls/{n}/commits"]
    assert not [r.path for r in standin.log if "/commits/" in r.path]  # no per-commit lookups


def test_one_commit_rebase_merge_is_its_own_diff(
    origin: Origin, standin: GitHubStandin, tmp_path: Path
) -> None:
    (sha,) = origin.prs[6].replayed
    pr = _mine(standin, tmp_path)[6]
    assert isinstance(pr, PullRequest), pr
    assert pr.merge_style == "rebase"
    assert pr.base_commit == origin.repo.git("rev-parse", f"{sha}^") == origin.prs[6].base
    assert sorted(pr.changed_files) == ["calc/core.py", "tests/test_neg.py"]


def test_unrelated_commit_right_after_a_rebase_merge_does_not_move_the_base(
    origin: Origin, standin: GitHubStandin, tmp_path: Path
) -> None:
    landed = origin.prs[5]
    assert origin.repo.git("rev-parse", f"{origin.unrelated_after_5}^") == landed.replayed[-1]
    pr = _mine(standin, tmp_path)[5]
    assert isinstance(pr, PullRequest)
    assert (pr.base_commit, pr.merge_commit) == (landed.base, landed.replayed[-1])
    assert "pyproject.toml" not in pr.changed_files  # the version bump after it stays out


def test_issue_number_in_a_replayed_commit_is_not_a_squash(
    origin: Origin, standin: GitHubStandin, tmp_path: Path
) -> None:
    """The last replayed commit reads "Handle mul by zero (#2)": #2 is an issue, not this PR."""
    landed = origin.prs[8]
    pr = _mine(standin, tmp_path)[8]
    assert isinstance(pr, PullRequest), pr
    assert pr.merge_style == "rebase" and pr.base_commit == landed.base
    assert sorted(pr.changed_files) == ["calc/mul.py", "tests/test_mul.py"]


def test_squash_merge_with_its_number_edited_out_is_rejected_not_misread(
    origin: Origin, standin: GitHubStandin, tmp_path: Path
) -> None:
    """One parent and no "(#9)" looks like a rebase merge of 3 commits, but the 3 commits
    before it are other PRs' work: reject rather than mine their diff as #9's."""
    got = _mine(standin, tmp_path)[9]
    assert isinstance(got, Rejection), got
    assert got.reason == Reason.DIFF_FAILED
    assert "not the PR's commits" in got.detail and "Add integer division" in got.detail


def test_squash_and_rebase_prs_side_by_side(
    origin: Origin, standin: GitHubStandin, tmp_path: Path
) -> None:
    got = _mine(standin, tmp_path)
    squash = got[7]
    assert isinstance(squash, PullRequest) and squash.merge_style == "squash"
    assert squash.base_commit == origin.repo.git("rev-parse", f"{origin.squash_sha}^")
    assert {n for n, o in got.items() if isinstance(o, PullRequest)} == {5, 6, 7, 8}


# --------------------------------------------------------------------------- bad counts


def _extra(n: int) -> list[FakeCommit]:
    return [FakeCommit(f"{i:040x}", f"Phantom commit {i}", parents=(f"{i + 1:040x}",))
            for i in range(n)]  # fmt: skip


@pytest.mark.parametrize(
    ("label", "commits", "detail"),
    [
        ("missing", lambda c: [], "GitHub lists no commits for this PR"),
        ("one more", lambda c: [*_extra(1), *c], "are not the PR's commits"),
        ("deeper than history", lambda c: [*_extra(40), *c], "first-parent history"),
        ("list truncated", lambda c: [*_extra(250 - len(c)), *c], "at most 250"),
    ],
)
def test_wrong_commit_counts_are_rejected_with_the_reason(
    origin: Origin, standin: GitHubStandin, tmp_path: Path, label: str, commits: Any,
    detail: str,
) -> None:  # fmt: skip
    pull = standin.repos[NAME].pull(5)
    assert pull is not None
    pull.commits = commits(pull.commits)
    got = _mine(standin, tmp_path)[5]
    assert isinstance(got, Rejection), (label, got)
    assert got.reason == Reason.DIFF_FAILED and detail in got.detail, got.detail


def test_merge_commits_in_the_pr_branch_are_not_counted() -> None:
    """A PR branch that merged main in: the rebase drops that merge, so must the count."""
    landed = [
        CommitFacts("c3", ("c2",), "Third", "2024-01-03T00:00:00Z"),
        CommitFacts("c2", ("c1",), "Second", "2024-01-02T00:00:00Z"),
        CommitFacts("c1", ("b",), "First", "2024-01-01T00:00:00Z"),
        CommitFacts("b", ("a",), "Main work", "2023-12-31T00:00:00Z"),
    ]
    pr = [
        CommitFacts("o1", ("f",), "First", "2024-01-01T00:00:00Z"),
        CommitFacts("m", ("o1", "x"), "Merge branch 'main' into feature", "2024-01-01T12:00:00Z"),
        CommitFacts("o2", ("m",), "Second", "2024-01-02T00:00:00Z"),
        CommitFacts("o3", ("o2",), "Third", "2024-01-03T00:00:00Z"),
    ]
    assert rebase_base(landed, pr, "c3") == "b"


# --------------------------------------------------------------------------- the git miner


def test_git_miner_on_the_same_history(
    origin: Origin, standin: GitHubStandin, tmp_path: Path
) -> None:
    """Git history alone has no PR number for a rebase merge: the git miner cannot see #5, #6
    and #8 (their commits are plain commits to it), reads the issue reference "(#2)" in #8's
    last commit as a squash of PR #2, and agrees with GitHub on the squash PR #7."""
    fn = MineGitFn(MineConfig(git=GitConfig(mirror_dir=str(tmp_path / "mirrors"))))
    fn.setup()
    raw = list(fn.process(RepoSpec.from_url(str(origin.repo.path), NAME)))
    out = [getattr(o, "value", o) for o in raw]  # rejects come out as TaggedOutput
    numbers = {
        o.number if isinstance(o, PullRequest) else int(o.instance_id.rsplit("-", 1)[1])
        for o in out
        if isinstance(o, PullRequest | Rejection)
    }
    assert 5 not in numbers and 6 not in numbers and 8 not in numbers and 9 not in numbers
    git_prs = {o.number: o for o in out if isinstance(o, PullRequest)}
    gh = _mine(standin, tmp_path)
    same = ("base_commit", "merge_commit", "merge_style", "changed_files", "diff")
    g7, h7 = git_prs[7], gh[7]
    assert isinstance(h7, PullRequest)
    assert {k: getattr(g7, k) for k in same} == {k: getattr(h7, k) for k in same}
    # The misread: "#2" is mined from git as a squash of only #8's last commit.
    mis = next(o for o in out if o.instance_id.endswith("-2"))
    assert isinstance(mis, Rejection) and mis.reason == Reason.NO_TEST_CHANGES
    # No replayed commit becomes a git-mined PR; the one GitHub calls #8's merge is the one
    # git misreads as "#2" (rejected only because that one commit has no test).
    replayed = {sha for landed in origin.prs.values() for sha in landed.replayed}
    assert not replayed & {p.merge_commit for p in git_prs.values()}
    h8 = gh[8]
    assert isinstance(h8, PullRequest) and h8.merge_commit == origin.prs[8].replayed[-1]
    assert origin.repo.git("log", "-1", "--format=%s", h8.merge_commit).endswith("(#2)")
