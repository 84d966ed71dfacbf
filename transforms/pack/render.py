"""Task -> chat text in ChatML, tokenized, with a loss mask over the assistant turn only.

Deliberate choices:
- Templates are versioned names (``chatml_v1``) whose texts are package data files
  (``templates/<name>.system.txt``, ``.user.txt``, ``.file.txt``); the name is recorded on every
  Sample, so changing a prompt means a new name, never a silent change of old results.
- The user turn shows the problem statement and the contents *at base_commit* of the files the
  code patch touches (not the test patch: the hidden tests stay hidden). Files the patch adds
  do not exist yet and are listed as new; binary or undecodable files are named, not dumped.
- The renderer works on segments (text or special token, trained or not) and tokenizes each
  text segment separately, inserting special tokens by id. So a statement containing the text
  ``<|im_end|>`` cannot close a turn, and the loss mask boundary falls exactly between tokens:
  1 on the assistant's content and its closing ``<|im_end|>`` (the model must learn to stop),
  0 on the system and user turns and on the ``<|im_start|>assistant\\n`` header.
- Text is NFC-normalised before rendering, the same normalisation the tokenizer applies, so
  ``tokenizer.decode(sample.input_ids) == sample.text`` holds exactly.
- Files are read through ``FileReader`` (``GitRepo.read_file`` is one), so tests use a real git
  repository and the Beam stage (``RenderFn``) opens the repo from ``Task.provenance.repo_url``.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import re
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Literal, Protocol

from smelter.schemas import Reason, Sample, Stage, Task
from smelter.transforms.adapters.tokenizer import IM_END, IM_START, Tokenizer, load_tokenizer
from smelter.transforms.errors import Fatal, Rejected
from smelter.transforms.pack.config import PackConfig
from smelter.transforms.stage import StageFn
from smelter.transforms.util import stable_hash

DEFAULT_TEMPLATE = "chatml_v1"


class FileReader(Protocol):
    def read_file(self, commit: str, path: str) -> bytes | None:
        """The bytes of ``path`` at ``commit``; None when it does not exist there."""
        ...


# --------------------------------------------------------------------------- templates


@dataclasses.dataclass(frozen=True)
class ChatTemplate:
    """A versioned prompt: system text, user-turn format and per-file format (ChatML layout)."""

    name: str
    system: str
    user: str
    file: str


@functools.cache
def load_template(name: str) -> ChatTemplate:
    """The template shipped as ``smelter/transforms/pack/templates/<name>.*.txt``."""
    if not re.fullmatch(r"[a-z0-9_]+_v\d+", name):
        raise Fatal(f"bad template name {name!r}: expected a versioned name like chatml_v1")
    folder = importlib.resources.files("smelter.transforms.pack") / "templates"
    parts = {}
    for part in ("system", "user", "file"):
        res = folder / f"{name}.{part}.txt"
        if not res.is_file():
            raise Fatal(f"unknown template {name!r}: no templates/{name}.{part}.txt")
        parts[part] = res.read_text(encoding="utf-8").rstrip("\n")
    return ChatTemplate(name=name, **parts)


# --------------------------------------------------------------------------- patch files


@dataclasses.dataclass(frozen=True)
class TouchedFile:
    """A file a patch changes; ``path`` is the pre-image path (what exists at base_commit)."""

    path: str
    status: Literal["modified", "added", "deleted", "renamed"] = "modified"
    new_path: str = ""
    binary: bool = False


_OCTAL = re.compile(rb"\\([0-7]{3})")
_ESCAPES = {b"\\n": b"\n", b"\\t": b"\t", b'\\"': b'"', b"\\\\": b"\\"}


def _unquote(path: str) -> str:
    """Undo git's C-style quoting of unusual paths (``"a/caf\\303\\251.py"``)."""
    if not (len(path) >= 2 and path[0] == '"' and path[-1] == '"'):
        return path
    raw = path[1:-1].encode("utf-8")
    raw = _OCTAL.sub(lambda m: bytes([int(m.group(1), 8)]), raw)
    for esc, plain in _ESCAPES.items():
        raw = raw.replace(esc, plain)
    return raw.decode("utf-8", "surrogateescape")


def _strip_prefix(path: str) -> str:
    path = _unquote(path.rstrip("\t"))
    return path[2:] if path[:2] in ("a/", "b/") else path


def touched_files(patch: str) -> list[TouchedFile]:
    """The files a git diff changes, in diff order. Pure; reads git's extended headers."""
    out: list[TouchedFile] = []
    cur: dict[str, object] | None = None
    in_header = False  # "--- x" inside a hunk is a removed line "-- x", not a header

    def flush() -> None:
        if cur is not None:
            out.append(TouchedFile(**cur))  # type: ignore[arg-type]

    for line in patch.splitlines():
        if line.startswith("diff --git "):
            flush()
            rest = line[len("diff --git ") :]
            same = rest[2 : 2 + (len(rest) - 5) // 2]  # "a/P b/P" when not renamed
            if not rest.startswith('"') and rest == f"a/{same} b/{same}":
                old = new = same
            else:
                m = re.fullmatch(r'("(?:[^"\\]|\\.)*"|\S+) ("(?:[^"\\]|\\.)*"|\S+)', rest)
                left, right = (m.group(1), m.group(2)) if m else (rest, rest)
                old, new = _strip_prefix(left), _strip_prefix(right)
            cur = {"path": old, "new_path": new, "status": "modified", "binary": False}
            in_header = True
        elif cur is None or not in_header:
            continue
        elif line.startswith("@@"):
            in_header = False
        elif line.startswith("new file mode"):
            cur["status"] = "added"
        elif line.startswith("deleted file mode"):
            cur["status"] = "deleted"
        elif line.startswith("rename from "):
            cur["status"], cur["path"] = "renamed", _unquote(line[len("rename from ") :])
        elif line.startswith("rename to "):
            cur["new_path"] = _unquote(line[len("rename to ") :])
        elif line.startswith("--- ") and line[4:] != "/dev/null":
            cur["path"] = _strip_prefix(line[4:])
        elif line.startswith("+++ ") and line[4:] != "/dev/null":
            cur["new_path"] = _strip_prefix(line[4:])
        elif line.startswith(("Binary files ", "GIT binary patch")):
            cur["binary"] = True
            in_header = False
    flush()
    return out


# --------------------------------------------------------------------------- rendering


@dataclasses.dataclass(frozen=True)
class Segment:
    """A piece of a rendered chat: plain text or one special token, trained on or not."""

    text: str
    special: bool = False
    train: bool = False


def file_block(template: ChatTemplate, f: TouchedFile, data: bytes | None) -> str:
    """One file of the user turn, as the template shows it."""
    if f.status == "added":
        content = "(new file: does not exist yet)\n"
    elif f.binary:
        content = "(binary file, not shown)\n"
    elif data is None:
        content = "(missing)\n"
    else:
        try:
            content = data.decode("utf-8")
        except UnicodeDecodeError:
            content = "(not UTF-8 text, not shown)\n"
        if content and not content.endswith("\n"):
            content += "\n"
    path = f.new_path if f.status == "added" else f.path
    return template.file.format(path=path, content=content)


def read_touched(
    reader: FileReader, commit: str, files: Sequence[TouchedFile]
) -> list[bytes | None]:
    """Contents at ``commit`` of the files that exist there; a missing one rejects the task."""
    out: list[bytes | None] = []
    for f in files:
        if f.status == "added" or f.binary:
            out.append(None)
            continue
        data = reader.read_file(commit, f.path)
        if data is None:
            raise Rejected(Reason.REPO_UNAVAILABLE, f"{f.path} does not exist at {commit}")
        out.append(data)
    return out


def chat_segments(task: Task, template: ChatTemplate, blocks: Sequence[str]) -> list[Segment]:
    """The ChatML conversation for ``task``; pure."""
    user = template.user.format(
        repo=task.repo,
        base_commit=task.base_commit,
        problem_statement=task.problem_statement.strip(),
        files="\n".join(blocks),
    )
    segs: list[Segment] = []
    for role, content in (("system", template.system), ("user", user)):
        segs += [
            Segment(IM_START, special=True),
            Segment(f"{role}\n{content}"),
            Segment(IM_END, special=True),
            Segment("\n"),
        ]
    segs += [
        Segment(IM_START, special=True),
        Segment("assistant\n"),
        Segment(task.patch, train=True),
        Segment(IM_END, special=True, train=True),
        Segment("\n"),
    ]
    return [
        dataclasses.replace(s, text=unicodedata.normalize("NFC", s.text)) for s in segs if s.text
    ]


def tokenize_segments(segs: Sequence[Segment], tok: Tokenizer) -> tuple[list[int], list[int]]:
    """Token ids and loss mask (1 = trained) of rendered segments."""
    ids: list[int] = []
    mask: list[int] = []
    for s in segs:
        part = [tok.special_id(s.text)] if s.special else tok.encode(s.text)
        ids += part
        mask += [int(s.train)] * len(part)
    return ids, mask


def render_task(task: Task, reader: FileReader, tok: Tokenizer, template: ChatTemplate) -> Sample:
    """Task -> Sample: read the touched files at base_commit, render, tokenize, mask."""
    files = touched_files(task.patch)
    if not files:
        raise Rejected(Reason.EMPTY_PATCH, "the patch changes no file")
    data = read_touched(reader, task.base_commit, files)
    blocks = [file_block(template, f, d) for f, d in zip(files, data, strict=True)]
    segs = chat_segments(task, template, blocks)
    try:
        ids, mask = tokenize_segments(segs, tok)
    except (ValueError, KeyError) as e:
        raise Rejected(Reason.TOKENIZE_FAILED, f"{type(e).__name__}: {e}") from None
    return Sample(
        instance_id=task.instance_id,
        text="".join(s.text for s in segs),
        input_ids=ids,
        loss_mask=mask,
        tokenizer=tok.name,
        template=template.name,
    )


# --------------------------------------------------------------------------- render stage


def open_repo(repo_url: str, mirror_dir: str = "") -> FileReader:
    """A reader over ``repo_url``: a local repository as is, else the miner's mirror (reused
    without a fetch when it exists: mining fetched it already), else a fresh mirror."""
    from smelter.transforms.adapters.git import GitConfig, GitError, GitRepo

    local = GitRepo(repo_url)
    if "://" not in repo_url and Path(repo_url).exists() and local.is_repo():
        return local
    cache = GitConfig(mirror_dir or None).mirror_root
    existing = GitRepo.existing_mirror(repo_url, cache)
    if existing is not None:
        return existing
    try:
        return GitRepo.mirror(repo_url, cache)
    except GitError as e:
        raise Rejected(Reason.REPO_UNAVAILABLE, f"{repo_url}: {e}") from None


class RenderFn(StageFn[PackConfig, Task, Sample]):
    """Task -> Sample: chat text in the configured template, token ids, assistant-only loss mask."""

    STAGE = Stage.RENDER

    def __init__(
        self,
        config: PackConfig,
        cache_root: str | None = None,
        reader_factory: Callable[[str], FileReader] | None = None,
    ) -> None:
        super().__init__(config, cache_root)
        # Only what changes a Sample keys the cache: a new pack_max_len must not re-render.
        self._config_hash = stable_hash(self.STAGE, self.VERSION, config.render_part())
        self._reader_factory = reader_factory or functools.partial(
            open_repo, mirror_dir=config.git.mirror_dir or ""
        )

    def setup_stage(self) -> None:
        self._tok = load_tokenizer(self._config.render_tokenizer)
        self._template = load_template(self._config.render_template)
        self._readers: dict[str, FileReader] = {}

    def run(self, task: Task) -> Iterator[Sample]:
        url = task.provenance.repo_url
        if not url:
            raise Rejected(Reason.REPO_UNAVAILABLE, "task has no provenance.repo_url")
        if url not in self._readers:
            self._readers[url] = self._reader_factory(url)
        yield render_task(task, self._readers[url], self._tok, self._template)
