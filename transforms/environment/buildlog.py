"""Reading a failed build's log: the line a person reads first, and what the failure was.

Pure functions of the log text: the builder (``builder``) uses them to pick a rung's reason,
to decide whether a rung is worth a retry with a compiler, and to write the rejection detail.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from smelter.schemas import Reason
from smelter.transforms.adapters import docker_engine as eng
from smelter.transforms.util import strip_ansi, tail

# Lines that say what went wrong in a build log, in uv's, pip's, setuptools' and Docker's words.
_ERROR_LINE = re.compile(
    r"(^|\s)(×|error:|ERROR:|Error:|fatal:|FAILED|No solution found|Traceback \(most recent"
    r"|[A-Z]\w*(Error|Exception)\b:?|Because .* (depends|requires)|hint:)"
)
_NOISE_LINE = re.compile(
    r"^\s*(Step \d+/\d+|RUN |---> |Removing intermediate|#\d+ )|^first error:$"
)


def first_error(log: str, context: int = 6) -> str:
    """The first line of ``log`` that states an error, with the lines after it: what a person
    reads first. The echoed command (``Step 5/7 : RUN ...``) is never taken for it. When the
    error wraps a Python exception ("The build backend returned an error"), the exception's
    own line follows, however far below it comes."""
    lines = strip_ansi(log).splitlines()
    for i, line in enumerate(lines):
        if _NOISE_LINE.match(line) or not _ERROR_LINE.search(line):
            continue
        block = [x.rstrip() for x in lines[i : i + 1 + context] if x.strip()]
        cause = _exception_after(lines, i)
        if cause and cause not in block:
            block.append(f"... {cause}")
        return "\n".join(block)
    return ""


_EXCEPTION_LINE = re.compile(r"^\s*([A-Za-z_][\w.]*(Error|Exception|Exit|Warning)|error):? ")


def _exception_after(lines: Sequence[str], start: int, span: int = 200) -> str:
    """The exception raised by the first traceback after ``start`` (its first line back at the
    traceback's indentation), or else the last exception-looking line, before the next build
    step. The first traceback is the back end's own; later ones belong to fallbacks."""
    found = ""
    indent: int | None = None
    for line in lines[start : start + span]:
        if _NOISE_LINE.match(line) or line.startswith("The command '"):
            break
        stripped = line.lstrip()
        depth = len(line) - len(stripped)
        if stripped.startswith("Traceback (most recent call last)"):
            indent = depth if indent is None else indent
            continue
        if _EXCEPTION_LINE.match(line) and not stripped.startswith("error: The build"):
            if indent is not None and depth <= indent:
                return stripped
            found = found or stripped if indent is None else found
    return found


def first_error_line(log: str) -> str:
    """One line for a table: the exception a failure raised, else its first error line."""
    block = first_error(log, context=0)
    last = block.splitlines()[-1] if block else ""
    return last.removeprefix("... ")[:300]


_NEEDS_COMPILER = re.compile(
    r"(gcc|cc|c\+\+|g\+\+|x86_64-linux-gnu-gcc|aarch64-linux-gnu-gcc)['`\"]?:? (failed|not found)"
    r"|command '[^']*gcc' failed|unable to execute '[^']*(gcc|cc)'|Python\.h: No such file"
    r"|error: command '.*' failed with exit (code|status)|No such file or directory: '(gcc|cc)'"
    r"|You need a C compiler|C compiler cannot create|Unknown compiler|compiler not found"
    r"|Microsoft Visual C\+\+|\bcc1: |could not find a C compiler",
    re.IGNORECASE,
)


def needs_compiler(log: str) -> bool:
    """Whether a failed build wanted a C compiler or Python headers (a dependency, or the
    project itself, with no wheel for this Python)."""
    return bool(_NEEDS_COMPILER.search(log))


def reject_detail(log: str, summary: str, limit: int = 1400) -> str:
    """The first error ahead of the tail, then the summary: a tail alone is filled by the echoed
    command and the resolver's last words, and the cause scrolls away."""
    log = strip_ansi(log)
    head = first_error(log)[:700]
    rest = tail(log, max(200, limit - len(head)))
    if head and head in rest:
        return f"{rest}\n-- {summary}"
    return f"first error:\n{head}\n...\n{rest}\n-- {summary}" if head else f"{rest}\n-- {summary}"


def failure_reason(err: eng.BuildFailed) -> Reason:
    """A RUN step that exited non-zero is an install failure; anything else a build failure."""
    return Reason.INSTALL_FAILED if "returned a non-zero code" in str(err) else Reason.BUILD_FAILED
