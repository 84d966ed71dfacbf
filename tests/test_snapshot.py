"""The snapshot stage on the demo repository and on hand-made pull requests."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from apache_beam.pvalue import TaggedOutput

from smelter.pipeline.demo.build import DemoRepo, create_demo_repo
from smelter.pipeline.demo.prs import DEMO_PRS, DEMO_PRS_BY_NUMBER
from smelter.schemas import Candidate, Comment, LinkedIssue, PullRequest, Reason
from smelter.transforms.adapters.git import GitConfig, GitRepo
from smelter.transforms.errors import Rejected
from smelter.transforms.mine.config import MineConfig
from smelter.transforms.mine.git_source import GitSource, RepoSpec
from smelter.transforms.snapshot.config import SnapshotConfig
from smelter.transforms.snapshot.snapshot import (
    SnapshotFn,
    hints_text,
    problem_statement,
)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoRepo:
    return create_demo_repo(tmp_path_factory.mktemp("demo") / "calc")


@pytest.fixture(scope="module")
def prs(demo: DemoRepo) -> dict[int, PullRequest]:
    source = GitSource(GitRepo(demo.path), RepoSpec(str(demo.path), demo.name), MineConfig())
    return {r.number: r for r in source if isinstance(r, PullRequest)}


@pytest.fixture
def snap(tmp_path: Path) -> SnapshotFn:
    fn = SnapshotFn(SnapshotConfig(git=GitConfig(mirror_dir=str(tmp_path / "mirrors"))))
    fn.setup()
    return fn


def test_demo_snapshot_fates(prs: dict[int, PullRequest], snap: SnapshotFn) -> None:
    assert set(prs) == {p.number for p in DEMO_PRS if p.mine is None}
    for n, pr in prs.items():
        expected = DEMO_PRS_BY_NUMBER[n]
        out = list(snap.process(pr))
        assert len(out) == 1
        if expected.snapshot is not None:
            assert isinstance(out[0], TaggedOutput) and out[0].value.reason is expected.snapshot
            continue
        c = out[0]
        assert isinstance(c, Candidate), (n, getattr(c, "value", c))
        assert c.instance_id == expected.instance_id and c.pull_number == n
        assert tuple(c.code_files) == expected.code_files, n
        assert tuple(sorted(c.test_files)) == tuple(sorted(expected.test_files)), n
        assert tuple(c.aux_files) == expected.aux_files, n
        assert ("GIT binary patch" in c.patch + c.test_patch) == expected.binary_patch, n
        assert c.base_commit == pr.base_commit and c.merge_commit == pr.merge_commit
        assert c.problem_statement.startswith(pr.title)
        assert c.hints_text == ""  # git sources know no issue comments


def test_binary_fixture_and_changelog_placement(prs: dict[int, PullRequest],
                                               snap: SnapshotFn) -> None:  # fmt: skip
    c20 = snap.run(prs[20])[0]
    assert "tests/data/values.bin" in c20.test_patch and "GIT binary patch" in c20.test_patch
    assert "GIT binary patch" not in c20.patch
    c11 = snap.run(prs[11])[0]
    assert "CHANGELOG.md" in c11.aux_patch and "CHANGELOG.md" not in c11.patch + c11.test_patch


def test_noisy_description_is_kept_raw(prs: dict[int, PullRequest], snap: SnapshotFn) -> None:
    c = snap.run(prs[19])[0]
    assert "<!--" in c.problem_statement and "- [x]" in c.problem_statement
    assert c.pr_body == prs[19].body
    assert [(i.repo, i.number) for i in c.linked_issues] == [("smelter-demo/calc", 6)]


def test_snapshot_tree_has_no_future(prs: dict[int, PullRequest], demo: DemoRepo,
                                     tmp_path: Path) -> None:  # fmt: skip
    repo = GitRepo(demo.path)
    pr = prs[24]
    tree = repo.export_snapshot(pr.base_commit, tmp_path / "t")
    log = subprocess.run(["git", "-C", str(tree), "log", "--all", "--format=%H"],
                         capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    assert log == [pr.base_commit]
    assert "def sub(a, b):\n    return b - a" in (tree / "src/calc/core.py").read_text()


def test_patch_that_does_not_apply(prs: dict[int, PullRequest], demo: DemoRepo,
                                   snap: SnapshotFn) -> None:  # fmt: skip
    initial = GitRepo(demo.path).text("rev-list", "--max-parents=0", "main").strip()
    moved = prs[24].model_copy(update={"base_commit": initial})
    with pytest.raises(Rejected) as e:
        snap.run(moved)
    assert e.value.reason is Reason.PATCH_DOES_NOT_APPLY
    assert "at " + initial[:12] in e.value.detail


def test_empty_and_missing(prs: dict[int, PullRequest], snap: SnapshotFn) -> None:
    c = snap.run(prs[12])[0]
    tests_only = prs[12].model_copy(update={"diff": c.test_patch})
    with pytest.raises(Rejected) as e:
        snap.run(tests_only)
    assert e.value.reason is Reason.EMPTY_PATCH and "code" in e.value.detail
    code_only = prs[12].model_copy(update={"diff": c.patch})
    with pytest.raises(Rejected) as e:
        snap.run(code_only)
    assert e.value.reason is Reason.EMPTY_PATCH and "test" in e.value.detail
    ghost = prs[12].model_copy(update={"merge_commit": "f" * 40})
    with pytest.raises(Rejected) as e:
        snap.run(ghost)
    assert e.value.reason is Reason.REPO_UNAVAILABLE
    garbage = prs[12].model_copy(update={"diff": "not a diff\n"})
    with pytest.raises(Rejected) as e:
        snap.run(garbage)
    assert e.value.reason is Reason.DIFF_FAILED


def test_diff_taken_from_mirror_when_absent(prs: dict[int, PullRequest], snap: SnapshotFn) -> None:
    """A GitHub-mined PR may come without a diff; the latin-1 one is re-taken as binary."""
    full = snap.run(prs[21])[0]
    bare = snap.run(prs[21].model_copy(update={"diff": ""}))[0]
    assert bare.patch == full.patch and bare.test_patch == full.test_patch
    assert "GIT binary patch" in bare.patch


def _pr(**kw: object) -> PullRequest:
    base = dict(instance_id="o__r-1", repo="o/r", repo_url="/x", number=1, source="github",
                title="Fix the thing", body="It was broken.", base_commit="a" * 40,
                merge_commit="b" * 40, created_at="2024-01-10T00:00:00Z",
                merged_at="2024-01-12T00:00:00Z",
                first_commit_at="2024-01-09T12:00:00Z")  # fmt: skip
    base.update(kw)
    return PullRequest.model_validate(base)


def test_problem_statement_prefers_issue_text() -> None:
    assert problem_statement(_pr()) == "Fix the thing\n\nIt was broken."
    known = LinkedIssue(repo="o/r", number=3, title="Crash on empty input", body="Traceback…")
    unknown = LinkedIssue(repo="o/r", number=4)
    assert problem_statement(_pr(linked_issues=[unknown])) == "Fix the thing\n\nIt was broken."
    assert problem_statement(_pr(linked_issues=[known, unknown])) == (
        "Crash on empty input\n\nTraceback…"
    )
    other = LinkedIssue(repo="x/y", number=1, title="Upstream", body="Same bug")
    assert problem_statement(_pr(linked_issues=[known, other])).endswith("Upstream\n\nSame bug")


def test_hints_are_comments_before_the_first_commit() -> None:
    issue = LinkedIssue(repo="o/r", number=3, title="t", comments=[
        Comment(author="a", created_at="2024-01-09T13:00:00Z", body="after: the fix is X"),
        Comment(author="b", created_at="2024-01-05T00:00:00Z", body="first hint"),
        Comment(author="c", created_at="2024-01-09T11:59:59+00:00", body="second hint"),
        Comment(author="d", created_at="2024-01-06T00:00:00Z", body="  "),
    ])  # fmt: skip
    assert hints_text(_pr(linked_issues=[issue])) == "first hint\n\nsecond hint"
    assert hints_text(_pr()) == ""
