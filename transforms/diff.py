"""Split a git diff into the code patch, the test patch and the auxiliary (non-code) patch.

Deliberate choices:
- Byte-exact: the diff is cut into per-file sections on ``diff --git`` lines and each section is
  copied unchanged into exactly one output, so CRLF lines, "\\ No newline at end of file",
  mode changes and base85 "GIT binary patch" blocks reach ``git apply`` as git wrote them.
  unidiff parses each section (validation and line counts); it never re-renders one.
- A section is classified by its new path (a rename ``tests/a.py -> pkg/a.py`` is code); a
  deletion by its old path.
- A section that is not valid UTF-8 (a latin-1 source file, say) is not rejected here: its path
  is listed in ``undecodable`` so the miner can re-take that one path as a git binary patch
  (ASCII, applied by ``git apply`` all the same). ``patch_text`` etc. raise only for what is
  still undecodable, which the snapshot stage turns into ``Reason.UNDECODABLE_DIFF``.
- Paths come out of git's quoting (``unquote_path``: ``tests/test_ünïcode.py`` is a test file
  like any other). A name whose bytes are not UTF-8 is listed in ``undecodable_paths``: no
  record field, JSON line or pytest node id can carry it as text, so the stages reject that one
  PR with ``Reason.UNDECODABLE_PATH`` instead of failing the run when it is written.
- Pure: no git, no filesystem; unit tests call it directly.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable

from unidiff import PatchSet
from unidiff.errors import UnidiffParseError

from smelter.transforms.testpaths import DEFAULT_RULES, PathKind, PathRules, classify_path

_SECTION_START = re.compile(rb"^diff --git ", re.MULTILINE)
_ESCAPES = {"a": "\a", "b": "\b", "t": "\t", "n": "\n", "v": "\v", "f": "\f", "r": "\r"}


class DiffParseError(ValueError):
    """The diff is not a git diff unidiff can read."""


@dataclasses.dataclass(frozen=True, slots=True)
class FileDiff:
    """One file's section of a diff."""

    path: str  # new path (old path for a deletion)
    old_path: str | None  # None for an added file
    kind: PathKind
    status: str  # added | deleted | modified | renamed | copied | mode
    binary: bool
    added: int
    removed: int
    raw: bytes
    decodable: bool


@dataclasses.dataclass(frozen=True, slots=True)
class SplitDiff:
    """A diff split by kind; the patches are byte strings, concatenated sections in diff order."""

    files: tuple[FileDiff, ...]

    def _of(self, kind: PathKind) -> tuple[FileDiff, ...]:
        return tuple(f for f in self.files if f.kind is kind)

    def _bytes(self, kind: PathKind) -> bytes:
        return b"".join(f.raw for f in self._of(kind))

    @property
    def patch(self) -> bytes:
        return self._bytes(PathKind.CODE)

    @property
    def test_patch(self) -> bytes:
        return self._bytes(PathKind.TEST)

    @property
    def aux_patch(self) -> bytes:
        return self._bytes(PathKind.AUX)

    @property
    def code_files(self) -> list[str]:
        return [f.path for f in self._of(PathKind.CODE)]

    @property
    def test_files(self) -> list[str]:
        return [f.path for f in self._of(PathKind.TEST)]

    @property
    def aux_files(self) -> list[str]:
        return [f.path for f in self._of(PathKind.AUX)]

    @property
    def undecodable(self) -> list[str]:
        return [f.path for f in self.files if not f.decodable]

    @property
    def undecodable_paths(self) -> list[str]:
        """Names (new or old) that are not UTF-8, shown with ``shown_path``."""
        names = (p for f in self.files for p in (f.path, f.old_path) if p is not None)
        return sorted({shown_path(p) for p in names if not is_utf8(p)})

    def lines(self, kind: PathKind | None = None) -> tuple[int, int]:
        """(added, removed) lines, overall or for one kind."""
        fs = self.files if kind is None else self._of(kind)
        return sum(f.added for f in fs), sum(f.removed for f in fs)

    def text(self, kind: PathKind) -> str:
        """A patch as str; UnicodeDecodeError when a section of it is not UTF-8."""
        return self._bytes(kind).decode("utf-8")


def sections(diff: bytes) -> list[bytes]:
    """The per-file sections of a git diff, byte-exact, in order."""
    starts = [m.start() for m in _SECTION_START.finditer(diff)]
    if not starts:
        if diff.strip():
            raise DiffParseError("no 'diff --git' header in a non-empty diff")
        return []
    if diff[: starts[0]].strip():
        raise DiffParseError("text before the first 'diff --git' header")
    return [diff[s:e] for s, e in zip(starts, [*starts[1:], len(diff)], strict=True)]


_OCTAL3 = re.compile(r"[0-7]{3}")


def unquote_path(path: str) -> str:
    """Undo git's C-style quoting of unusual path names (``"caf\\303\\251.txt"`` -> ``café.txt``).

    git quotes a name holding bytes >= 0x80, control characters, ``"`` or ``\\`` (unless
    ``core.quotePath=false``, which still quotes the last three). Bytes that are not UTF-8
    come back as surrogates (``surrogateescape``), so ``os.fsencode`` restores the exact name;
    ``is_utf8`` tells such a name apart and ``shown_path`` prints it. The one helper for every
    stage that reads paths out of git's output.
    """
    if not (len(path) >= 2 and path[0] == '"' and path[-1] == '"'):
        return path
    body, out, i = path[1:-1], bytearray(), 0
    while i < len(body):
        c = body[i]
        if c == "\\" and i + 1 < len(body):
            if _OCTAL3.fullmatch(body, i + 1, i + 4):
                out.append(int(body[i + 1 : i + 4], 8) & 0xFF)
                i += 4
                continue
            n = body[i + 1]
            out += _ESCAPES.get(n, n).encode("utf-8", "surrogateescape")
            i += 2
            continue
        out += c.encode("utf-8", "surrogateescape")
        i += 1
    return out.decode("utf-8", "surrogateescape")


def diff_path(value: str) -> str | None:
    """The path of a ``---``/``+++`` header value (``"b/tests/t\\303\\274.py"``, ``a/x.py``,
    ``/dev/null``): unquoted, ``a/``/``b/`` prefix dropped, git's tab trailer ignored; None for
    /dev/null."""
    v = value.rstrip("\n").split("\t")[0]
    if v == "/dev/null":
        return None
    return _strip_prefix(v)


def is_utf8(path: str) -> bool:
    """False for a name that held bytes that are not UTF-8 (surrogates from ``unquote_path``):
    JSON, Parquet and pytest node ids cannot carry it as text."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def shown_path(path: str) -> str:
    """``path`` as printable, JSON-safe text: undecodable bytes as ``\\xff``."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _strip_prefix(p: str) -> str:
    p = unquote_path(p.strip())
    return p[2:] if p[:2] in ("a/", "b/") else p


def _header_paths(lines: list[str]) -> tuple[str | None, str | None, str]:
    """(old, new, status) from the extended header lines of one section."""
    old = new = None
    status = "modified"
    first = lines[0][len("diff --git ") :].rstrip("\n")
    for line in lines[1:]:
        if line.startswith("@@") or line.startswith("GIT binary patch"):
            break
        if line.startswith("new file mode"):
            status = "added"
        elif line.startswith("deleted file mode"):
            status = "deleted"
        elif line.startswith(("rename from ", "copy from ")):
            old = unquote_path(line.split(" ", 2)[2].rstrip("\n"))
            status = "renamed" if line.startswith("rename") else "copied"
        elif line.startswith(("rename to ", "copy to ")):
            new = unquote_path(line.split(" ", 2)[2].rstrip("\n"))
        elif line.startswith("--- ") and old is None:
            old = diff_path(line[4:])
        elif line.startswith("+++ ") and new is None:
            new = diff_path(line[4:])
        elif line.startswith("old mode") and status == "modified":
            status = "mode"
    if old is None and new is None:
        # No ---/+++ lines (binary, pure mode change, empty file): a/X b/X, same path both sides.
        if first.startswith('"'):
            end = first.index('"', 1) + 1
            while first[end - 2] == "\\":
                end = first.index('"', end) + 1
            a, b = first[:end], first[end + 1 :]
        else:
            half = (len(first) - 1) // 2
            a, b = first[:half], first[half + 1 :]
        old, new = _strip_prefix(a), _strip_prefix(b)
    if status == "added":
        old = None
    if status == "deleted":
        new = None
    return old, new, status


def parse_section(raw: bytes, rules: PathRules = DEFAULT_RULES) -> FileDiff:
    """Classify and count one per-file section (see ``sections``)."""
    try:
        text = raw.decode("utf-8")
        decodable = True
    except UnicodeDecodeError:
        text = raw.decode("latin-1")  # only to read headers and counts; the bytes stay as they are
        decodable = False
    lines = text.splitlines(keepends=True)
    old, new, status = _header_paths(lines)
    path = new if new is not None else old
    if path is None:
        raise DiffParseError(f"cannot find the path of: {lines[0][:200]!r}")
    try:
        ps = PatchSet(text, metadata_only=False)
    except UnidiffParseError as e:
        raise DiffParseError(f"{path}: {e}") from e
    binary = "\nGIT binary patch\n" in text or any(f.is_binary_file for f in ps)
    added = sum(f.added for f in ps)
    removed = sum(f.removed for f in ps)
    return FileDiff(
        path=path, old_path=old, kind=classify_path(path, rules), status=status, binary=binary,
        added=added, removed=removed, raw=raw, decodable=decodable,
    )  # fmt: skip


def split_diff(diff: bytes, rules: PathRules = DEFAULT_RULES) -> SplitDiff:
    """Split a ``git diff --binary`` into code / test / aux sections (pure, byte-exact)."""
    return SplitDiff(tuple(parse_section(s, rules) for s in sections(diff)))


def replace_sections(diff: bytes, replacements: Iterable[bytes]) -> bytes:
    """``diff`` with the sections of the same paths taken from ``replacements`` instead.

    Used to swap an undecodable text section for its git binary patch form.
    """
    by_path: dict[str, bytes] = {}
    for rep in replacements:
        for s in sections(rep):
            by_path[parse_section(s).path] = s
    out = []
    for s in sections(diff):
        out.append(by_path.get(parse_section(s).path, s))
    return b"".join(out)
