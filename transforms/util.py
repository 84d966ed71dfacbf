"""Small pure helpers every layer shares (hashing, log tails), apart from the Beam shell.

Deliberate choices:
- This module imports nothing heavy (no Beam, no Docker SDK), so the CLI, the option reference
  and the image commands can use ``stable_hash`` without paying Beam's import time. Every
  importer takes these names from here: no other module re-exports them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from typing import Any

from smelter.schemas import Record

# ECMA-48 escape sequences: CSI (colours, cursor moves: ``ESC [ ... final``, also its 8-bit
# form 0x9b), OSC (hyperlinks, window titles: ``ESC ] ... BEL`` or ``ESC ] ... ESC \\``), the
# other string controls (DCS, SOS, PM, APC), and two-byte escapes (``ESC (B``, ``ESC =``).
_ANSI = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]"
    r"|\x1b[\]PX^_].*?(?:\x07|\x1b\\|\x9c)"
    r"|\x1b[ -/]*[0-~]",
    re.DOTALL,
)


def strip_ansi(text: str) -> str:
    """``text`` without terminal escape sequences. uv, pip and pytest paint colours and
    hyperlinks when they think they write to a terminal (``FORCE_COLOR``, a TTY in a build);
    a record, task.yaml and the card keep the words, not ``\\x1b[31m``."""
    return _ANSI.sub("", text)


def tail(text: str, limit: int = 4000) -> str:
    """The end of a log, where the error usually is, without escape sequences (``strip_ansi``);
    capped after stripping so the limit counts characters a reader sees."""
    text = strip_ansi(text)
    return text if len(text) <= limit else "…" + text[-limit:]


def stable_hash(*parts: Any, length: int = 16) -> str:
    """Content hash of JSON-able parts (dataclasses and records included), stable across runs."""

    def default(obj: Any) -> Any:
        if isinstance(obj, Record):
            return obj.model_dump(mode="json")
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            return dataclasses.asdict(obj)
        if isinstance(obj, set | frozenset):
            return sorted(obj)
        return str(obj)

    blob = json.dumps(parts, sort_keys=True, default=default, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]
