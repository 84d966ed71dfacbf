"""GitRepo against real repositories built in tmp_path."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import pytest
from _gitutil import Repo

from smelter.transforms.adapters.git import GitError, GitRepo


@pytest.fixture
def upstream(tmp_path: Path) -> Repo:
    r = Repo(tmp_path / "up")
    r.commit("init", {"pkg/a.py": "x = 1\n", "tests/test_a.py": "def test_a():\n    pass\n"})
    r.git("tag", "v0.1")
    r.git("checkout", "-q", "-b", "feature")
    r.commit("feature work", {"pkg/a.py": "x = 2\n", "data.bin": b"\x00\x01\x02\xff"})
    r.git("checkout", "-q", "main")
    r.commit("unrelated (#2)", {"README.md": "hello\n"})
    r.merge("feature", "Merge pull request #1 from ada/feature\n\nChange x")
    r.git("tag", "v0.2")
    return r


def test_first_parent_log_parses_one_call(upstream: Repo) -> None:
    repo = GitRepo(upstream.path)
    log = repo.first_parent_log("main")
    assert [e.subject for e in log] == [
        "Merge pull request #1 from ada/feature",
        "unrelated (#2)",
        "init",
    ]
    assert len(log[0].parents) == 2 and len(log[1].parents) == 1 and log[2].parents == ()
    assert log[0].body == "Change x"
    assert log[0].author_date.endswith("+00:00") and log[0].author_name == "Ada"


def test_commit_graph_has_side_commits(upstream: Repo) -> None:
    repo = GitRepo(upstream.path)
    graph = repo.commit_graph("main")
    assert {n.subject for n in graph.values()} >= {"feature work", "init"}
    assert len(graph) == 4


def test_rev_parse_and_errors(upstream: Repo) -> None:
    repo = GitRepo(upstream.path)
    assert repo.rev_parse("main") == upstream.head()
    with pytest.raises(GitError) as e:
        repo.rev_parse("no-such-branch")
    assert e.value.returncode != 0
    with pytest.raises(GitError):
        GitRepo(upstream.path.parent / "nothing").rev_parse("HEAD")


def test_diff_binary_and_diff_many_agree(upstream: Repo) -> None:
    repo = GitRepo(upstream.path)
    log = repo.first_parent_log("main")
    pairs = [(e.parents[0], e.sha) for e in log if e.parents]
    single = [repo.diff_binary(a, b) for a, b in pairs]
    batched = [d for _, _, d in repo.diff_many([*pairs, (pairs[0][1], pairs[0][1])])]
    assert batched[:-1] == single
    assert batched[-1] == b""  # an empty diff stays empty and keeps its place
    assert b"GIT binary patch" in single[0]  # data.bin carried, not "Binary files differ"


def test_force_binary_makes_ascii(upstream: Repo) -> None:
    repo = GitRepo(upstream.path)
    base = repo.rev_parse("v0.1")
    upstream.commit("latin1", {"pkg/l.txt": "caf\xe9\n".encode("latin-1")})
    d = repo.diff_binary(base, upstream.head(), paths=["pkg/l.txt"], force_binary=True)
    d.decode("ascii")
    assert b"GIT binary patch" in d
    repo.apply_check(base, d)


def test_read_file(upstream: Repo) -> None:
    repo = GitRepo(upstream.path)
    assert repo.read_file("main", "data.bin") == b"\x00\x01\x02\xff"
    assert repo.read_file("v0.1", "data.bin") is None
    assert "pkg/a.py" in repo.list_files("main")


def test_apply_check_leaves_repo_untouched_and_runs_in_parallel(upstream: Repo) -> None:
    bare = GitRepo.mirror(upstream.path, upstream.path.parent / "cache")
    base, head = bare.rev_parse("v0.1"), bare.rev_parse("main")
    good = bare.diff_binary(base, head)
    bad = bare.diff_binary(head, base)
    before = sorted(p.name for p in bare.path.iterdir())
    errors: list[Exception] = []

    def work() -> None:
        try:
            for _ in range(3):
                bare.apply_check(base, good)
                with pytest.raises(GitError):
                    bare.apply_check(base, bad)
        except Exception as e:
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(p.name for p in bare.path.iterdir()) == before  # no index, no lock left


def test_mirror_clones_then_fetches(upstream: Repo, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    m1 = GitRepo.mirror(upstream.path, cache)
    assert m1.rev_parse("main") == upstream.head()
    new = upstream.commit("later (#9)", {"pkg/b.py": "y = 1\n"})
    m2 = GitRepo.mirror(upstream.path, cache)
    assert m2.path == m1.path
    assert m2.rev_parse("main") == new
    with pytest.raises(GitError):
        GitRepo.mirror(tmp_path / "not-a-repo", cache)
    assert [p for p in cache.iterdir() if p.suffix != ".lock"] == [m1.path]  # no half clone left


def test_mirror_concurrent_workers(upstream: Repo, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(GitRepo.mirror(upstream.path, cache).path))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1 and len(results) == 4


def test_export_snapshot_holds_only_that_commit(upstream: Repo, tmp_path: Path) -> None:
    repo = GitRepo.mirror(upstream.path, tmp_path / "cache")
    base = repo.rev_parse("main~1")
    dest = repo.export_snapshot(base, tmp_path / "snap")

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(dest), *args], capture_output=True, text=True, check=True
        ).stdout

    assert git("rev-parse", "HEAD").strip() == base
    assert git("log", "--format=%H").split() == [base]
    assert git("tag") == "" and git("remote") == ""
    assert git("status", "--porcelain") == ""
    assert git("rev-list", "--all").split() == [base]
    git("fsck", "--strict")
    assert (dest / "README.md").read_text() == "hello\n"
    assert not (dest / "data.bin").exists()  # the merged feature is not there
    # The fix's objects are not in the object store either.
    fix_blob = repo.text("rev-parse", "main:data.bin").strip()
    proc = subprocess.run(["git", "-C", str(dest), "cat-file", "-e", fix_blob], check=False)
    assert proc.returncode != 0
    with pytest.raises(GitError):
        repo.export_snapshot(base, dest)  # not empty


def test_mirror_survives_a_killed_fetch(upstream: Repo, tmp_path: Path) -> None:
    """A process killed mid-fetch leaves git lock files; the next mirror() must still work."""
    cache = tmp_path / "cache"
    m = GitRepo.mirror(upstream.path, cache)
    (m.path / "packed-refs.lock").write_text("")
    (m.path / "refs" / "heads").mkdir(parents=True, exist_ok=True)
    (m.path / "refs" / "heads" / "main.lock").write_text("")
    new = upstream.commit("after the kill (#3)", {"pkg/c.py": "z = 1\n"})
    assert GitRepo.mirror(upstream.path, cache).rev_parse("main") == new


def test_existing_mirror_without_fetch(upstream: Repo, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    assert GitRepo.existing_mirror(upstream.path, cache) is None
    m = GitRepo.mirror(upstream.path, cache)
    new = upstream.commit("later (#4)", {"pkg/d.py": "q = 1\n"})
    existing = GitRepo.existing_mirror(upstream.path, cache)
    assert existing is not None and existing.path == m.path
    assert not existing.has_commit(new) and existing.has_commit(upstream.git("rev-parse", "HEAD~1"))
