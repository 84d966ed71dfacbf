"""Path classification: components and stems, never substrings."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import pytest
from _gitutil import Repo
from apache_beam.pvalue import TaggedOutput

from smelter.pipeline.options import build_stage_configs, load_config_classes
from smelter.schemas import Candidate, PullRequest, Reason, Rejection
from smelter.transforms.mine.git_source import MineGitFn, RepoSpec
from smelter.transforms.snapshot.snapshot import SnapshotFn
from smelter.transforms.stage import StageFn
from smelter.transforms.testpaths import PathKind, PathRules, classify_path, is_test_path


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("tests/test_calc.py", PathKind.TEST),
        ("test/unit/helpers.py", PathKind.TEST),
        ("testing/python/integration.py", PathKind.TEST),
        ("src/pkg/tests/data/fixture.bin", PathKind.TEST),
        ("tests/README.md", PathKind.TEST),
        ("pkg/foo_test.py", PathKind.TEST),
        ("pkg/test_foo.py", PathKind.TEST),
        ("conftest.py", PathKind.TEST),
        ("src/conftest.py", PathKind.TEST),
        ("pytest/__init__.py", PathKind.CODE),
        ("src/pytest/main.py", PathKind.CODE),
        ("pkg/latest.py", PathKind.CODE),
        ("pkg/contest.py", PathKind.CODE),
        ("pkg/testing.py", PathKind.CODE),
        ("pkg/attest/x.py", PathKind.CODE),
        ("pkg/tests.py", PathKind.CODE),
        ("mytests/a.py", PathKind.CODE),
        ("test_data.json", PathKind.CODE),
        ("docs/index.rst", PathKind.AUX),
        ("docs/conf.py", PathKind.AUX),
        ("docs/img/logo.png", PathKind.AUX),
        ("CHANGELOG.md", PathKind.AUX),
        ("CHANGES.rst", PathKind.AUX),
        ("AUTHORS", PathKind.AUX),
        ("README", PathKind.AUX),
        ("LICENSE.txt", PathKind.AUX),
        ("changelog.d/12.bugfix", PathKind.AUX),
        (".github/workflows/ci.yml", PathKind.AUX),
        ("notes.txt", PathKind.CODE),
        ("src/calc/logo.png", PathKind.CODE),
        ("README.txt", PathKind.AUX),
        ("requirements-dev.txt", PathKind.CODE),
        ("pyproject.toml", PathKind.CODE),
        ("src/calc/core.py", PathKind.CODE),
        ("src/calc/data/latin1.txt", PathKind.CODE),
        ("setup.cfg", PathKind.CODE),
    ],
)
def test_classify_path(path: str, kind: PathKind) -> None:
    assert classify_path(path) is kind


def test_rules_are_configurable() -> None:
    rules = PathRules(test_dir_names=("spec",), test_file_globs=("*_spec.py",))
    assert is_test_path("spec/a.py", rules)
    assert is_test_path("pkg/a_spec.py", rules)
    assert not is_test_path("tests/test_a.py", rules)
    assert classify_path("tests/test_a.py", rules) is PathKind.CODE


# --------------------------------------------------------------------------- one [paths] setting

BUGGY = "def add(a, b):\n    return a - b\n"
FIXED = "def add(a, b):\n    return a + b\n"
CHECK = "from calc import add\n\n\ndef check_add():\n    assert add(1, 2) == 3\n"


def _checks_repo(path: Path) -> Repo:
    """A repository whose tests live in ``checks/`` (no test_*.py names), one merged PR."""
    r = Repo(path)
    r.commit("init", {"calc.py": BUGGY, "checks/calc_checks.py": "from calc import add\n"})
    r.git("checkout", "-q", "-b", "fix")
    r.commit("Fix add", {"calc.py": FIXED, "checks/calc_checks.py": CHECK})
    r.git("checkout", "-q", "main")
    r.merge("fix", "Merge pull request #1 from ada/fix\n\nFix add")
    return r


def _configs(file_doc: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Stage configs as ``smelter run --config`` builds them from a TOML document."""
    return build_stage_configs(argparse.Namespace(), load_config_classes(), file_doc)


def _outputs(fn: StageFn, record: Any) -> tuple[list[Any], list[Rejection]]:
    fn.setup()
    out = list(fn.process(record))
    rejected = [o.value for o in out if isinstance(o, TaggedOutput)]
    return [o for o in out if not isinstance(o, TaggedOutput)], rejected


def test_one_paths_option_drives_mining_and_snapshot(tmp_path: Path) -> None:
    """Regression: test folders were set per stage (mine_/snapshot_/github_test_dir_names); one
    set for the miner only made the snapshot stage split the same PR differently."""
    repo = _checks_repo(tmp_path / "calc")
    spec = RepoSpec(str(repo.path), "ada/calc")
    mirrors = str(tmp_path / "mirrors")

    # Defaults: checks/ is code, so the PR changes no tests and the miner rejects it.
    default = _configs({})
    _, rejected = _outputs(MineGitFn(default["mine"]), spec)
    assert [r.reason for r in rejected] == [Reason.NO_TEST_CHANGES]

    configs = _configs({"paths": {"test_dir_names": ["checks"]}, "git": {"mirror_dir": mirrors}})
    for section in ("mine", "snapshot", "github"):
        assert configs[section].test_paths.test_dir_names == ("checks",), section
    assert configs["github"].test_paths.rules == configs["mine"].path_rules
    prs, rejected = _outputs(MineGitFn(configs["mine"]), spec)
    assert rejected == [] and len(prs) == 1
    pr = prs[0]
    assert isinstance(pr, PullRequest)
    candidates, rejected = _outputs(SnapshotFn(configs["snapshot"]), pr)
    assert rejected == [] and len(candidates) == 1
    c = candidates[0]
    assert isinstance(c, Candidate)
    assert c.test_files == ["checks/calc_checks.py"] and c.code_files == ["calc.py"]
    assert "checks/calc_checks.py" in c.test_patch and "checks/" not in c.patch

    # The snapshot stage reads the option itself: with the default rules it finds no tests.
    plain = dataclasses.replace(configs["snapshot"], test_paths=default["snapshot"].test_paths)
    _, rejected = _outputs(SnapshotFn(plain), pr)
    assert [r.reason for r in rejected] == [Reason.EMPTY_PATCH]
