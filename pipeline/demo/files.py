"""The demo repository's file contents at its first commit, and a noisy PR description.

``build.create_demo_repo`` commits these, then edits them PR by PR. ``UNITS_V1`` is bytes:
latin-1 with a coding cookie, the non-UTF-8 source file the pipeline must carry.
"""

from __future__ import annotations

import textwrap


def dedent(text: str) -> str:
    """A file's contents written as an indented literal: dedented, leading newline dropped."""
    return textwrap.dedent(text).lstrip("\n")


PYPROJECT = dedent("""
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

README = dedent("""
    # calc

    A tiny calculator library: arithmetic, an expression evaluator and unit conversions.

    ```python
    from calc.parse import evaluate
    evaluate("1 + 2 * 3")  # 7
    ```
""")

INIT = dedent('''
    """calc: a tiny calculator library."""

    __version__ = "0.1.0"
''')

CORE_V1 = dedent('''
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

PARSE_V1 = dedent('''
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

UNITS_V1 = dedent('''
    # -*- coding: latin-1 -*-
    """Temperature conversions. This file predates UTF-8 in the project: it is latin-1."""

    DEGREE = "\xb0"


    def celsius_to_fahrenheit(celsius):
        return celsius * 9 / 5 + 32


    def format_temperature(value, unit="C"):
        return "%.1f%s%s" % (value, DEGREE, unit)
''').encode("latin-1")

TEST_CORE_V1 = dedent("""
    from calc.core import add, div, mul


    def test_add():
        assert add(2, 3) == 5


    def test_mul():
        assert mul(4, 2.5) == 10


    def test_div():
        assert div(7, 2) == 3.5
""")

TEST_PARSE_V1 = dedent("""
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

TEST_UNITS_V1 = dedent("""
    from calc.units import celsius_to_fahrenheit, format_temperature


    def test_celsius_to_fahrenheit():
        assert celsius_to_fahrenheit(100) == 212


    def test_celsius_format():
        assert format_temperature(21.5) == "21.5\u00b0C"
""")

CI_WORKFLOW = dedent("""
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


def values_bin() -> bytes:
    import struct

    values = (1.5, -2.25, 1e-3, 42.0)
    return b"CALC" + struct.pack("<I", len(values)) + struct.pack(f"<{len(values)}d", *values)


NOISY_BODY = dedent("""
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
