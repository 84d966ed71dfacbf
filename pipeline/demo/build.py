"""Creating the demo git repository: ``create_demo_repo(path)``.

Deliberate choices:
- Fixed author/committer names and dates and a fixed git environment (no user or system
  config), so the commit shas are the same on every machine and every run.
- Each PR is replayed as it landed (merge commits, squashes, a rebase-merge, a backport on
  ``release-0.1``); what each is meant to exercise is in ``prs.DEMO_PRS``.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
from pathlib import Path
from typing import TypeVar

from smelter.pipeline.demo.files import (
    CI_WORKFLOW,
    CORE_V1,
    INIT,
    NOISY_BODY,
    PARSE_V1,
    PYPROJECT,
    README,
    TEST_CORE_V1,
    TEST_PARSE_V1,
    TEST_UNITS_V1,
    UNITS_V1,
    dedent,
    values_bin,
)
from smelter.pipeline.demo.prs import DEMO_PRS, REPO_NAME, DemoPR

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
    test_core = _edit(test_core, "from calc.core import add, div, mul", dedent("""
        import pytest

        from calc.core import CalcError, add, div, mul""").rstrip()) + dedent("""


        def test_div_by_zero():
            with pytest.raises(CalcError, match="division by zero"):
                div(1, 0)
    """)  # fmt: skip
    b.commit("Add a test for division by zero", {"tests/test_core.py": test_core}, author="alice")
    core_11 = _edit(core, "def div(a, b):\n    return a / b", dedent('''
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
    stats = dedent('''
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
    test_parse = _edit(test_parse, dedent('''
        def test_precedence():'''), dedent('''
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
    test_stats = dedent("""
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
    test_core += dedent("""


        def test_mul_negative():
            assert mul(-2, 3) == -6
    """)
    merges[16] = b.squash("Add tests for negative multiplication (#16)",
                          {"tests/test_core.py": test_core}, author="dan")  # fmt: skip

    # #17: the new test passes without the code change.
    b.branch("refactor-add")
    core = _edit(core, "def add(a, b):\n    return a + b", dedent('''
        def add(a, b):
            """The sum of two numbers."""
            total = a + b
            return total''').rstrip())  # fmt: skip
    test_core += dedent("""


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
    test_stats = _edit(test_stats, "from calc.stats", "import os\n\nfrom calc.stats") + dedent('''


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
    test_core = _edit(test_core, "add, div, mul\n", "add, div, mul, power\n") + dedent("""


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
    io_py = dedent('''
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
    test_io = dedent("""
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
        "tests/data/values.bin": values_bin(),
    }, author="bob")  # fmt: skip

    # #21: latin-1 source file.
    b.branch("kelvin")
    units = _edit(
        UNITS_V1,
        b'    return "%.1f%s%s" % (value, DEGREE, unit)\n',
        b'    if unit == "K":\n        return "%.1fK" % value\n'
        b'    return "%.1f%s%s" % (value, DEGREE, unit)\n',
    ).replace(b'DEGREE = "\xb0"\n', b'DEGREE = "\xb0"  # the degree sign, \xb0\n')
    test_units = TEST_UNITS_V1 + dedent("""


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
    test_parse += dedent("""


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
    test_core += dedent("""


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
    ) + dedent("""


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
        "src/calc/core.py": _edit(CORE_V1, "def div(a, b):\n    return a / b", dedent('''
            def div(a, b):
                if b == 0:
                    raise CalcError("division by zero")
                return a / b''').rstrip()),
        "tests/test_core.py": _edit(TEST_CORE_V1, "from calc.core import add, div, mul", dedent("""
            import pytest

            from calc.core import CalcError, add, div, mul""").rstrip()) + dedent("""


            def test_div_by_zero():
                with pytest.raises(CalcError):
                    div(1, 0)
        """),
    }, author="maintainer", committer=_GITHUB)  # fmt: skip
    b.checkout(DEFAULT_BRANCH)
    return DemoRepo(path=path, merge_commits=tuple(sorted(merges.items())))
