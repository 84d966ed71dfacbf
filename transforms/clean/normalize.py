"""Deterministic clean-up of issue / PR text: strip template noise, keep every technical fact.

Deliberate choices:
- Line based, one pass, no model: the same input gives the same output on every machine, so the
  result is cached and golden-tested. The version name (``NORMALIZER_VERSION``) is recorded on
  every task; change the rules -> bump the name.
- Code is sacred. Fenced blocks (``` and ~~~), indented code blocks and unfenced Python tracebacks
  are copied byte for byte: error messages and stack traces are the most useful part of a bug
  report and whitespace inside them is meaningful.
- Only whole lines are removed (plus HTML comments, which may sit inside a line). A line is
  removed when it is pure scaffolding: an HTML comment, an unchecked checklist item, a checked
  boilerplate item ("I have read the contributing guide"), a template placeholder sentence, a
  badge / image-only line, a bot footer or signature, a closing-keyword line ("Fixes #12").
- A template heading ("## Describe the bug") is dropped when its section is empty after the
  other rules ran; headings of sections that are scaffolding as a whole ("## Checklist",
  "## Type of change") are dropped with their list items, up to the first line of prose.
  Headings that introduce content stay: the rewrite and the judge use them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

NORMALIZER_VERSION = "normalize_v1"

# ------------------------------------------------------------------------------------ patterns

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(?P<text>.*?)\s*#*\s*$")
# "**Describe the bug**" or "__Describe the bug:__" alone on a line works as a heading too.
_BOLD_HEADING = re.compile(r"^ {0,3}(\*\*|__)(?P<text>[^*_]{2,80}?)\s*:?\s*\1\s*:?\s*$")
_UNCHECKED = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+\[ \]")
_CHECKED = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+\[[xX]\]\s*(?P<text>.*)$")
_CLOSING_REF = r"(?:[\w.-]+/[\w.-]+)?#\d+|https?://\S+/(?:issues|pull)/\d+\S*"
_CLOSING_LINE = re.compile(
    r"^\s*(?:[-*+]\s+)?(?:\*\*)?(?:close[sd]?|fix(?:e[sd])?|resolve[sd]?)(?:\*\*)?\s*:?\s*"
    rf"(?:{_CLOSING_REF})(?:\s*(?:,|and|&)?\s*(?:(?:close[sd]?|fix(?:e[sd])?|resolve[sd]?)\s*:?\s*)?"
    rf"(?:{_CLOSING_REF}))*\s*\.?\s*$",
    re.IGNORECASE,
)
_MD_IMAGE = r"!\[[^\]]*\]\([^)]*\)"
_IMAGE_ITEM = re.compile(
    rf"\[\s*{_MD_IMAGE}\s*\]\([^)]*\)|{_MD_IMAGE}|<img\b[^>]*>|<a\b[^>]*>\s*<img\b[^>]*>\s*</a>"
    r"|<p\b[^>]*>|</p>|<br\s*/?>|\[!\[[^\]]*\]\[[^\]]*\]\]\[[^\]]*\]",
    re.IGNORECASE,
)
_SEPARATOR = re.compile(r"^\s*(?:-{3,}|_{3,}|\*{3,})\s*$")
_ZERO_WIDTH = re.compile("[\u200b\u200c\u200d\u2060\ufeff]")

# Lines that are machine signatures; matched on the stripped line.
_BOT_LINES = [
    re.compile(p, re.IGNORECASE)
    for p in (
        r"^signed-off-by:",
        r"^co-authored-by:",
        r"^(?:🤖\s*)?generated (?:with|by) \[?[\w .-]+\]?(?:\([^)]*\))?\.?$",
        r"^sent from my (?:iphone|ipad|android|mobile|phone)\b",
        r"^get outlook for (?:ios|android)",
        r"^<sub>.*</sub>$",
        r"^this (?:issue|pull request|pr) (?:has been|was) (?:automatically )?(?:marked|closed)\b",
        r"^\*?this (?:comment|message|pr|pull request) was (?:automatically )?generated\b",
        r"^_?\*?beep boop\b",
        r"^i am a bot\b",
        r"^(?::robot:|🤖)",
        r"\b(?:was|were|is) (?:labell?ed|generated|created|opened|updated) automatically by\b",
        r"reviewable\.io/review_button",
        r"^dependabot will\b",
        r"^you can trigger dependabot\b",
        r"^:?\w*:? ?thanks for (?:opening|submitting) (?:this|your)\b.*\bbot\b",
        r"^\[?!\[.*\]\(https://(?:codecov|coveralls)\.io",
    )
]
# A line that starts a machine-made tail: everything from it to the end goes.
_FOOTER_START = [
    re.compile(p, re.IGNORECASE)
    for p in (
        r"^#{0,6}\s*\[?codecov\]?(?:\([^)]*\))?\s+report\b",
        r"^<details>\s*<summary>\s*dependabot commands",
        r"^---\s*<!--\s*\w*bot",
    )
]
# Placeholder sentences of common issue / PR templates (GitHub's defaults and popular projects).
_PLACEHOLDERS = [
    re.compile(p, re.IGNORECASE)
    for p in (
        r"^a clear and concise description of\b",
        r"^if applicable, add screenshots\b",
        r"^add any other context about the (?:problem|feature request) here\.?$",
        r"^steps to reproduce the behaviou?r:?$",
        r"^please (?:describe|provide|include|fill|complete|delete|remove|make sure|check)\b.*"
        r"(?:template|below|above|following|applicable|checklist|sections?)\b.*$",
        r"^thank you for (?:your contribution|contributing)\b.*$",
        r"^thanks for (?:your contribution|contributing)\b.*$",
        r"^(?:- )?os: \[e\.g\.",
        r"^(?:- )?(?:browser|version|device) \[e\.g\.",
        r"^describe (?:the|your) (?:bug|changes?|issue|problem)(?: here)?\.?$",
        r"^(?:write|put) (?:your )?(?:description|details) here\.?$",
        r"^n/?a\.?$",
    )
]
_BOILERPLATE_CHECKED = re.compile(
    r"\b(?:searched|read|agree|code of conduct|contributing|contribution guide|duplicate"
    r"|latest (?:version|release)|docs? (?:have been|are) updated|changelog|tests? (?:have been|"
    r"were) added|added tests|self-review|my code follows|i have (?:tested|checked|run))\b",
    re.IGNORECASE,
)
# Sections whose whole content is scaffolding.
_NOISE_SECTIONS = re.compile(
    r"^(?:pr |pull request )?check ?list|^checklist for|^type of (?:change|pr)|^before submitting"
    r"|^does this (?:pr|pull request) introduce a (?:breaking|user-facing) change"
    r"|^(?:pr )?review checklist|^pre-?flight|^acknowledg(?:e)?ments?$",
    re.IGNORECASE,
)

# ------------------------------------------------------------------------------------ segments


@dataclass(frozen=True)
class _Line:
    text: str
    verbatim: bool  # code / traceback: never edited, never removed


def _strip_html_comments(line: str, in_comment: bool) -> tuple[str, bool]:
    """Remove ``<!-- ... -->`` parts of one line; returns (rest, still inside a comment)."""
    out: list[str] = []
    pos = 0
    while pos <= len(line):
        if in_comment:
            end = line.find("-->", pos)
            if end < 0:
                return "".join(out), True
            pos, in_comment = end + 3, False
        else:
            start = line.find("<!--", pos)
            if start < 0:
                out.append(line[pos:])
                break
            out.append(line[pos:start])
            pos, in_comment = start + 4, True
    return "".join(out), in_comment


def _is_indented_code(line: str) -> bool:
    return line.startswith(("    ", "\t")) and bool(line.strip())


def _segment(text: str) -> list[_Line]:
    """Split into lines marked verbatim (code, tracebacks) or prose, with comments removed."""
    lines = text.split("\n")
    out: list[_Line] = []
    fence: str | None = None
    in_comment = False
    in_traceback = False
    prev_blank = True
    prev_code = False
    for raw in lines:
        if fence is not None:
            out.append(_Line(raw, True))
            m = _FENCE.match(raw)
            if (
                m
                and m.group(1)[0] == fence[0]
                and len(m.group(1)) >= len(fence)
                and not raw.strip()[len(m.group(1)) :].strip()
            ):
                fence = None
            continue
        if in_comment:
            rest, in_comment = _strip_html_comments(raw, True)
            if in_comment or not rest.strip():
                continue  # the line was (the end of) a comment only
            raw = rest
        if in_traceback:
            # A traceback goes on with indented frames and ends with its "Error: message" line.
            if raw.startswith((" ", "\t")) and raw.strip():
                out.append(_Line(raw, True))
                continue
            in_traceback = False
            if raw.strip() and not _HEADING.match(raw):
                out.append(_Line(raw, True))
                prev_blank, prev_code = False, False
                continue
        m = _FENCE.match(raw)
        if m and "<!--" not in raw:
            fence = m.group(1)
            out.append(_Line(raw, True))
            prev_blank, prev_code = False, False
            continue
        if _is_indented_code(raw) and (prev_blank or prev_code):
            out.append(_Line(raw, True))
            prev_blank, prev_code = False, True
            continue
        if raw.lstrip().startswith("Traceback (most recent call last)"):
            in_traceback = True
            out.append(_Line(raw, True))
            prev_blank, prev_code = False, False
            continue
        had_comment = "<!--" in raw
        if had_comment:
            raw, in_comment = _strip_html_comments(raw, False)
            if not raw.strip():
                continue  # a comment-only line leaves no blank line behind
        out.append(_Line(raw, False))
        blank = not raw.strip()
        prev_blank = blank
        prev_code = prev_code and blank
    return out


# ------------------------------------------------------------------------------------ rules


def _heading_text(line: str) -> str | None:
    m = _HEADING.match(line) or _BOLD_HEADING.match(line)
    return m.group("text").strip().strip(":*_ ").strip() if m else None


def _is_image_only(line: str) -> bool:
    if not line.strip():
        return False
    rest = _IMAGE_ITEM.sub("", line)
    rest = re.sub(r"[\s|]+", "", rest)  # badges often sit in a table row or side by side
    return rest == "" and _IMAGE_ITEM.search(line) is not None


def _drop_line(stripped: str) -> bool:
    """A prose line that carries no information for a task statement."""
    if _UNCHECKED.match(stripped):
        return True
    checked = _CHECKED.match(stripped)
    if checked and _BOILERPLATE_CHECKED.search(checked.group("text")):
        return True
    if _CLOSING_LINE.match(stripped):
        return True
    if _is_image_only(stripped):
        return True
    if any(p.search(stripped) for p in _BOT_LINES):
        return True
    return any(p.search(stripped) for p in _PLACEHOLDERS)


def _drop_sections(lines: list[_Line]) -> list[_Line]:
    """Drop noise sections whole, then headings left with an empty section."""
    kept: list[_Line] = []
    skip_level: int | None = None
    for ln in lines:
        title = None if ln.verbatim else _heading_text(ln.text)
        if title is not None:
            level = _level(ln.text)
            if skip_level is not None and level <= skip_level:
                skip_level = None
            if skip_level is None and _NOISE_SECTIONS.search(title):
                skip_level = level
                continue
        elif skip_level is not None and not _is_list_or_blank(ln):
            skip_level = None  # prose after the list: the author's own words, kept
        if skip_level is None:
            kept.append(ln)
    # Empty sections: a heading followed (after blanks) by a heading of the same or a higher
    # level, or by the end of the text.
    result: list[_Line] = []
    for i, ln in enumerate(kept):
        if not ln.verbatim and _heading_text(ln.text) is not None:
            level = _level(ln.text)
            nxt = next((k for k in kept[i + 1 :] if not _is_blank(k)), None)
            if nxt is None:
                continue
            nxt_is_heading = not nxt.verbatim and _heading_text(nxt.text) is not None
            if nxt_is_heading and _level(nxt.text) <= level:
                continue
        result.append(ln)
    return result


_LIST_ITEM = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s")


def _is_list_or_blank(ln: _Line) -> bool:
    return not ln.verbatim and (_is_blank(ln) or bool(_LIST_ITEM.match(ln.text)))


def _is_blank(ln: _Line) -> bool:
    """Blank for section purposes: whitespace or a bare ``---`` separator."""
    return not ln.verbatim and (not ln.text.strip() or bool(_SEPARATOR.match(ln.text)))


def _level(line: str) -> int:
    m = _HEADING.match(line)
    return len(m.group(1)) if m else 7  # a bold pseudo-heading ranks below every '#' heading


def _footer_cut(lines: list[_Line]) -> list[_Line]:
    for i, ln in enumerate(lines):
        if not ln.verbatim and any(p.search(ln.text.strip()) for p in _FOOTER_START):
            return lines[:i]
    return lines


def _tidy(lines: list[_Line]) -> str:
    """Trailing spaces off prose, one blank line at most between blocks, no separator at ends."""
    out: list[str] = []
    for ln in lines:
        if ln.verbatim:
            out.append(ln.text)
            continue
        text = _ZERO_WIDTH.sub("", ln.text).replace("\u00a0", " ").rstrip()
        if not text and (not out or not out[-1].strip()):
            continue
        out.append(text)
    # Separators ("---") left dangling at either end, or next to each other, were bot scaffolding.
    while out and (not out[-1].strip() or _SEPARATOR.match(out[-1])):
        out.pop()
    while out and (not out[0].strip() or _SEPARATOR.match(out[0])):
        out.pop(0)
    return "\n".join(out)


def normalize_statement(text: str) -> str:
    """Return ``text`` without template noise; code, errors and tracebacks kept byte for byte."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = _segment(text)
    lines = _footer_cut(lines)
    lines = [ln for ln in lines if ln.verbatim or not _drop_line(ln.text.strip())]
    lines = _drop_sections(lines)
    return _tidy(lines)
