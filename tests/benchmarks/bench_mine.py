"""Benchmark: mine a generated history of >= 5,000 commits; print PRs and commits per second.

The history is written with one ``git fast-import`` stream (seconds, not minutes): a package of
code and test files, about 30% squash PRs "Subject (#N)", 20% merge PRs (two-parent merges of a
branch of 1-3 commits, "Merge pull request #N from …"), the rest direct commits; some PRs touch
only code or only docs so the filters have work to do.

Run: ``.venv/bin/python tests/benchmarks/bench_mine.py [--commits 5000] [--keep DIR]``
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from smelter.schemas import PullRequest
from smelter.transforms.adapters.git import GitConfig, GitRepo
from smelter.transforms.mine.config import MineConfig
from smelter.transforms.mine.git_source import GitSource, MineGitFn, RepoSpec

N_MODULES = 40
LINES = 40


class History:
    """Writes a fast-import stream while tracking file contents, marks and the clock."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.out: list[bytes] = []
        self.mark = 0
        self.clock = 1_600_000_000
        self.files: dict[str, list[str]] = {}
        self.commits = 0
        self.pr = 0

    def _data(self, text: str | bytes) -> None:
        raw = text.encode() if isinstance(text, str) else text
        self.out.append(b"data %d\n" % len(raw) + raw + b"\n")

    def edit(self, path: str) -> str:
        lines = self.files.setdefault(path, [f"value_{i} = {i}\n" for i in range(LINES)])
        i = self.rng.randrange(LINES)
        lines[i] = f"value_{i} = {self.rng.randrange(10**6)}\n"
        return path

    def commit(self, ref: str, message: str, paths: list[str], parent: int | None,
               merge: int | None = None, who: str = "dev") -> int:  # fmt: skip
        self.mark += 1
        self.clock += self.rng.randrange(600, 7200)
        self.commits += 1
        self.out.append(f"commit {ref}\nmark :{self.mark}\n".encode())
        self.out.append(f"author {who} <{who}@example.com> {self.clock} +0000\n".encode())
        self.out.append(f"committer GitHub <noreply@github.com> {self.clock} +0000\n".encode())
        self._data(message)
        if parent is not None:
            self.out.append(f"from :{parent}\n".encode())
        if merge is not None:
            self.out.append(f"merge :{merge}\n".encode())
        for p in paths:
            self.out.append(f"M 100644 inline {p}\n".encode())
            self._data("".join(self.files[p]))
        return self.mark

    def change(self, kind: str) -> list[str]:
        m = self.rng.randrange(N_MODULES)
        code = self.edit(f"src/pkg/mod_{m}.py")
        test = self.edit(f"tests/test_mod_{m}.py")
        docs = self.edit(f"docs/page_{m % 5}.md")
        return {"both": [code, test], "code": [code], "docs": [docs], "tests": [test]}[kind]


def generate(path: Path, commits: int, seed: int = 7) -> History:
    h = History(seed)
    init = [h.edit(f"src/pkg/mod_{m}.py") for m in range(N_MODULES)]
    init += [h.edit(f"tests/test_mod_{m}.py") for m in range(N_MODULES)]
    tip = h.commit("refs/heads/main", "Initial commit\n", init, None)
    while h.commits < commits:
        r = h.rng.random()
        kind = h.rng.choices(["both", "code", "docs", "tests"], [70, 15, 10, 5])[0]
        if r < 0.3:
            h.pr += 1
            tip = h.commit("refs/heads/main", f"Change {kind} things (#{h.pr})\n\nBody.\n\n"
                           f"Fixes #{h.rng.randrange(1, 999)}\n", h.change(kind), tip)  # fmt: skip
        elif r < 0.5:
            h.pr += 1
            branch_tip, touched = tip, set()
            for _ in range(h.rng.randrange(1, 4)):
                paths = h.change(kind)
                touched.update(paths)
                branch_tip = h.commit("refs/heads/topic", "work\n", paths, branch_tip)
            # fast-import does not merge trees: the merge commit lists the branch's files.
            tip = h.commit("refs/heads/main", f"Merge pull request #{h.pr} from dev/topic-{h.pr}"
                           f"\n\nChange {kind} things\n", sorted(touched), tip,
                           merge=branch_tip)  # fmt: skip
        else:
            tip = h.commit("refs/heads/main", "Direct commit\n", h.change("both"), tip)
    GitRepo.init(path)
    stream = b"".join(h.out) + b"done\n"
    subprocess.run(["git", "-C", str(path), "fast-import", "--quiet", "--done"], input=stream,
                   check=True)  # fmt: skip
    subprocess.run(["git", "-C", str(path), "update-ref", "-d", "refs/heads/topic"], check=True)
    return h


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--commits", type=int, default=5000)
    ap.add_argument("--keep", type=Path, default=None, help="keep the generated repo here")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-mine-"))
    repo_path = args.keep or root / "repo"
    try:
        t0 = time.perf_counter()
        h = generate(repo_path, args.commits)
        t_gen = time.perf_counter() - t0
        print(f"generated {h.commits} commits ({h.pr} PRs) in {t_gen:.1f}s with git fast-import")

        spec = RepoSpec(str(repo_path), "bench/repo")
        t0 = time.perf_counter()
        source = GitSource(GitRepo(repo_path), spec, MineConfig())
        records = list(source)
        t_mine = time.perf_counter() - t0
        kept = sum(isinstance(r, PullRequest) for r in records)
        s = source.stats
        print(f"mined {s.prs_found} PRs ({kept} kept, {s.prs_rejected} rejected) from "
              f"{s.commits_scanned} first-parent commits in {t_mine:.2f}s")  # fmt: skip
        print(f"  PRs mined per second:        {s.prs_found / t_mine:,.0f}")
        print(f"  kept PRs per second:         {kept / t_mine:,.0f}")
        print(f"  commits scanned per second:  {h.commits / t_mine:,.0f} (all commits in repo)")

        fn = MineGitFn(MineConfig(git=GitConfig(mirror_dir=str(root / "mirrors"))))
        t0 = time.perf_counter()
        n = sum(1 for _ in fn.run(spec))
        t_stage = time.perf_counter() - t0
        print(
            f"stage incl. bare-mirror clone: {n} records in {t_stage:.2f}s "
            f"({s.prs_found / t_stage:,.0f} PRs/s)"
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
