"""split_diff on real git diffs: every tricky kind of file change, and that the parts apply."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from _gitutil import Repo

from smelter.transforms.adapters.git import GitRepo
from smelter.transforms.diff import (
    DiffParseError,
    replace_sections,
    sections,
    split_diff,
    unquote_path,
)
from smelter.transforms.testpaths import PathKind, PathRules


@pytest.fixture
def change(tmp_path: Path) -> tuple[GitRepo, str, str]:
    """A base commit and a commit with every kind of change split_diff must handle."""
    r = Repo(tmp_path / "r")
    r.commit(
        "base",
        {
            "src/pkg/core.py": "def f():\n    return 1\n",
            "src/pkg/old_name.py": "A = 1\nB = 2\nC = 3\nD = 4\n",
            "src/pkg/gone.py": "x = 1\n",
            "src/pkg/crlf.py": "a = 1\r\nb = 2\r\n",
            "tests/test_core.py": "def test_f():\n    assert True\n",
            "tests/test_moved.py": "def test_m():\n    pass\n",
            "scripts/run.sh": "echo hi\n",
            "docs/index.rst": "Title\n=====\n",
            "src/pkg/latest.py": "v = 1\n",
        },
    )
    base = r.head()
    r.write(
        {
            "src/pkg/core.py": "def f():\n    return 2\n",
            "src/pkg/old_name.py": None,
            "src/pkg/new_name.py": "A = 1\nB = 2\nC = 3\nD = 4\n",
            "src/pkg/gone.py": None,
            "src/pkg/crlf.py": "a = 1\r\nb = 3\r\n",
            "src/pkg/nonl.py": "no newline",
            "tests/test_core.py": "def test_f():\n    assert False\n",
            "tests/test_moved.py": None,
            "src/pkg/helpers_moved.py": "def test_m():\n    pass\n",
            "tests/data/fixture.bin": bytes(range(256)),
            "docs/index.rst": "Title\n=====\n\nMore.\n",
            "CHANGELOG.md": "- fixed f\n",
            "src/pkg/latest.py": "v = 2\n",
            "tests/sp ace/test_é.py": "def test_x():\n    pass\n",
        }
    )
    (r.path / "scripts/run.sh").chmod(0o755)
    head = r.commit("change")
    return GitRepo(r.path), base, head


def test_split_kinds_and_statuses(change: tuple[GitRepo, str, str]) -> None:
    repo, base, head = change
    s = split_diff(repo.diff_binary(base, head))
    by_path = {f.path: f for f in s.files}
    assert by_path["src/pkg/new_name.py"].status == "renamed"
    assert by_path["src/pkg/new_name.py"].old_path == "src/pkg/old_name.py"
    assert by_path["src/pkg/gone.py"].status == "deleted"
    assert by_path["scripts/run.sh"].status == "mode"
    assert by_path["tests/data/fixture.bin"].binary
    assert by_path["tests/data/fixture.bin"].kind is PathKind.TEST
    # Renamed from tests/ into the package: classified by its new path.
    assert by_path["src/pkg/helpers_moved.py"].kind is PathKind.CODE
    assert by_path["src/pkg/helpers_moved.py"].old_path == "tests/test_moved.py"
    assert by_path["tests/sp ace/test_é.py"].kind is PathKind.TEST
    assert sorted(s.test_files) == ["tests/data/fixture.bin", "tests/sp ace/test_é.py",
                                    "tests/test_core.py"]  # fmt: skip
    assert sorted(s.aux_files) == ["CHANGELOG.md", "docs/index.rst"]
    assert "src/pkg/latest.py" in s.code_files
    assert s.lines(PathKind.CODE)[0] >= 4
    assert s.undecodable == []
    assert by_path["src/pkg/crlf.py"].added == 1 and by_path["src/pkg/crlf.py"].removed == 1


def test_parts_are_byte_exact_and_apply(change: tuple[GitRepo, str, str]) -> None:
    repo, base, head = change
    diff = repo.diff_binary(base, head)
    s = split_diff(diff)
    assert b"".join(f.raw for f in s.files) == diff
    assert b"\r\n" in s.patch  # CRLF kept
    assert b"\\ No newline at end of file" in s.patch
    assert b"GIT binary patch" in s.test_patch
    for part in (s.patch, s.test_patch, s.aux_patch, s.patch + s.test_patch):
        repo.apply_check(base, part)


def test_applied_parts_reproduce_the_head_tree(change: tuple[GitRepo, str, str],
                                                tmp_path: Path) -> None:  # fmt: skip
    repo, base, head = change
    s = split_diff(repo.diff_binary(base, head))
    dest = repo.export_snapshot(base, tmp_path / "snap")
    for part in (s.test_patch, s.patch, s.aux_patch):
        subprocess.run(["git", "-C", str(dest), "apply", "-"], input=part, check=True)
    assert (dest / "tests/data/fixture.bin").read_bytes() == bytes(range(256))
    assert (dest / "src/pkg/crlf.py").read_bytes() == b"a = 1\r\nb = 3\r\n"
    assert (dest / "scripts/run.sh").stat().st_mode & 0o111
    subprocess.run(["git", "-C", str(dest), "add", "-A"], check=True)
    tree = subprocess.run(["git", "-C", str(dest), "write-tree"], capture_output=True,
                          text=True, check=True).stdout.strip()  # fmt: skip
    assert tree == repo.text("rev-parse", f"{head}^{{tree}}").strip()


def test_undecodable_section_is_listed_and_replaced(tmp_path: Path) -> None:
    r = Repo(tmp_path / "r")
    base = r.commit("base", {"src/m.py": "# -*- coding: latin-1 -*-\nS = 'caf\xe9'\n".encode(
        "latin-1"), "tests/test_m.py": "x = 1\n"})  # fmt: skip
    head = r.commit("change", {"src/m.py": "# -*- coding: latin-1 -*-\nS = 'na\xefve'\n".encode(
        "latin-1"), "tests/test_m.py": "x = 2\n"})  # fmt: skip
    repo = GitRepo(r.path)
    diff = repo.diff_binary(base, head)
    s = split_diff(diff)
    assert s.undecodable == ["src/m.py"]
    with pytest.raises(UnicodeDecodeError):
        s.text(PathKind.CODE)
    fixed = replace_sections(diff, [repo.diff_binary(base, head, paths=s.undecodable,
                                                     force_binary=True)])  # fmt: skip
    s2 = split_diff(fixed)
    assert s2.undecodable == []
    assert s2.text(PathKind.TEST) == s.text(PathKind.TEST)
    assert "GIT binary patch" in s2.text(PathKind.CODE)
    repo.apply_check(base, s2.patch)


def test_custom_rules(change: tuple[GitRepo, str, str]) -> None:
    repo, base, head = change
    s = split_diff(repo.diff_binary(base, head), PathRules(test_dir_names=("nothing",)))
    assert "tests/test_core.py" in s.test_files  # still a test_*.py name
    assert "tests/data/fixture.bin" in s.code_files


def test_empty_and_bad_input() -> None:
    assert split_diff(b"").files == ()
    with pytest.raises(DiffParseError):
        sections(b"hello\n")
    with pytest.raises(DiffParseError):
        split_diff(b"diff --git a/x b/x\n--- a/x\n+++ b/x\n@@ -1,2 +1,2 @@\n-a\n")


def test_unquote_path() -> None:
    assert unquote_path('"tests/caf\\303\\251.py"') == "tests/café.py"
    assert unquote_path('"a\\tb\\"c"') == 'a\tb"c'
    assert unquote_path("plain") == "plain"
