"""The git miner on the demo repository and on small repositories built in tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest
from _gitutil import Repo
from apache_beam.pvalue import TaggedOutput

from smelter.pipeline.demo.build import DemoRepo, create_demo_repo
from smelter.pipeline.demo.prs import DEMO_PRS, DEMO_PRS_BY_NUMBER
from smelter.schemas import PullRequest, Reason, Rejection
from smelter.transforms.adapters.git import GitConfig, GitRepo
from smelter.transforms.dates import utc_iso
from smelter.transforms.mine.config import FiltersConfig, MineConfig
from smelter.transforms.mine.git_source import (
    GitSource,
    MineGitFn,
    RepoSpec,
    derive_repo_name,
    in_date_range,
    pr_commits,
)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoRepo:
    return create_demo_repo(tmp_path_factory.mktemp("demo") / "calc")


def mine(demo: DemoRepo, **cfg: object) -> tuple[dict[int, PullRequest], dict[int, Rejection]]:
    config = MineConfig(**cfg)  # type: ignore[arg-type]
    source = GitSource(GitRepo(demo.path), RepoSpec.from_url(str(demo.path), demo.name), config)
    prs: dict[int, PullRequest] = {}
    rejects: dict[int, Rejection] = {}
    for rec in source:
        n = int(rec.instance_id.rsplit("-", 1)[1])
        if isinstance(rec, PullRequest):
            prs[n] = rec
        else:
            rejects[n] = rec
    return prs, rejects


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("https://github.com/psf/requests.git", "psf/requests"),
        ("https://github.com/psf/requests/", "psf/requests"),
        ("git@github.com:pallets/click.git", "pallets/click"),
        ("ssh://git@gitlab.example/group/sub/proj.git", "sub/proj"),
        ("/srv/mirrors/owner/name.git", "owner/name"),
        ("calc", "local/calc"),
    ],
)
def test_derive_repo_name(url: str, name: str) -> None:
    assert derive_repo_name(url) == name
    assert RepoSpec(url).name == name
    assert RepoSpec(url, name="x/y").name == "x/y"


def test_dates() -> None:
    assert utc_iso("2024-03-01T12:00:00+02:00") == "2024-03-01T10:00:00Z"
    assert utc_iso(0) == "1970-01-01T00:00:00Z"
    assert in_date_range("2024-03-01T10:00:00Z", "2024-03-01", "2024-03-02")
    assert not in_date_range("2024-03-02T00:00:00Z", "2024-03-01", "2024-03-02")
    assert not in_date_range("2024-02-29T23:59:59Z", "2024-03-01", None)


def test_demo_mine_fates(demo: DemoRepo) -> None:
    prs, rejects = mine(demo)
    assert set(prs) == {p.number for p in DEMO_PRS if p.mine is None}
    assert {n: r.reason for n, r in rejects.items()} == {
        p.number: p.mine for p in DEMO_PRS if p.mine is not None
    }
    for n, pr in prs.items():
        expected = DEMO_PRS_BY_NUMBER[n]
        assert pr.merge_style == expected.style, n
        assert pr.title == expected.title, n
        assert pr.instance_id == expected.instance_id
        assert pr.merge_commit == demo.merge_commit(n)
        assert [(i.repo, i.number) for i in pr.linked_issues] == list(expected.linked_issues), n
        assert sorted(pr.changed_files) == sorted(
            expected.code_files + expected.test_files + expected.aux_files
        ), n
        assert pr.diff.startswith("diff --git ")
        assert pr.source == "git" and pr.repo == "smelter-demo/calc"
        assert pr.branch == "main"


def test_classification_by_parents(demo: DemoRepo) -> None:
    prs, _ = mine(demo)
    assert prs[24].merge_style == "squash" and prs[24].head_commit is None  # 1-parent "Merge …"
    assert prs[25].merge_style == "merge" and prs[25].head_commit  # 2-parent "… (#25)"
    repo = GitRepo(demo.path)
    assert prs[25].base_commit == repo.rev_parse(f"{demo.merge_commit(25)}^1")
    source = GitSource(repo, RepoSpec(str(demo.path), demo.name), MineConfig())
    list(source)
    # initial commit, CI commit and "Merge branch 'typo-fix'" are not PRs
    assert source.stats.not_prs == 3
    assert source.stats.prs_found == len(DEMO_PRS)


def test_dates_and_authors(demo: DemoRepo) -> None:
    prs, _ = mine(demo)
    # #13 was forked before #12 landed: created at its first commit, long before its merge.
    assert prs[13].created_at == "2024-03-01T17:00:00Z"
    assert prs[13].merged_at > prs[12].merged_at > prs[13].created_at
    assert prs[13].commit_messages == ["Add calc.stats with mean and median",
                                       "Test mean and median; document them"]  # fmt: skip
    assert prs[13].author == "Carol Chen"
    assert prs[12].created_at == prs[12].merged_at  # squash: its own author date
    assert prs[12].first_commit_at == prs[12].created_at
    assert prs[12].body.startswith("The tokenizer only skipped spaces")
    assert "Co-authored-by" not in prs[12].body


def test_latin1_diff_carried_as_binary_patch(demo: DemoRepo) -> None:
    prs, _ = mine(demo)
    section = prs[21].diff.split("diff --git a/tests/")[0]
    assert "GIT binary patch" in section and "src/calc/units.py" in section
    section.encode("ascii")
    assert "@@" in prs[21].diff  # the UTF-8 test file stays a readable text hunk
    GitRepo(demo.path).apply_check(prs[21].base_commit, prs[21].diff.encode())


def test_release_branches_deduplicated(demo: DemoRepo) -> None:
    prs, rejects = mine(demo, mine_release_branches=True)
    assert prs[11].branch == "main"
    assert rejects[11].reason is Reason.DUPLICATE and "release-0.1" in rejects[11].detail
    only_release, _ = mine(demo, mine_branches=("release-0.1",))
    assert set(only_release) == {11} and only_release[11].merge_style == "squash"


def test_filters(demo: DemoRepo) -> None:
    prs, rejects = mine(demo, mine_since="2024-03-06", mine_until="2024-03-08")
    assert set(prs) == {18, 19, 20, 21}
    assert rejects[11].reason is Reason.OUT_OF_DATE_RANGE
    assert rejects[25].reason is Reason.OUT_OF_DATE_RANGE
    prs, rejects = mine(demo, filters=FiltersConfig(max_files=2))
    assert rejects[11].reason is Reason.TOO_MANY_FILES and 20 in rejects
    prs, rejects = mine(demo, filters=FiltersConfig(max_changed_lines=8))
    assert rejects[13].reason is Reason.TOO_MANY_LINES and 24 in prs
    prs, rejects = mine(demo, filters=FiltersConfig(require_tests_and_code=False))
    assert {14, 15, 16} <= set(prs)
    prs, _ = mine(demo, mine_max_prs=3)
    assert set(prs) == {11, 12, 13}


def test_pr_commits_stop_at_mainline(tmp_path: Path) -> None:
    r = Repo(tmp_path / "r")
    r.commit("init", {"a.py": "1\n"})
    r.git("checkout", "-q", "-b", "feat")
    r.commit("feat 1", {"b.py": "1\n"})
    r.git("checkout", "-q", "main")
    r.commit("main moves (#1)", {"c.py": "1\n"})
    r.git("checkout", "-q", "feat")
    r.merge("main", "Merge branch 'main' into feat")  # the PR branch catches up
    r.commit("feat 2", {"b.py": "2\n"})
    r.git("checkout", "-q", "main")
    r.merge("feat", "Merge pull request #2 from ada/feat\n\nFeature")
    repo = GitRepo(r.path)
    log = repo.first_parent_log("main")
    mainline = {e.sha for e in log}
    commits = pr_commits(repo.commit_graph("main"), log[0], mainline)
    assert [c.subject for c in commits] == ["feat 1", "Merge branch 'main' into feat", "feat 2"]


def test_stage_shell_routes_rejections(demo: DemoRepo, tmp_path: Path) -> None:
    fn = MineGitFn(MineConfig(git=GitConfig(mirror_dir=str(tmp_path / "m"))))
    fn.setup()
    out = list(fn.process(RepoSpec(str(demo.path), demo.name)))
    main = [o for o in out if not isinstance(o, TaggedOutput)]
    rejected = [o.value for o in out if isinstance(o, TaggedOutput)]
    assert len(main) == sum(1 for p in DEMO_PRS if p.mine is None)
    assert {r.instance_id for r in rejected} == {p.instance_id for p in DEMO_PRS if p.mine}
    assert all(r.stage == "mine" for r in rejected)
    bad = list(fn.process(RepoSpec(str(tmp_path / "nowhere"), "x/nowhere")))
    assert len(bad) == 1 and bad[0].value.reason is Reason.REPO_UNAVAILABLE
    assert bad[0].value.instance_id == "x/nowhere"


def test_latin1_line_counts_survive_the_binary_retake(demo: DemoRepo) -> None:
    prs, _ = mine(demo)
    assert (prs[21].lines_added, prs[21].lines_deleted) == (5, 1)
