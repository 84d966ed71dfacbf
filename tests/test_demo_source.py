"""The demo repository: deterministic, and its DEMO_PRS fates hold when the tests really run.

The validate column is checked here without Docker: each kept PR's snapshot is exported at its
base commit, the test patch applied, pytest run (JUnit XML) twice with SMELTER_ATTEMPT=0/1; then
the code patch applied and pytest run twice again. The validate stage's own tests check the same
table inside containers.
"""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from smelter.pipeline.demo.build import create_demo_repo
from smelter.pipeline.demo.prs import DEMO_PRS, DemoPR
from smelter.schemas import Candidate, Reason
from smelter.transforms.adapters.git import GitConfig, GitRepo
from smelter.transforms.mine.config import MineConfig
from smelter.transforms.mine.git_source import MineGitFn, RepoSpec
from smelter.transforms.snapshot.config import SnapshotConfig
from smelter.transforms.snapshot.snapshot import SnapshotFn


def test_demo_is_deterministic(tmp_path: Path) -> None:
    a = create_demo_repo(tmp_path / "a")
    b = create_demo_repo(tmp_path / "b")
    assert a.merge_commits == b.merge_commits
    assert GitRepo(a.path).rev_parse("release-0.1") == GitRepo(b.path).rev_parse("release-0.1")
    with pytest.raises(FileExistsError):
        create_demo_repo(tmp_path / "a")


def test_demo_table_covers_the_issue() -> None:
    assert len(DEMO_PRS) >= 12
    assert {p.style for p in DEMO_PRS} == {"merge", "squash"}
    reasons = {p.mine for p in DEMO_PRS} | {p.validate for p in DEMO_PRS}
    assert {Reason.NO_CODE_CHANGES, Reason.NO_TEST_CHANGES, Reason.PASSES_BEFORE,
            Reason.FAILS_AFTER, None} <= reasons  # fmt: skip
    assert sum(1 for p in DEMO_PRS if p.valid) >= 8
    assert any(p.flaky and p.fail_to_pass for p in DEMO_PRS)
    assert any(len(p.linked_issues) >= 2 for p in DEMO_PRS)
    for p in DEMO_PRS:
        if p.valid:
            assert p.fail_to_pass, p.number
        assert not set(p.fail_to_pass) & set(p.pass_to_pass), p.number


@pytest.fixture(scope="module")
def demo_candidates(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[GitRepo, dict[int, Candidate]]:
    root = tmp_path_factory.mktemp("demo")
    demo = create_demo_repo(root / "repo")
    mine = MineGitFn(MineConfig(git=GitConfig(mirror_dir=str(root / "mirrors"))))
    snap = SnapshotFn(SnapshotConfig(git=GitConfig(mirror_dir=str(root / "mirrors"))))
    snap.setup_stage()
    out: dict[int, Candidate] = {}
    for pr in mine.run(RepoSpec.from_url(str(demo.path), name=demo.name)):
        if hasattr(pr, "diff"):
            out[pr.number] = snap.run(pr)[0]
    return GitRepo(demo.path), out


def _junit(path: Path) -> dict[str, str]:
    statuses: dict[str, str] = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        module, _, cls = case.get("classname", "").rpartition(".")
        if cls[:1].isupper():  # tests.test_parse.TestErrors -> TestErrors
            file = module.replace(".", "/") + ".py"
            node = f"{file}::{cls}::{case.get('name')}"
        else:
            file = case.get("classname", "").replace(".", "/") + ".py"
            node = f"{file}::{case.get('name')}"
        kinds = {child.tag for child in case}
        statuses[node] = ("failed" if kinds & {"failure", "error"} else
                          "skipped" if "skipped" in kinds else "passed")  # fmt: skip
    return statuses


def _run_tests(tree: Path, files: list[str], attempt: int) -> dict[str, str]:
    report = tree / f".report-{attempt}.xml"
    env = {
        **os.environ,
        "SMELTER_ATTEMPT": str(attempt),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
    }  # third-party plugins only slow it down
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}",
         "-o", "junit_family=xunit1", *files],
        cwd=tree, env=env, capture_output=True, check=False, timeout=120,
    )  # fmt: skip
    statuses = _junit(report)
    report.unlink()
    return statuses


def _grade(before: list[dict[str, str]], after: list[dict[str, str]]) -> dict[str, object]:
    ids = sorted({t for run in before + after for t in run})
    flaky = [t for t in ids if len({r.get(t, "absent") for r in before}) > 1
             or len({r.get(t, "absent") for r in after}) > 1]  # fmt: skip
    stable = [t for t in ids if t not in flaky]
    f2p = [t for t in stable if before[0].get(t) != "passed" and after[0].get(t) == "passed"]
    p2p = [t for t in stable if before[0].get(t) == "passed" and after[0].get(t) == "passed"]
    p2f = [t for t in stable if before[0].get(t) == "passed" and after[0].get(t) != "passed"]
    all_pass_before = all(before[0].get(t) == "passed" for t in stable)
    reason = None
    if p2f:
        reason = Reason.PASS_TO_FAIL
    elif not f2p:
        reason = Reason.PASSES_BEFORE if all_pass_before else Reason.FAILS_AFTER
    return {"f2p": f2p, "p2p": p2p, "flaky": flaky, "reason": reason}


KEPT = [p for p in DEMO_PRS if p.kept_after_snapshot]


@pytest.mark.slow
@pytest.mark.parametrize("pr", KEPT, ids=[f"pr{p.number}" for p in KEPT])
def test_validate_column_holds_when_tests_run(
    pr: DemoPR, demo_candidates: tuple[GitRepo, dict[int, Candidate]], tmp_path: Path
) -> None:
    repo, candidates = demo_candidates
    c = candidates[pr.number]
    tree = repo.export_snapshot(c.base_commit, tmp_path / "tree")

    def apply(patch: str) -> None:
        subprocess.run(["git", "-C", str(tree), "apply", "-"], input=patch.encode(), check=True)

    files = sorted(f for f in c.test_files if f.endswith(".py"))
    apply(c.test_patch)
    before = [_run_tests(tree, files, a) for a in (0, 1)]
    apply(c.patch)
    after = [_run_tests(tree, files, a) for a in (0, 1)]
    got = _grade(before, after)
    assert got["reason"] == pr.validate
    assert got["flaky"] == sorted(pr.flaky)
    if pr.validate is None:
        assert got["f2p"] == sorted(pr.fail_to_pass)
        assert got["p2p"] == sorted(pr.pass_to_pass)
