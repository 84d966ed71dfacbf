"""normalize_v1: golden files for typical issue / PR texts, and the rules one by one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from smelter.transforms.clean.normalize import NORMALIZER_VERSION, normalize_statement

GOLDEN = Path(__file__).parent / "data" / "normalize"
CASES = sorted(p for p in GOLDEN.glob("*.md") if not p.name.endswith(".expected.md"))


@pytest.mark.parametrize("case", CASES, ids=[p.stem for p in CASES])
def test_golden(case: Path) -> None:
    """Regenerate after a deliberate rule change: SMELTER_UPDATE_GOLDEN=1 (and bump the version)."""
    expected_path = case.with_suffix(".expected.md")
    got = normalize_statement(case.read_text(encoding="utf-8"))
    if os.environ.get("SMELTER_UPDATE_GOLDEN"):
        expected_path.write_text(got + "\n", encoding="utf-8")
    assert got + "\n" == expected_path.read_text(encoding="utf-8")


def test_golden_cases_exist() -> None:
    assert len(CASES) >= 3


def test_version_name() -> None:
    assert NORMALIZER_VERSION == "normalize_v1"


def test_idempotent() -> None:
    for case in CASES:
        once = normalize_statement(case.read_text(encoding="utf-8"))
        assert normalize_statement(once) == once


def test_html_comments_removed_inline_and_multiline() -> None:
    text = "Crash on start <!-- write here --> with `-x`.\n<!--\nmulti\nline\n-->\nDetails."
    assert normalize_statement(text) == "Crash on start  with `-x`.\nDetails."


def test_fenced_code_is_verbatim_even_with_noise_inside() -> None:
    code = (
        "```python\n<!-- not a comment here -->\n- [ ] not a checklist   \nFixes #3\n\n\n\n"
        "x = 1\n```"
    )
    text = f"Broken:\n\n{code}\n\nFixes #3"
    assert normalize_statement(text) == f"Broken:\n\n{code}"


def test_tilde_fence_and_longer_fence_closing() -> None:
    text = "See:\n~~~~\n```\n![img](x.png)\n~~~~\nafter"
    assert normalize_statement(text) == text


def test_unfenced_traceback_kept_byte_for_byte() -> None:
    tb = (
        "Traceback (most recent call last):\n"
        '  File "a.py", line 1, in <module>   \n'
        "    f()\n"
        "KeyError: 'x'"
    )
    text = f"Running it gives\n{tb}\n\n\n\nThanks!"
    out = normalize_statement(text)
    assert tb in out
    assert "\n\n\n" not in out


def test_indented_code_block_verbatim() -> None:
    text = "Output:\n\n    <!-- kept -->   \n    - [ ] kept\n\nEnd."
    assert normalize_statement(text) == text


def test_checklists() -> None:
    text = (
        "Real text about `foo()`.\n"
        "- [ ] I have added tests\n"
        "* [x] I have searched existing issues\n"
        "- [x] `foo()` returns None on empty input\n"
    )
    assert normalize_statement(text) == (
        "Real text about `foo()`.\n- [x] `foo()` returns None on empty input"
    )


@pytest.mark.parametrize(
    "line",
    [
        "Fixes #12",
        "fixes: #12",
        "Closes acme/dates#13, #14.",
        "Resolves https://github.com/acme/dates/issues/9",
        "- Fixed #1 and #2",
        "**Fixes** #5",
    ],
)
def test_closing_keyword_lines(line: str) -> None:
    assert normalize_statement(f"The parser fails on leap days.\n{line}") == (
        "The parser fails on leap days."
    )


def test_closing_keyword_inside_a_sentence_stays() -> None:
    text = "This fixes #12 only partly: `parse()` still fails on `2020-02-30`."
    assert normalize_statement(text) == text


def test_badges_and_images_only_lines() -> None:
    text = (
        "[![CI](https://ci/badge.svg)](https://ci) ![cov](https://cov/b.svg)\n"
        '<img src="shot.png" width="300">\n'
        "| ![a](a.png) | ![b](b.png) |\n"
        "The chart ![inline](x.png) is wrong.\n"
    )
    assert normalize_statement(text) == "The chart ![inline](x.png) is wrong."


def test_bot_footers_and_signatures() -> None:
    text = (
        "Bump lib to fix CVE-2024-1234 in `load()`.\n\n"
        "---\n"
        "🤖 Generated with [Claude Code](https://claude.ai/code)\n"
        "Signed-off-by: A <a@b.c>\n"
        "Co-authored-by: B <b@c.d>\n"
        "<sub>Sent by a bot</sub>\n"
    )
    assert normalize_statement(text) == "Bump lib to fix CVE-2024-1234 in `load()`."


def test_codecov_report_tail_cut() -> None:
    text = (
        "Crash in `sum()` with floats.\n\n## [Codecov](https://codecov.io) Report\n"
        "> Merging 1\n| a |"
    )
    assert normalize_statement(text) == "Crash in `sum()` with floats."


def test_template_headings_empty_sections_dropped_full_sections_kept() -> None:
    text = (
        "### Describe the bug\n"
        "A clear and concise description of what the bug is.\n\n"
        "### Expected behavior\n"
        "`f(0)` returns 0.\n\n"
        "### Screenshots\n"
        "If applicable, add screenshots to help explain your problem.\n\n"
        "### Additional context\n"
    )
    assert normalize_statement(text) == "### Expected behavior\n`f(0)` returns 0."


def test_noise_section_drops_its_list_and_keeps_later_prose() -> None:
    text = (
        "## Summary\nAdds retry to `fetch()` on 503.\n\n"
        "## Checklist\n- [x] Tests pass\nI ran them locally.\n\n"
        "## Notes\n`fetch()` gave up after one 503 before."
    )
    assert normalize_statement(text) == (
        "## Summary\nAdds retry to `fetch()` on 503.\n\nI ran them locally.\n\n## Notes\n"
        "`fetch()` gave up after one 503 before."
    )


def test_whitespace() -> None:
    text = "\r\n\r\n  Title line  \r\n\r\n\r\n\r\nBody\u200b text\u00a0here.\t \n\n"
    assert normalize_statement(text) == "  Title line\n\nBody text here."


def test_empty_and_noise_only() -> None:
    assert normalize_statement("") == ""
    assert normalize_statement("<!-- template -->\n- [ ] done\nFixes #1\n") == ""
