"""Any byte in a path: decoded from git's quoting, carried as valid JSON, or one PR rejected.

Regression tests for issue 12: one file name that is not UTF-8 crashed the whole run (every
repository in it) when records were written, and the cached candidate crashed every re-run;
``tests/test_ünïcode.py`` was rejected as ``infrastructure`` because git's quoted path
(``"b/tests/test_\\303\\274n\\303\\257code.py"``) reached pytest undecoded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _gitutil import Repo

from smelter.schemas import PullRequest, Reason, Rejection
from smelter.transforms.adapters.git import GitConfig, GitRepo
from smelter.transforms.diff import diff_path, is_utf8, shown_path, split_diff, unquote_path
from smelter.transforms.errors import Rejected
from smelter.transforms.mine.config import MineConfig
from smelter.transforms.mine.git_source import GitSource, RepoSpec
from smelter.transforms.snapshot.config import SnapshotConfig
from smelter.transforms.snapshot.snapshot import SnapshotFn
from smelter.transforms.stage import printable
from smelter.transforms.validate.script import touched_test_modules

SMELTER = str(Path(sys.executable).with_name("smelter"))
UNICODE_TEST = "tests/test_ünïcode.py"
BAD_NAME = b"tests/test_\xff.py"  # not UTF-8: only os.fsencode paths can create it


def _pr_branch(repo: Repo, branch: str, number: int, write: dict[bytes, bytes]) -> str:
    repo.git("checkout", "-q", "-b", branch)
    for rel, data in write.items():
        path = os.path.join(os.fsencode(repo.path), rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
    repo.git("add", "-A")
    repo.git("commit", "-q", "-m", f"change for #{number}")
    repo.git("checkout", "-q", "main")
    return repo.merge(branch, f"Merge pull request #{number} from acme/{branch}\n\nPR {number}")


@pytest.fixture(scope="module")
def odd_repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    """PR 1 adds a non-ASCII test file, PR 2 a test file whose name is not UTF-8, PR 3 is plain;
    each also changes code, so each qualifies."""
    repo = Repo(tmp_path_factory.mktemp("odd") / "widgets")
    repo.commit("init", {
        "pkg/__init__.py": "", "pkg/m.py": "def f():\n    return 1\n",
        "tests/test_m.py": "from pkg.m import f\n\n\ndef test_f():\n    assert f() == 1\n",
    })  # fmt: skip
    test_u = "from pkg.m import f\n\n\ndef test_u():\n    assert f() == 2\n"
    _pr_branch(repo, "uni", 1, {b"pkg/m.py": b"def f():\n    return 2\n",
                                UNICODE_TEST.encode(): test_u.encode()})  # fmt: skip
    _pr_branch(repo, "bad", 2, {b"pkg/m.py": b"def f():\n    return 3\n",
                                BAD_NAME: b"def test_x():\n    assert True\n"})  # fmt: skip
    _pr_branch(repo, "ok", 3, {b"pkg/m.py": b"def f():\n    return 4\n",
                               b"tests/test_m.py": b"from pkg.m import f\n\n\ndef test_f():\n"
                                                   b"    assert f() == 4\n"})  # fmt: skip
    return repo


def _merge_diff(repo: Repo, number: int) -> bytes:
    sha = repo.git("log", "--format=%H", f"--grep=Merge pull request #{number} ", "main")
    return GitRepo(repo.path).diff_binary(f"{sha}^1", sha)


# --------------------------------------------------------------------------- pure


@pytest.mark.parametrize(
    ("quoted", "plain"),
    [
        ('"tests/test_\\303\\274n\\303\\257code.py"', UNICODE_TEST),
        ('"a\\tb\\\\c\\"d"', 'a\tb\\c"d'),
        ("plain/path.py", "plain/path.py"),
        ('"\\1234"', "S4"),  # three octal digits at most: \123 = "S", then "4"
    ],
)
def test_unquote_path(quoted: str, plain: str) -> None:
    assert unquote_path(quoted) == plain
    assert is_utf8(unquote_path(quoted))


def test_a_name_that_is_not_utf8_keeps_its_bytes_and_shows_as_escapes() -> None:
    name = diff_path('"b/tests/test_\\377.py"')
    assert name is not None and not is_utf8(name)
    assert os.fsencode(name) == BAD_NAME  # the exact bytes, for git and the file system
    assert shown_path(name) == "tests/test_\\xff.py"
    assert diff_path("/dev/null") is None and diff_path("a/x y.py\t") == "x y.py"


def test_touched_test_modules_decodes_git_quoting(odd_repo: Repo) -> None:
    """The bug: the quoted path reached pytest as ``tests/test_\\303\\274n…`` (not found)."""
    diff = _merge_diff(odd_repo, 1)
    assert b'"b/tests/test_\\303\\274n\\303\\257code.py"' in diff  # git did quote it
    split = split_diff(diff)
    assert split.test_files == [UNICODE_TEST] and split.code_files == ["pkg/m.py"]
    assert touched_test_modules(split.text(split.files[-1].kind)) == [UNICODE_TEST]
    assert split.undecodable_paths == []


def test_the_miner_rejects_only_the_pr_with_the_undecodable_name(odd_repo: Repo) -> None:
    spec = RepoSpec.from_url(str(odd_repo.path), "acme/widgets")
    out = {r.instance_id: r for r in GitSource(GitRepo(odd_repo.path), spec, MineConfig())}
    assert isinstance(out["acme__widgets-1"], PullRequest)
    assert isinstance(out["acme__widgets-3"], PullRequest)
    bad = out["acme__widgets-2"]
    assert isinstance(bad, Rejection) and bad.reason is Reason.UNDECODABLE_PATH
    assert "tests/test_\\xff.py" in bad.detail
    for rec in out.values():
        json.loads(rec.to_json())  # every outcome is valid JSON


def test_snapshot_rejects_an_undecodable_name_from_another_source(
    odd_repo: Repo, tmp_path: Path
) -> None:
    """A source that does not check names (a PR record carrying the diff) gets the same reason."""
    spec = RepoSpec.from_url(str(odd_repo.path), "acme/widgets")
    pr = next(r for r in GitSource(GitRepo(odd_repo.path), spec, MineConfig())
              if isinstance(r, PullRequest) and r.number == 3)  # fmt: skip
    diff = _merge_diff(odd_repo, 2).decode("ascii")  # quoted by git: ASCII, a valid str
    sha = odd_repo.git("log", "--format=%H", "--grep=Merge pull request #2 ", "main")
    base = odd_repo.git("rev-parse", f"{sha}^1")
    record = pr.model_copy(update={"diff": diff, "merge_commit": sha, "base_commit": base})
    fn = SnapshotFn(SnapshotConfig(git=GitConfig(mirror_dir=str(tmp_path / "mirrors"))))
    fn.setup()
    with pytest.raises(Rejected) as info:
        fn.run(record)
    assert info.value.reason is Reason.UNDECODABLE_PATH


def test_an_outcome_that_cannot_be_json_is_one_rejection_not_a_crash(odd_repo: Repo) -> None:
    """The safety net for any stage, fresh or cached: a record holding undecodable text."""
    spec = RepoSpec.from_url(str(odd_repo.path), "acme/widgets")
    pr = next(r for r in GitSource(GitRepo(odd_repo.path), spec, MineConfig())
              if isinstance(r, PullRequest))  # fmt: skip
    broken = pr.model_copy(update={"changed_files": [os.fsdecode(BAD_NAME)]})
    with pytest.raises(ValueError):
        broken.to_json()  # what crashed the run's writer
    fn = SnapshotFn(SnapshotConfig())
    out = fn.writable(broken)
    assert isinstance(out, Rejection) and out.reason is Reason.INTERNAL_ERROR
    assert out.instance_id == pr.instance_id and "not UTF-8" in out.detail
    json.loads(out.to_json())
    rejection = Rejection(instance_id=pr.instance_id, stage="mine", reason=Reason.DIFF_FAILED,
                          detail=f"bad {os.fsdecode(BAD_NAME)}")  # fmt: skip
    fixed = fn.writable(rejection)
    assert fixed.detail == "bad tests/test_\\udcff.py" == printable(rejection.detail)
    assert fn.writable(pr) is pr  # ordinary records pass untouched


# --------------------------------------------------------------------------- real CLI


def _lines(path: Path) -> list[dict[str, object]]:
    # strict UTF-8: a lone surrogate or stray byte in the file fails here
    return [json.loads(ln) for ln in path.read_bytes().decode("utf-8").splitlines() if ln]


@pytest.mark.slow  # a real subprocess run: seconds (make unit skips it)
def test_smelter_mine_carries_the_repository_and_reruns_from_cache(
    odd_repo: Repo, tmp_path: Path
) -> None:
    """``smelter mine`` as a real process, twice on one output folder (the second from cache)."""
    out = tmp_path / "out"
    env = {**os.environ, "SMELTER_MIRROR_DIR": str(tmp_path / "mirrors")}
    for attempt in (1, 2):
        proc = subprocess.run(
            [SMELTER, "mine", "--repo", str(odd_repo.path), "--repo-name", "acme/widgets",
             "--out", str(out), "--no-progress", "--workers", "1"],
            capture_output=True, text=True, timeout=600, env=env,
        )  # fmt: skip
        assert proc.returncode == 0, (attempt, proc.stderr[-3000:])
        assert "Traceback" not in proc.stderr
        prs = {p["number"] for p in _lines(out / "pull_requests.jsonl")}
        assert prs == {1, 3}, attempt
        candidates = {c["pull_number"]: c for c in _lines(out / "candidates.jsonl")}
        assert set(candidates) == {1, 3}
        assert candidates[1]["test_files"] == [UNICODE_TEST]
        assert touched_test_modules(str(candidates[1]["test_patch"])) == [UNICODE_TEST]
        rejects = _lines(out / "rejects.jsonl")
        assert [(r["instance_id"], r["reason"]) for r in rejects] == [
            ("acme__widgets-2", "undecodable_path")
        ]
        assert "tests/test_\\xff.py" in str(rejects[0]["detail"])
