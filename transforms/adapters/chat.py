"""The ``ChatModel`` seam: what the clean stage asks a model and gets back, whatever the backend.

Deliberate choices:
- Two kinds of failure: ``LLMError`` (no answer: timeouts, 5xx, a body that is no chat
  completion; retried, never cached, ``llm_error`` upstream) and ``UnusableReply`` (the endpoint
  answered, the model's content is unusable: empty, cut at ``max_tokens``, no JSON object). The
  second is the model's fault, not the infrastructure's: the caller refuses the record with the
  stated reason.
- Parsing a reply is tolerant and backend-independent (``extract_json_object``: the first JSON
  object in the text, code fences and trailing commas allowed), so every backend and every
  structured-output form reads answers the same way.
- ``Usage`` keeps running totals per client; ``usage_counters`` turns two snapshots into the
  integer deltas Beam counters want, so the stage reports per bundle without sharing state.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

from smelter.transforms.errors import Retryable


class LLMError(Retryable):
    """The endpoint did not give a usable answer after the retries were spent."""


class MalformedResponse(LLMError):
    """The HTTP body was not a chat completion (truncated, an HTML error page)."""


class UnusableReply(Exception):
    """The endpoint answered, but the model's content cannot be used; ``str(e)`` says why.

    Not an ``LLMError``: a server that answers is up, and retrying a deterministic model gives
    the same reply, so the record is refused (``reply_refused``) rather than failed."""


# Structured-output forms, best first; ``probe`` keeps the first the endpoint accepts.
RESPONSE_FORMATS = ("json_schema", "json_object", "text")


# ------------------------------------------------------------------------------------ records


@dataclass(frozen=True)
class ChatRequest:
    """One chat completion to make. ``prompt_version`` names the prompt file (cache key part)."""

    messages: tuple[tuple[str, str], ...]  # (role, content)
    prompt_version: str
    json_schema: Mapping[str, Any] | None = None
    temperature: float = 0.0
    max_tokens: int = 1024


@dataclass(frozen=True)
class ChatResponse:
    text: str
    data: dict[str, Any] | None
    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    cached: bool = False


class ChatModel(Protocol):
    """What the clean stage needs from a model: answers, and who answered."""

    @property
    def model(self) -> str: ...

    def complete(self, request: ChatRequest) -> ChatResponse: ...

    def complete_many(
        self, requests: Sequence[ChatRequest]
    ) -> list[ChatResponse | LLMError | UnusableReply]: ...


@dataclass
class Usage:
    """Running totals for the per-run report; thread-safe, picklable when empty."""

    requests: int = 0  # HTTP requests sent, retries included
    completions: int = 0  # answers obtained from the endpoint
    cached: int = 0  # answers served from the response cache
    retries: int = 0
    errors: int = 0  # requests that ended in LLMError
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0  # wall seconds spent waiting for the endpoint (retries included)
    cost: float = 0.0
    refused: int = 0  # answers whose content was unusable (UnusableReply)
    # answers obtained per structured-output form (what the report names as the mode used)
    format_json_schema: int = 0
    format_json_object: int = 0
    format_text: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **deltas: float) -> None:
        with self._lock:
            for name, delta in deltas.items():
                setattr(self, name, getattr(self, name) + delta)

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "_lock"}

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


# ------------------------------------------------------------------------------------ parsing

_FENCED_JSON = re.compile(r"```(?:json|JSON)?\s*\n(.*?)```", re.DOTALL)
_CLOSER_AHEAD = re.compile(r"\s*[}\]]")


def _balanced_object(text: str, start: int) -> str | None:
    """The ``{...}`` starting at ``start``, braces inside strings ignored; None if unclosed."""
    depth, in_str, escape = 0, False, False
    for i in range(start, len(text)):
        ch = text[i]
        if in_str:
            if escape:
                escape = False
            elif ch == "\\":
                escape = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[start : i + 1]
    return None


def _strip_trailing_commas(candidate: str) -> str:
    """Drop ``,`` before ``}`` / ``]`` outside strings (a common small-model slip)."""
    out: list[str] = []
    in_str = escape = False
    for i, ch in enumerate(candidate):
        if in_str:
            out.append(ch)
            if escape:
                escape = False
            elif ch == "\\":
                escape = True
            elif ch == '"':
                in_str = False
            continue
        if ch == '"':
            in_str = True
        elif ch == "," and _CLOSER_AHEAD.match(candidate, i + 1):
            continue
        out.append(ch)
    return "".join(out)


def extract_json_object(text: str) -> dict[str, Any]:
    """First JSON object in a model's reply: bare, in a code fence, or amid prose.

    Tolerates code fences and trailing commas; raises ``UnusableReply`` when no object parses.
    """
    sources = [m.group(1) for m in _FENCED_JSON.finditer(text)] + [text]
    for source in sources:
        for m in re.finditer(r"\{", source):
            candidate = _balanced_object(source, m.start())
            if candidate is None:
                break  # an unclosed brace here leaves no later object closed either
            for attempt in (candidate, _strip_trailing_commas(candidate)):
                try:
                    value = json.loads(attempt)
                except ValueError:
                    continue
                if isinstance(value, dict):
                    return value
    snippet = text.strip().replace("\n", " ")[:120]
    if not snippet:
        raise UnusableReply("empty reply")
    raise UnusableReply(f"no JSON object in the model's reply: {snippet!r}")


def usage_counters(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, int]:
    """Integer deltas between two ``Usage.snapshot()``s, as Beam counters want them."""
    out: dict[str, int] = {}
    for name in (
        "requests", "completions", "cached", "retries", "errors", "refused",
        "format_json_schema", "format_json_object", "format_text",
    ):  # fmt: skip
        out[name] = int(after[name] - before[name])
    out["prompt_tokens"] = int(after["prompt_tokens"] - before["prompt_tokens"])
    out["completion_tokens"] = int(after["completion_tokens"] - before["completion_tokens"])
    out["request_ms"] = round((after["seconds"] - before["seconds"]) * 1000)
    out["cost_micros"] = round((after["cost"] - before["cost"]) * 1_000_000)
    return out
