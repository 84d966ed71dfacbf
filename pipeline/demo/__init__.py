"""The bundled demo source: a deterministic upstream repository of a small Python package.

``create_demo_repo(path)`` writes ``smelter-demo/calc``, a pure-Python calculator library
(``src/`` layout, pytest only, tests run in well under 2 s) with 15 merged pull requests in both
GitHub styles, built to walk every branch of the pipeline. ``DEMO_PRS`` says, for each PR, what
it covers and its expected fate at each stage; the stage tests assert against it.

Deliberate choices:
- Fixed author/committer names and dates and a fixed git environment (no user or system
  config), so the commit shas are the same on every machine and every run.
- Classification by parents is exercised both ways: #24 is a ONE-parent commit titled
  "Merge pull request #24 from …" (rebase-merged: a squash), #25 a TWO-parent merge titled
  "… (#25)" (a merge). "Merge branch 'typo-fix'" has two parents and no number: not a PR.
- The flaky test (#18, again run by #25) fails exactly when ``SMELTER_ATTEMPT`` (the 0-based
  rerun index validation exports into each test container) is odd, so any side run at least
  twice sees it flip; #18 still has one genuine FAIL_TO_PASS test.
- The non-UTF-8 file (``src/calc/units.py``, latin-1 with a coding cookie) is carried, not
  rejected: the miner re-takes that path's diff as a git binary patch (base85, ASCII), which
  ``git apply`` applies like any other patch. So #21 survives mine and snapshot with its
  ``patch`` holding a "GIT binary patch" section; ``Reason.UNDECODABLE_DIFF`` stays for what
  still cannot be carried.
- Expected FAIL_TO_PASS / PASS_TO_PASS assume validation runs the test files the test_patch
  touches (as SWE-bench does) and that a test failing on both sides is neither.
- The ``release-0.1`` branch holds a backport of #11 squashed as "… (#11)": mining main and
  the release branch together yields #11 once and a ``duplicate`` rejection for the backport.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import textwrap
from pathlib import Path
from typing import Literal, TypeVar

from smelter.schemas import Reason

REPO_NAME = "smelter-demo/calc"
DEFAULT_BRANCH = "main"
RELEASE_BRANCH = "release-0.1"
_T = TypeVar("_T", str, bytes)
_EPOCH = 1_709_287_200  # 2024-03-01T10:00:00Z
_GITHUB = ("GitHub", "noreply@github.com")
_PEOPLE = {
    "maintainer": ("Mira Maintainer", "mira@calc.example"),
    "alice": ("Alice Adams", "alice@calc.example"),
    "bob": ("Bob Brown", "bob@calc.example"),
    "carol": ("Carol Chen", "carol@calc.example"),
    "dan": ("Dan Diaz", "dan@calc.example"),
}


@dataclasses.dataclass(frozen=True)
class DemoPR:
    """One demo pull request and its expected fate at each stage (None = kept)."""

    number: int
    title: str
    style: Literal["merge", "squash"]
    covers: tuple[str, ...]
    mine: Reason | None = None
    snapshot: Reason | None = None
    validate: Reason | None = None
    fail_to_pass: tuple[str, ...] = ()
    pass_to_pass: tuple[str, ...] = ()
    flaky: tuple[str, ...] = ()
    linked_issues: tuple[tuple[str, int], ...] = ()
    code_files: tuple[str, ...] = ()
    test_files: tuple[str, ...] = ()
    aux_files: tuple[str, ...] = ()
    binary_patch: bool = False  # the code or test patch carries a "GIT binary patch" section

    @property
    def instance_id(self) -> str:
        return f"{REPO_NAME.replace('/', '__')}-{self.number}"

    @property
    def kept_after_snapshot(self) -> bool:
        return self.mine is None and self.snapshot is None

    @property
    def valid(self) -> bool:
        return self.kept_after_snapshot and self.validate is None


_CORE = "tests/test_core.py"
_PARSE = "tests/test_parse.py"
_STATS = "tests/test_stats.py"

DEMO_PRS: tuple[DemoPR, ...] = (
    DemoPR(
        11, "Fix division by zero handling", "merge",
        ("bug fix, test fails before", "two commits on the branch", "changelog kept as aux",
         "links #3", "backported to release-0.1 (duplicate when both branches are mined)"),
        fail_to_pass=(f"{_CORE}::test_div_by_zero",),
        pass_to_pass=(f"{_CORE}::test_add", f"{_CORE}::test_mul", f"{_CORE}::test_div"),
        linked_issues=((REPO_NAME, 3),),
        code_files=("src/calc/core.py",), test_files=(_CORE,), aux_files=("CHANGELOG.md",),
    ),
    DemoPR(
        12, "Handle tabs and newlines in expressions", "squash",
        ("bug fix, test fails before", "links owner/repo#N form", "test class ids in P2P"),
        fail_to_pass=(f"{_PARSE}::test_tokenize_tabs_and_newlines",),
        pass_to_pass=(
            f"{_PARSE}::test_tokenize_numbers", f"{_PARSE}::test_precedence",
            f"{_PARSE}::test_parentheses", f"{_PARSE}::TestErrors::test_unknown_character",
            f"{_PARSE}::TestErrors::test_missing_paren",
        ),
        linked_issues=((REPO_NAME, 4),),
        code_files=("src/calc/parse.py",), test_files=(_PARSE,),
    ),
    DemoPR(
        13, "Add statistics module", "merge",
        ("feature with a new test file", "branch forked before #12 landed", "README as aux",
         "links by full issue URL"),
        fail_to_pass=(f"{_STATS}::test_mean", f"{_STATS}::test_median_odd",
                      f"{_STATS}::test_median_even"),
        linked_issues=((REPO_NAME, 5),),
        code_files=("src/calc/stats.py",), test_files=(_STATS,), aux_files=("README.md",),
    ),
    DemoPR(
        14, "Document operator precedence", "squash", ("docs only",),
        mine=Reason.NO_CODE_CHANGES,
    ),
    DemoPR(
        15, "Speed up the tokenizer", "merge", ("code only",),
        mine=Reason.NO_TEST_CHANGES,
    ),
    DemoPR(
        16, "Add tests for negative multiplication", "squash", ("tests only",),
        mine=Reason.NO_CODE_CHANGES,
    ),
    DemoPR(
        17, "Refactor add() and document it", "merge",
        ("new test already passes without the fix",),
        validate=Reason.PASSES_BEFORE,
        code_files=("src/calc/core.py",), test_files=(_CORE,),
    ),
    DemoPR(
        18, "Fix median of unsorted data", "squash",
        ("bug fix, test fails before", "flaky test flipping on SMELTER_ATTEMPT"),
        fail_to_pass=(f"{_STATS}::test_median_unsorted",),
        pass_to_pass=(f"{_STATS}::test_mean", f"{_STATS}::test_median_odd",
                      f"{_STATS}::test_median_even"),
        flaky=(f"{_STATS}::test_median_random_sample",),
        code_files=("src/calc/stats.py",), test_files=(_STATS,),
    ),
    DemoPR(
        19, "Fix power() with a negative exponent", "merge",
        ("bug fix, test fails before", "description full of template noise: HTML comments, "
         "checklist, bot footer, a commented-out 'Fixes #0'", "links #6 via Fixes"),
        fail_to_pass=(f"{_CORE}::test_power_negative_exponent",),
        pass_to_pass=(
            f"{_CORE}::test_add", f"{_CORE}::test_mul", f"{_CORE}::test_div",
            f"{_CORE}::test_div_by_zero", f"{_CORE}::test_mul_negative",
            f"{_CORE}::test_add_floats",
        ),
        linked_issues=((REPO_NAME, 6),),
        code_files=("src/calc/core.py",), test_files=(_CORE,),
    ),
    DemoPR(
        20, "Load values from binary files", "squash",
        ("binary test fixture read by the test", "new test file"),
        fail_to_pass=("tests/test_io.py::test_load_values", "tests/test_io.py::test_bad_magic"),
        code_files=("src/calc/io.py",), test_files=("tests/data/values.bin", "tests/test_io.py"),
        binary_patch=True,
    ),
    DemoPR(
        21, "Format Kelvin without a degree sign", "merge",
        ("non-UTF-8 (latin-1) source file: carried as a git binary patch",),
        fail_to_pass=("tests/test_units.py::test_kelvin_has_no_degree_sign",),
        pass_to_pass=("tests/test_units.py::test_celsius_to_fahrenheit",
                      "tests/test_units.py::test_celsius_format"),
        code_files=("src/calc/units.py",), test_files=("tests/test_units.py",),
        binary_patch=True,
    ),
    DemoPR(
        22, "Support the modulo operator", "squash",
        ("tests still fail with the fix (operator never tokenized)",),
        validate=Reason.FAILS_AFTER,
        code_files=("src/calc/parse.py",), test_files=("tests/test_modulo.py",),
    ),
    DemoPR(
        23, "Make unary minus bind looser than power", "merge",
        ("bug fix closing two issues", "plus an issue in another repository"),
        fail_to_pass=(f"{_PARSE}::test_unary_minus_binds_looser_than_power",),
        pass_to_pass=(
            f"{_PARSE}::test_tokenize_numbers", f"{_PARSE}::test_precedence",
            f"{_PARSE}::test_parentheses", f"{_PARSE}::TestErrors::test_unknown_character",
            f"{_PARSE}::TestErrors::test_missing_paren",
            f"{_PARSE}::test_tokenize_tabs_and_newlines",
        ),
        linked_issues=((REPO_NAME, 7), (REPO_NAME, 8), ("other-org/mathlib", 2)),
        code_files=("src/calc/parse.py",), test_files=(_PARSE,),
    ),
    DemoPR(
        24, "Fix argument order of sub()", "squash",
        ("ONE-parent commit titled 'Merge pull request #24 from …' (rebase-merged)",),
        fail_to_pass=(f"{_CORE}::test_sub_order",),
        pass_to_pass=(
            f"{_CORE}::test_add", f"{_CORE}::test_mul", f"{_CORE}::test_div",
            f"{_CORE}::test_div_by_zero", f"{_CORE}::test_mul_negative",
            f"{_CORE}::test_add_floats", f"{_CORE}::test_power_negative_exponent",
        ),
        code_files=("src/calc/core.py",), test_files=(_CORE,),
    ),
    DemoPR(
        25, "Fix mean of an empty list", "merge",
        ("TWO-parent merge titled '… (#25)'", "re-runs the flaky test of #18"),
        fail_to_pass=(f"{_STATS}::test_mean_empty_raises",),
        pass_to_pass=(f"{_STATS}::test_mean", f"{_STATS}::test_median_odd",
                      f"{_STATS}::test_median_even", f"{_STATS}::test_median_unsorted"),
        flaky=(f"{_STATS}::test_median_random_sample",),
        code_files=("src/calc/stats.py",), test_files=(_STATS,),
    ),
)  # fmt: skip

DEMO_PRS_BY_NUMBER: dict[int, DemoPR] = {p.number: p for p in DEMO_PRS}


@dataclasses.dataclass(frozen=True)
class DemoRepo:
    """The created repository: where, its owner/name, and the sha each PR was merged as."""

    path: Path
    name: str = REPO_NAME
    default_branch: str = DEFAULT_BRANCH
    release_branch: str = RELEASE_BRANCH
    merge_commits: tuple[tuple[int, str], ...] = ()
    prs: tuple[DemoPR, ...] = DEMO_PRS

    def merge_commit(self, number: int) -> str:
        return dict(self.merge_commits)[number]


# --------------------------------------------------------------------------- file contents


def _src(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


PYPROJECT = _src("""
    [build-system]
    requires = ["setuptools>=61"]
    build-backend = "setuptools.build_meta"

    [project]
    name = "calc"
    version = "0.1.0"
    description = "A tiny calculator library (the smelter demo package)"
    readme = "README.md"
    requires-python = ">=3.9"
    dependencies = []

    [project.optional-dependencies]
    test = ["pytest>=7"]

    [tool.setuptools.packages.find]
    where = ["src"]

    [tool.pytest.ini_options]
    testpaths = ["tests"]
    pythonpath = ["src"]
""")

README = _src("""
    # calc

    A tiny calculator library: arithmetic, an expression evaluator and unit conversions.

    ```python
    from calc.parse import evaluate
    evaluate("1 + 2 * 3")  # 7
    ```
""")

INIT = _src('''
    """calc: a tiny calculator library."""

    __version__ = "0.1.0"
''')

CORE_V1 = _src('''
    """Arithmetic on numbers."""


    class CalcError(ValueError):
        """Raised for a calculation that has no answer."""


    def add(a, b):
        return a + b


    def sub(a, b):
        return b - a


    def mul(a, b):
        return a * b


    def div(a, b):
        return a / b


    def power(base, exp):
        result = 1
        for _ in range(exp):
            result *= base
        return result
''')

PARSE_V1 = _src('''
    """Tokenize and evaluate arithmetic expressions such as ``2 * (3 + 4)``."""

    from calc.core import CalcError, div


    def tokenize(text):
        """Split an expression into numbers and operator characters."""
        tokens = []
        i = 0
        while i < len(text):
            ch = text[i]
            if ch == " ":
                i += 1
                continue
            if ch.isdigit() or ch == ".":
                j = i
                while j < len(text) and (text[j].isdigit() or text[j] == "."):
                    j += 1
                word = text[i:j]
                tokens.append(float(word) if "." in word else int(word))
                i = j
                continue
            if ch in "+-*/()^":
                tokens.append(ch)
                i += 1
                continue
            raise CalcError("unexpected character %r at %d" % (ch, i))
        return tokens


    class _Parser:
        def __init__(self, tokens):
            self.tokens = tokens
            self.pos = 0

        def peek(self):
            return self.tokens[self.pos] if self.pos < len(self.tokens) else None

        def take(self):
            tok = self.peek()
            self.pos += 1
            return tok

        def expr(self):
            value = self.term()
            while self.peek() in ("+", "-"):
                op = self.take()
                rhs = self.term()
                value = value + rhs if op == "+" else value - rhs
            return value

        def term(self):
            value = self.factor()
            while self.peek() in ("*", "/"):
                op = self.take()
                rhs = self.factor()
                value = value * rhs if op == "*" else div(value, rhs)
            return value

        def factor(self):
            base = self.unary()
            if self.peek() == "^":
                self.take()
                return base ** self.factor()
            return base

        def unary(self):
            if self.peek() == "-":
                self.take()
                return -self.atom()
            return self.atom()

        def atom(self):
            tok = self.take()
            if tok == "(":
                value = self.expr()
                if self.take() != ")":
                    raise CalcError("missing closing parenthesis")
                return value
            if isinstance(tok, (int, float)):
                return tok
            raise CalcError("unexpected token %r" % (tok,))


    def evaluate(text):
        """The value of an arithmetic expression."""
        parser = _Parser(tokenize(text))
        value = parser.expr()
        if parser.peek() is not None:
            raise CalcError("unexpected token %r" % (parser.peek(),))
        return value
''')

UNITS_V1 = _src('''
    # -*- coding: latin-1 -*-
    """Temperature conversions. This file predates UTF-8 in the project: it is latin-1."""

    DEGREE = "\xb0"


    def celsius_to_fahrenheit(celsius):
        return celsius * 9 / 5 + 32


    def format_temperature(value, unit="C"):
        return "%.1f%s%s" % (value, DEGREE, unit)
''').encode("latin-1")

TEST_CORE_V1 = _src("""
    from calc.core import add, div, mul


    def test_add():
        assert add(2, 3) == 5


    def test_mul():
        assert mul(4, 2.5) == 10


    def test_div():
        assert div(7, 2) == 3.5
""")

TEST_PARSE_V1 = _src("""
    import pytest

    from calc.core import CalcError
    from calc.parse import evaluate, tokenize


    def test_tokenize_numbers():
        assert tokenize("12 + 3.5") == [12, "+", 3.5]


    def test_precedence():
        assert evaluate("1 + 2 * 3") == 7


    def test_parentheses():
        assert evaluate("(1 + 2) * 3") == 9


    class TestErrors:
        def test_unknown_character(self):
            with pytest.raises(CalcError):
                tokenize("1 $ 2")

        def test_missing_paren(self):
            with pytest.raises(CalcError):
                evaluate("(1 + 2")
""")

TEST_UNITS_V1 = _src("""
    from calc.units import celsius_to_fahrenheit, format_temperature


    def test_celsius_to_fahrenheit():
        assert celsius_to_fahrenheit(100) == 212


    def test_celsius_format():
        assert format_temperature(21.5) == "21.5\u00b0C"
""")

CI_WORKFLOW = _src("""
    name: tests
    on: [push, pull_request]
    jobs:
      test:
        runs-on: ubuntu-latest
        steps:
          - uses: actions/checkout@v4
          - uses: actions/setup-python@v5
            with:
              python-version: "3.11"
          - run: pip install -e .[test] && pytest
""")


def _values_bin() -> bytes:
    import struct

    values = (1.5, -2.25, 1e-3, 42.0)
    return b"CALC" + struct.pack("<I", len(values)) + struct.pack(f"<{len(values)}d", *values)


NOISY_BODY = _src("""
    <!--
    Thank you for your contribution! Please read CONTRIBUTING.md before opening a PR.
    If this PR fixes an issue, write "Fixes #<number>" below, e.g. Fixes #0
    -->

    ## Description
    <!-- Describe your change. What problem does it solve? -->
    `power(2, -1)` returned 1 instead of 0.5: the loop never ran for a negative exponent.

    Fixes #6

    ## Checklist
    - [x] I have added tests that prove my fix is effective
    - [x] I have updated the documentation (if needed)
    - [ ] I have added an entry to CHANGELOG.md

    ## Type of change
    - [x] Bug fix (non-breaking change which fixes an issue)
    - [ ] New feature

    <!-- Reviewable:start -->
    This change is [<img src="https://reviewable.io/review_button.svg" height="34">](https://reviewable.io/reviews/smelter-demo/calc/19)
    <!-- Reviewable:end -->

    ---
    :robot: This pull request was labelled automatically by calc-bot. Commands: `@calc-bot rebase`
""")


# --------------------------------------------------------------------------- builder


def _edit(text: _T, old: _T, new: _T) -> _T:
    """``text`` with ``old`` replaced; fails loudly if ``old`` is gone (the demo drifted)."""
    if old not in text:
        raise AssertionError(f"demo source drifted: {old!r} not found")
    return text.replace(old, new)


def write_tree(root: Path, files: dict[str, str | bytes | None]) -> None:
    """Write ``{relative path: content}`` under ``root``; ``None`` deletes the file."""
    for rel, content in files.items():
        p = root / rel
        if content is None:
            p.unlink()
            continue
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content.encode() if isinstance(content, str) else content)


class _Builder:
    """Runs git with a fixed environment and a clock that only moves forward."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.clock = _EPOCH
        self.home = path / ".git" / "smelter-home"

    def tick(self, hours: float = 1) -> int:
        self.clock += int(hours * 3600)
        return self.clock

    def git(self, *args: str, author: str = "maintainer", committer: tuple[str, str] | None = None,
            input: bytes | None = None) -> str:  # fmt: skip
        an, ae = _PEOPLE[author]
        cn, ce = committer or (an, ae)
        date = f"{self.clock} +0000"
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "LC_ALL": "C",
            "TZ": "UTC",
            "GIT_AUTHOR_NAME": an, "GIT_AUTHOR_EMAIL": ae, "GIT_AUTHOR_DATE": date,
            "GIT_COMMITTER_NAME": cn, "GIT_COMMITTER_EMAIL": ce, "GIT_COMMITTER_DATE": date,
        }  # fmt: skip
        proc = subprocess.run(
            ["git", "-c", "commit.gpgsign=false", "-c", "core.autocrlf=false",
             "-c", "merge.ff=false", "-C", str(self.path), *args],
            env=env, input=input, capture_output=True, check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            raise RuntimeError(f"git {' '.join(args)}: {proc.stderr.decode(errors='replace')}")
        return proc.stdout.decode().strip()

    def write(self, files: dict[str, str | bytes | None]) -> None:
        write_tree(self.path, files)

    def commit(self, message: str, files: dict[str, str | bytes | None], *,
               author: str = "maintainer", committer: tuple[str, str] | None = None,
               hours: float = 1) -> str:  # fmt: skip
        self.tick(hours)
        self.write(files)
        self.git("add", "-A")
        self.git("commit", "-q", "-m", message, author=author, committer=committer)
        return self.git("rev-parse", "HEAD")

    def branch(self, name: str, start: str = DEFAULT_BRANCH) -> None:
        self.git("checkout", "-q", "-b", name, start)

    def checkout(self, name: str) -> None:
        self.git("checkout", "-q", name)

    def merge(self, branch: str, message: str, *, author: str = "maintainer") -> str:
        self.checkout(DEFAULT_BRANCH)
        self.tick(2)
        self.git("merge", "-q", "--no-ff", "-m", message, branch, author=author,
                 committer=_GITHUB)  # fmt: skip
        self.git("branch", "-q", "-D", branch)
        return self.git("rev-parse", "HEAD")

    def squash(self, message: str, files: dict[str, str | bytes | None], author: str) -> str:
        self.checkout(DEFAULT_BRANCH)
        return self.commit(message, files, author=author, committer=_GITHUB, hours=26)


def _merge_message(number: int, head: str, title: str, body: str) -> str:
    return f"Merge pull request #{number} from {head}\n\n{title}\n\n{body}".rstrip() + "\n"


def create_demo_repo(path: Path) -> DemoRepo:
    """Create the demo upstream repository at ``path`` (must not exist or be empty)."""
    path = Path(path)
    if path.exists() and any(path.iterdir()):
        raise FileExistsError(f"{path} exists and is not empty")
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["git", "init", "-q", f"--initial-branch={DEFAULT_BRANCH}", str(path)],
        check=True, capture_output=True, env={**os.environ, "GIT_CONFIG_NOSYSTEM": "1"},
    )  # fmt: skip
    b = _Builder(path)
    b.home.mkdir(parents=True, exist_ok=True)
    merges: dict[int, str] = {}
    core, parse = CORE_V1, PARSE_V1
    test_core, test_parse = TEST_CORE_V1, TEST_PARSE_V1

    b.commit("Initial commit", {
        "pyproject.toml": PYPROJECT, "README.md": README, "src/calc/__init__.py": INIT,
        "src/calc/core.py": core, "src/calc/parse.py": parse, "src/calc/units.py": UNITS_V1,
        "tests/test_core.py": test_core, "tests/test_parse.py": test_parse,
        "tests/test_units.py": TEST_UNITS_V1,
        ".gitignore": "__pycache__/\n*.egg-info/\n.pytest_cache/\n",
    })  # fmt: skip
    b.commit("Add CI workflow", {".github/workflows/tests.yml": CI_WORKFLOW})
    fork_point = b.git("rev-parse", "HEAD")

    # #11: merge, two commits on the branch, changelog.
    b.branch("fix-div-zero")
    test_core = _edit(test_core, "from calc.core import add, div, mul", _src("""
        import pytest

        from calc.core import CalcError, add, div, mul""").rstrip()) + _src("""


        def test_div_by_zero():
            with pytest.raises(CalcError, match="division by zero"):
                div(1, 0)
    """)  # fmt: skip
    b.commit("Add a test for division by zero", {"tests/test_core.py": test_core}, author="alice")
    core_11 = _edit(core, "def div(a, b):\n    return a / b", _src('''
        def div(a, b):
            if b == 0:
                raise CalcError("division by zero")
            return a / b''').rstrip())  # fmt: skip
    core = core_11
    b.commit("Raise CalcError on division by zero", {
        "src/calc/core.py": core,
        "CHANGELOG.md": "# Changelog\n\n- div() raises CalcError on zero\n",
    }, author="alice")  # fmt: skip
    merges[11] = b.merge("fix-div-zero", _merge_message(
        11, "alice/fix-div-zero", "Fix division by zero handling",
        "Dividing by zero raised a bare ZeroDivisionError; callers catch CalcError.\n\nFixes #3",
    ))  # fmt: skip

    # #13 forks here and lands after #12.
    b.branch("stats")
    stats = _src('''
        """Descriptive statistics."""


        def mean(values):
            return sum(values) / len(values)


        def median(values):
            n = len(values)
            mid = n // 2
            if n % 2:
                return values[mid]
            return (values[mid - 1] + values[mid]) / 2
    ''')
    b.commit("Add calc.stats with mean and median", {"src/calc/stats.py": stats}, author="carol")

    # #12: squash, tokenizer whitespace.
    parse = _edit(parse, '        if ch == " ":', "        if ch.isspace():")
    test_parse = _edit(test_parse, _src('''
        def test_precedence():'''), _src('''
        def test_tokenize_tabs_and_newlines():
            assert tokenize("1 +\\t2\\n") == [1, "+", 2]


        def test_precedence():'''))  # fmt: skip
    merges[12] = b.squash(
        "Handle tabs and newlines in expressions (#12)\n\n"
        "The tokenizer only skipped spaces, so pasted expressions failed.\n\n"
        "Closes smelter-demo/calc#4\n\nCo-authored-by: Dan Diaz <dan@calc.example>\n",
        {"src/calc/parse.py": parse, "tests/test_parse.py": test_parse}, author="bob",
    )  # fmt: skip

    # #13: merge of the branch forked before #12.
    b.checkout("stats")
    test_stats = _src("""
        from calc.stats import mean, median


        def test_mean():
            assert mean([1, 2, 3, 4]) == 2.5


        def test_median_odd():
            assert median([1, 2, 9]) == 2


        def test_median_even():
            assert median([1, 2, 3, 10]) == 2.5
    """)
    b.commit("Test mean and median; document them", {
        "tests/test_stats.py": test_stats,
        "README.md": README + "\nStatistics: `calc.stats.mean` and `calc.stats.median`.\n",
    }, author="carol")  # fmt: skip
    merges[13] = b.merge("stats", _merge_message(
        13, "carol/stats", "Add statistics module",
        "Adds mean() and median().\n\nResolves https://github.com/smelter-demo/calc/issues/5",
    ))  # fmt: skip

    # #14: docs only.
    merges[14] = b.squash("Document operator precedence (#14)", {
        "docs/precedence.md": "# Precedence\n\n`^` binds tighter than `*` and `/`, which bind "
        "tighter than `+` and `-`.\n",
    }, author="dan")  # fmt: skip

    # #15: code only.
    b.branch("faster-tokenizer")
    parse = _edit(
        parse,
        "from calc.core import CalcError, div\n",
        'from calc.core import CalcError, div\n\n_OPERATORS = frozenset("+-*/()^")\n',
    )
    parse = _edit(parse, '        if ch in "+-*/()^":', "        if ch in _OPERATORS:")
    b.commit("Look operators up in a frozenset", {"src/calc/parse.py": parse}, author="bob")
    merges[15] = b.merge("faster-tokenizer", _merge_message(
        15, "bob/faster-tokenizer", "Speed up the tokenizer", "A set lookup instead of a scan.",
    ))  # fmt: skip

    # Not a PR: a two-parent merge without a number.
    b.branch("typo-fix")
    b.commit("Fix a typo in the README", {"README.md": (path / "README.md").read_text().replace(
        "unit conversions", "temperature conversions")})  # fmt: skip
    b.merge("typo-fix", "Merge branch 'typo-fix'")

    # #16: tests only.
    test_core += _src("""


        def test_mul_negative():
            assert mul(-2, 3) == -6
    """)
    merges[16] = b.squash("Add tests for negative multiplication (#16)",
                          {"tests/test_core.py": test_core}, author="dan")  # fmt: skip

    # #17: the new test passes without the code change.
    b.branch("refactor-add")
    core = _edit(core, "def add(a, b):\n    return a + b", _src('''
        def add(a, b):
            """The sum of two numbers."""
            total = a + b
            return total''').rstrip())  # fmt: skip
    test_core += _src("""


        def test_add_floats():
            assert add(0.5, 0.25) == 0.75
    """)
    b.commit("Refactor add()", {"src/calc/core.py": core, "tests/test_core.py": test_core},
             author="alice")  # fmt: skip
    merges[17] = b.merge("refactor-add", _merge_message(
        17, "alice/refactor-add", "Refactor add() and document it", "No behaviour change.",
    ))  # fmt: skip

    # #18: median fix + a flaky test.
    stats = _edit(stats, "    n = len(values)", "    values = sorted(values)\n    n = len(values)")
    test_stats = _edit(test_stats, "from calc.stats", "import os\n\nfrom calc.stats") + _src('''


        def test_median_unsorted():
            assert median([9, 1, 2]) == 2


        def test_median_random_sample():
            # The sample size depends on the run: an even-sized sample has a fractional median,
            # so this test fails on every other rerun (a flaky test, on purpose).
            attempt = int(os.environ.get("SMELTER_ATTEMPT", "0"))
            sample = list(range(101 + attempt % 2))
            assert median(sample) == 50
    ''')  # fmt: skip
    merges[18] = b.squash("Fix median of unsorted data (#18)\n\nmedian() assumed sorted input.\n",
                          {"src/calc/stats.py": stats, "tests/test_stats.py": test_stats},
                          author="carol")  # fmt: skip

    # #19: noisy description.
    b.branch("negative-power")
    core = _edit(core, "def power(base, exp):\n", "def power(base, exp):\n    if exp < 0:\n"
                        "        return 1 / power(base, -exp)\n")  # fmt: skip
    test_core = _edit(test_core, "add, div, mul\n", "add, div, mul, power\n") + _src("""


        def test_power_negative_exponent():
            assert power(2, -1) == 0.5
            assert power(2, 3) == 8
    """)  # fmt: skip
    b.commit(
        "Handle negative exponents",
        {"src/calc/core.py": core, "tests/test_core.py": test_core},
        author="dan",
    )
    merges[19] = b.merge(
        "negative-power",
        _merge_message(
            19, "dan/negative-power", "Fix power() with a negative exponent", NOISY_BODY
        ),
    )

    # #20: binary fixture.
    io_py = _src('''
        """Read numbers stored by other tools."""

        import struct

        from calc.core import CalcError


        def load_values(path):
            """The float64 values of a ``CALC`` file: magic, uint32 count, little-endian doubles."""
            with open(path, "rb") as f:
                data = f.read()
            if data[:4] != b"CALC":
                raise CalcError("not a CALC file: %s" % path)
            (count,) = struct.unpack_from("<I", data, 4)
            return list(struct.unpack_from("<%dd" % count, data, 8))
    ''')
    test_io = _src("""
        from pathlib import Path

        import pytest

        from calc.core import CalcError
        from calc.io import load_values

        DATA = Path(__file__).parent / "data"


        def test_load_values():
            assert load_values(DATA / "values.bin") == [1.5, -2.25, 1e-3, 42.0]


        def test_bad_magic(tmp_path):
            bad = tmp_path / "bad.bin"
            bad.write_bytes(b"NOPE\\x00\\x00\\x00\\x00")
            with pytest.raises(CalcError):
                load_values(bad)
    """)
    merges[20] = b.squash(
        "Load values from binary files (#20)\n\n"
        "The data logger exports little-endian binary files (magic b'CALC', a uint32 count,\n"
        "then that many doubles) and calc has no way to read them. Add\n"
        "calc.io.load_values(path) returning the floats, raising CalcError when the magic\n"
        "number is wrong.", {
        "src/calc/io.py": io_py, "tests/test_io.py": test_io,
        "tests/data/values.bin": _values_bin(),
    }, author="bob")  # fmt: skip

    # #21: latin-1 source file.
    b.branch("kelvin")
    units = _edit(
        UNITS_V1,
        b'    return "%.1f%s%s" % (value, DEGREE, unit)\n',
        b'    if unit == "K":\n        return "%.1fK" % value\n'
        b'    return "%.1f%s%s" % (value, DEGREE, unit)\n',
    ).replace(b'DEGREE = "\xb0"\n', b'DEGREE = "\xb0"  # the degree sign, \xb0\n')
    test_units = TEST_UNITS_V1 + _src("""


        def test_kelvin_has_no_degree_sign():
            assert format_temperature(300, "K") == "300.0K"
    """)
    b.commit(
        "Kelvin has no degree sign",
        {"src/calc/units.py": units, "tests/test_units.py": test_units},
        author="alice",
    )
    merges[21] = b.merge(
        "kelvin",
        _merge_message(
            21, "alice/kelvin", "Format Kelvin without a degree sign", "300 K, not 300 °K."
        ),
    )

    # #22: the fix is incomplete; its test fails after.
    parse_22 = _edit(
        parse,
        '        while self.peek() in ("*", "/"):',
        '        while self.peek() in ("*", "/", "%"):',
    )
    parse_22 = _edit(
        parse_22,
        '            value = value * rhs if op == "*" else div(value, rhs)',
        '            if op == "%":\n                value = value % rhs\n'
        '            else:\n                value = value * rhs if op == "*" else '
        "div(value, rhs)",
    )
    parse = parse_22
    merges[22] = b.squash("Support the modulo operator (#22)", {
        "src/calc/parse.py": parse,
        "tests/test_modulo.py": 'from calc.parse import evaluate\n\n\ndef test_modulo():\n'
        '    assert evaluate("7 % 3") == 1\n',
    }, author="dan")  # fmt: skip

    # #23: closes two issues here and one elsewhere.
    b.branch("unary-minus")
    old_factor = (
        "    def factor(self):\n"
        "        base = self.unary()\n"
        '        if self.peek() == "^":\n'
        "            self.take()\n"
        "            return base ** self.factor()\n"
        "        return base\n"
        "\n"
        "    def unary(self):\n"
        '        if self.peek() == "-":\n'
        "            self.take()\n"
        "            return -self.atom()\n"
        "        return self.atom()\n"
    )
    new_factor = (
        "    def factor(self):\n"
        '        if self.peek() == "-":\n'
        "            self.take()\n"
        "            return -self.factor()\n"
        "        base = self.atom()\n"
        '        if self.peek() == "^":\n'
        "            self.take()\n"
        "            return base ** self.factor()\n"
        "        return base\n"
    )
    if old_factor not in parse:
        raise AssertionError("demo source drifted: factor() not found")
    parse = _edit(parse, old_factor, new_factor)
    test_parse += _src("""


        def test_unary_minus_binds_looser_than_power():
            assert evaluate("-2^2") == -4
            assert evaluate("-(3)") == -3
    """)
    b.commit(
        "Parse unary minus below power",
        {"src/calc/parse.py": parse, "tests/test_parse.py": test_parse},
        author="bob",
    )
    merges[23] = b.merge("unary-minus", _merge_message(
        23, "bob/unary-minus", "Make unary minus bind looser than power",
        "`-2^2` evaluated to 4.\n\nFixes #7\nfixes: smelter-demo/calc#8\n"
        "Also closes other-org/mathlib#2, which tracked the same bug upstream.",
    ))  # fmt: skip

    # #24: ONE parent, titled like a merge (rebase-merged).
    core = _edit(core, "def sub(a, b):\n    return b - a", "def sub(a, b):\n    return a - b")
    test_core = _edit(test_core, "mul, power\n", "mul, power, sub\n")
    test_core += _src("""


        def test_sub_order():
            assert sub(5, 3) == 2
    """)
    merges[24] = b.squash(
        "Merge pull request #24 from bob/fix-sub-order\n\nFix argument order of sub()\n\n"
        "sub(a, b) computed b - a.",
        {"src/calc/core.py": core, "tests/test_core.py": test_core},
        author="bob",
    )

    # #25: TWO parents, titled like a squash.
    b.branch("mean-empty")
    stats = _edit(stats, '"""Descriptive statistics."""\n', '"""Descriptive statistics."""\n\n'
                          "from calc.core import CalcError\n")  # fmt: skip
    stats = _edit(stats, "def mean(values):\n", "def mean(values):\n    if not values:\n"
                          '        raise CalcError("mean of empty data")\n')  # fmt: skip
    test_stats = _edit(test_stats, "import os\n", "import os\n\nimport pytest\n").replace(
        "from calc.stats import mean, median\n",
        "from calc.core import CalcError\nfrom calc.stats import mean, median\n",
    ) + _src("""


        def test_mean_empty_raises():
            with pytest.raises(CalcError):
                mean([])
    """)
    b.commit(
        "Raise CalcError for the mean of nothing",
        {"src/calc/stats.py": stats, "tests/test_stats.py": test_stats},
        author="carol",
    )
    merges[25] = b.merge("mean-empty", "Fix mean of an empty list (#25)\n\nmean([]) raised "
                         "ZeroDivisionError.\n")  # fmt: skip

    # release-0.1: a backport of #11 squashed on a maintenance branch.
    b.branch(RELEASE_BRANCH, fork_point)
    b.commit("Fix division by zero handling (#11)\n\nBackport of #11.", {
        "src/calc/core.py": _edit(CORE_V1, "def div(a, b):\n    return a / b", _src('''
            def div(a, b):
                if b == 0:
                    raise CalcError("division by zero")
                return a / b''').rstrip()),
        "tests/test_core.py": _edit(TEST_CORE_V1, "from calc.core import add, div, mul", _src("""
            import pytest

            from calc.core import CalcError, add, div, mul""").rstrip()) + _src("""


            def test_div_by_zero():
                with pytest.raises(CalcError):
                    div(1, 0)
        """),
    }, author="maintainer", committer=_GITHUB)  # fmt: skip
    b.checkout(DEFAULT_BRANCH)
    return DemoRepo(path=path, merge_commits=tuple(sorted(merges.items())))
