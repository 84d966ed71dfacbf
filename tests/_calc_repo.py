"""A tiny real repository with three merged PRs, for the export and harness tests (not a test
module): real ``git diff --binary`` patches, a new test file, a binary test fixture, a
parametrized test and a test class, with the FAIL_TO_PASS / PASS_TO_PASS each PR must yield.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from smelter.pipeline.demo.files import PYPROJECT

GIT_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_AUTHOR_NAME": "Ada",
    "GIT_AUTHOR_EMAIL": "ada@example.com",
    "GIT_COMMITTER_NAME": "Ada",
    "GIT_COMMITTER_EMAIL": "ada@example.com",
    "GIT_AUTHOR_DATE": "1700000000 +0000",
    "GIT_COMMITTER_DATE": "1700000000 +0000",
}


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, **GIT_ENV, "HOME": str(repo)}
    out = subprocess.run(["git", "-C", str(repo), *args], env=env, capture_output=True, check=True)
    return out.stdout.decode()


def write(repo: Path, files: dict[str, str | bytes]) -> None:
    for rel, content in files.items():
        p = repo / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(content)


BASE_FILES = {
    "pyproject.toml": '[project]\nname = "calc"\nversion = "0.1"\n\n'
    '[tool.pytest.ini_options]\npythonpath = ["."]\n',
    "calc/__init__.py": "",
    "calc/core.py": "def add(a, b):\n    return a + b if a >= 0 else a - b\n",
    "tests/test_core.py": "from calc.core import add\n\n\ndef test_add():\n"
    "    assert add(1, 2) == 3\n",
}

# (code change, test change, F2P, P2P) for each pull request, applied one after another.
PRS = [
    (
        {"calc/core.py": "def add(a, b):\n    return a + b\n"},
        {
            "tests/test_core.py": BASE_FILES["tests/test_core.py"]
            + "\n\ndef test_add_negative():\n    assert add(-1, -2) == -3\n"
        },
        ["tests/test_core.py::test_add_negative"],
        ["tests/test_core.py::test_add"],
    ),
    (
        {"calc/mul.py": "def mul(a, b):\n    return a * b\n"},
        {
            "tests/test_mul.py": "import pathlib\n\nimport pytest\n\nfrom calc.mul import mul\n\n\n"
            '@pytest.mark.parametrize("a,b,c", [(2, 3, 6), (0, 5, 0)])\n'
            "def test_mul(a, b, c):\n    assert mul(a, b) == c\n\n\n"
            "class TestMul:\n    def test_blob(self):\n"
            '        data = (pathlib.Path(__file__).parent / "data" / "blob.bin").read_bytes()\n'
            "        assert mul(len(data), 1) == 4\n",
            "tests/data/blob.bin": b"\x00\xff\x10\x80",
        },
        [
            "tests/test_mul.py::test_mul[2-3-6]",
            "tests/test_mul.py::test_mul[0-5-0]",
            "tests/test_mul.py::TestMul::test_blob",
        ],
        ["tests/test_core.py::test_add", "tests/test_core.py::test_add_negative"],
    ),
    (
        {
            "calc/core.py": 'def add(a, b):\n    """Sum."""\n    return a + b\n\n\n'
            "def neg(a):\n    return -a\n"
        },
        {
            "tests/test_core.py": BASE_FILES["tests/test_core.py"]
            + "\n\ndef test_add_negative():\n    assert add(-1, -2) == -3\n"
            "\n\ndef test_neg():\n    from calc.core import neg\n\n    assert neg(2) == -2\n"
        },
        ["tests/test_core.py::test_neg"],
        ["tests/test_core.py::test_add", "tests/test_core.py::test_add_negative"],
    ),
]


@dataclass(frozen=True)
class CalcPR:
    number: int
    instance_id: str
    base: str
    merge: str
    code_paths: list[str]
    test_paths: list[str]
    patch: str
    test_patch: str
    fail_to_pass: list[str]
    pass_to_pass: list[str]


def make_calc_repo(root: Path) -> tuple[Path, list[CalcPR]]:
    """``root/calc`` with one commit per PR on ``main``; each PR's base is the previous commit."""
    repo = root / "calc"
    repo.mkdir()
    git(repo, "init", "-q", "--initial-branch=main")
    write(repo, BASE_FILES)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "initial")
    prs = []
    for n, (code, tests, f2p, p2p) in enumerate(PRS, start=1):
        base = git(repo, "rev-parse", "HEAD").strip()
        write(repo, {**code, **tests})
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", f"PR {n} (#{n})")
        merge = git(repo, "rev-parse", "HEAD").strip()
        prs.append(
            CalcPR(
                number=n,
                instance_id=f"acme__calc-{n}",
                base=base,
                merge=merge,
                code_paths=sorted(code),
                test_paths=sorted(tests),
                patch=git(repo, "diff", "--binary", base, merge, "--", *code),
                test_patch=git(repo, "diff", "--binary", base, merge, "--", *tests),
                fail_to_pass=f2p,
                pass_to_pass=p2p,
            )
        )
    return repo, prs


ONE_PR_BUGGY = "def add(a, b):\n    return a + b if b >= 0 else a - b\n"
ONE_PR_FIX = {"src/calc/core.py": "def add(a, b):\n    return a + b\n"}
ONE_PR_NEW_TEST = "\n\ndef test_add_negative():\n    assert add(1, -2) == -1\n"


def make_one_pr_repo(path: Path, test_add: str = "    assert add(1, 2) == 3\n") -> None:
    """A repository of two commits: a calc package whose ``add`` is wrong for negative
    numbers, then the fix with its test (PR #1). ``test_add`` is the body of the test that
    passes before and after (e.g. with a sleep, so a run lasts a while)."""
    test_core = f"import time\n\nfrom calc.core import add\n\n\ndef test_add():\n{test_add}"
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    write(path, {
        "pyproject.toml": PYPROJECT,
        "src/calc/__init__.py": "",
        "src/calc/core.py": ONE_PR_BUGGY,
        "tests/test_core.py": test_core,
    })  # fmt: skip
    git(path, "add", "-A")
    git(path, "commit", "-qm", "Initial commit")
    write(path, {**ONE_PR_FIX, "tests/test_core.py": test_core + ONE_PR_NEW_TEST})
    git(path, "add", "-A")
    git(path, "commit", "-qm", "Fix add for negative numbers (#1)")
