"""The clean stage's prompts: versioned prompt files, the requests built from a task, the
structured-output schemas, and the checks on what comes back (refusals, the judge's scores).

Deliberate choices:
- A prompt is a file with a ``=== system ===`` and a ``=== user ===`` part and ``{{name}}``
  slots; its version (a packaged prompt's name, or a file's stem) is recorded on every output
  (``Quality.prompt_version``) and is part of the reply cache key.
- The synthesis request is built from what a reporter could have known: the failing test ids,
  their output in a before-fix run and the test patch; never ``task.patch``.
- No model and no network here: besides reading prompt files, every function is pure and
  unit-tested directly.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from smelter.schemas import Task, TestStatus
from smelter.transforms.adapters.chat import ChatRequest, UnusableReply
from smelter.transforms.clean.config import CleanConfig
from smelter.transforms.clean.leak import word_ngrams
from smelter.transforms.errors import Fatal

# Characters of a before-fix run's output given to the synthesis prompt (its tail: pytest ends
# with the assertion and the short summary).
FAILURE_OUTPUT_CHARS = 4000


@dataclass(frozen=True)
class Prompt:
    """A versioned prompt file: a system part and a user template with ``{{name}}`` slots."""

    version: str
    system: str
    user: str

    def render(self, **values: str) -> tuple[tuple[str, str], ...]:
        def fill(template: str) -> str:
            def sub(m: re.Match[str]) -> str:
                if m.group(1) not in values:
                    raise KeyError(f"prompt {self.version} needs {{{{{m.group(1)}}}}}")
                return values[m.group(1)]

            return re.sub(r"\{\{(\w+)\}\}", sub, template)

        return (("system", fill(self.system)), ("user", fill(self.user)))


_SECTION = re.compile(r"^=== (system|user) ===\s*$", re.MULTILINE)


def parse_prompt(version: str, text: str) -> Prompt:
    """Split a prompt file at its ``=== system ===`` / ``=== user ===`` lines."""
    parts = _SECTION.split(text)
    sections = {parts[i]: parts[i + 1].strip("\n") for i in range(1, len(parts) - 1, 2)}
    if set(sections) != {"system", "user"}:
        raise Fatal(f"prompt {version}: needs one '=== system ===' and one '=== user ===' section")
    return Prompt(version=version, system=sections["system"].strip(), user=sections["user"])


def load_prompt(name: str) -> Prompt:
    """A packaged prompt by name (``clean_v1``) or a prompt file by path (version = its stem)."""
    if name.endswith(".md") or "/" in name:
        path = Path(name)
        if not path.is_file():
            raise Fatal(f"prompt file not found: {name}")
        return parse_prompt(path.stem, path.read_text(encoding="utf-8"))
    res = resources.files("smelter.transforms.clean").joinpath("prompts", f"{name}.md")
    if not res.is_file():
        raise Fatal(
            f"unknown prompt {name!r} (no transforms/clean/prompts/{name}.md in the package)"
        )
    return parse_prompt(name, res.read_text(encoding="utf-8"))


CLEAN_SCHEMA: Mapping[str, Any] = {
    "type": "object",
    "properties": {"statement": {"type": "string"}},
    "required": ["statement"],
    "additionalProperties": False,
}
# The synthesis schema sets a minimum length: a grammar-constrained server (llama.cpp, vLLM,
# SGLang) then cannot answer a bare test name, as SmolLM2 did; the reply's length is checked
# again for servers that read the schema as a hint. No maxLength: llama.cpp expands it into
# that many nested optional rules, and a grammar of 2000 crashed its server.
SYNTHESIS_MIN_CHARS = 80
SYNTHESIZE_SCHEMA: Mapping[str, Any] = {
    "type": "object",
    "properties": {"statement": {"type": "string", "minLength": SYNTHESIS_MIN_CHARS}},
    "required": ["statement"],
    "additionalProperties": False,
}
JUDGE_SCHEMA: Mapping[str, Any] = {
    "type": "object",
    "properties": {
        "specification_score": {"type": "integer", "enum": [0, 1, 2, 3]},
        "test_alignment_score": {"type": "integer", "enum": [0, 1, 2, 3]},
        "rationale": {"type": "string"},
    },
    "required": ["specification_score", "test_alignment_score", "rationale"],
    "additionalProperties": False,
}


def truncate_middle(text: str, limit: int) -> str:
    """Keep the head and the tail (where tracebacks end); mark the cut."""
    if len(text) <= limit:
        return text
    half = max(0, limit // 2 - 20)
    cut = len(text) - 2 * half
    return f"{text[:half]}\n[... {cut} characters cut ...]\n{text[-half:]}"


@dataclass(frozen=True)
class Prompts:
    clean: Prompt
    judge: Prompt
    synthesize: Prompt | None = None

    @classmethod
    def load(cls, config: CleanConfig) -> Prompts:
        return cls(
            clean=load_prompt(config.clean_prompt),
            judge=load_prompt(config.judge_prompt),
            synthesize=load_prompt(config.synthesize_prompt) if config.llm_synthesize else None,
        )

    def version(self, judge: bool, first: Prompt | None = None) -> str:
        """Versions of the prompts a record went through, joined by ``+``."""
        head = (first or self.clean).version
        return f"{head}+{self.judge.version}" if judge else head


_PLACEHOLDER = re.compile(r"<[^<>\n]{1,80}>")
_SLOT = re.compile(r"\{\{\w+\}\}")


def refusal(text: str, prompt: Prompt, ngram: int = 6) -> str | None:
    """Why a model's statement cannot be used, or None. Pure.

    Empty; a placeholder of the prompt (``<the rewritten statement>``) or any text that is one
    ``<...>`` alone; or a copy of the prompt's own instructions (half of the reply's word
    n-grams occur in the system part or the user template with its slots emptied). The filled
    slots are not counted: a rewrite is meant to repeat the statement it was given."""
    stripped = text.strip().strip('"').strip()
    if not stripped:
        return "empty reply"
    placeholders = set(_PLACEHOLDER.findall(prompt.system + "\n" + prompt.user))
    if stripped in placeholders or _PLACEHOLDER.fullmatch(stripped):
        return f"echoes the prompt's placeholder {stripped[:60]!r}"
    mine = word_ngrams(stripped, ngram)
    instructions = word_ngrams(prompt.system + "\n" + _SLOT.sub(" ", prompt.user), ngram)
    if mine and len(mine & instructions) / len(mine) >= 0.5:
        share = len(mine & instructions) / len(mine)
        return f"repeats the prompt's instructions ({share:.0%} of its word {ngram}-grams)"
    return None


def failure_output(task: Task, limit: int = FAILURE_OUTPUT_CHARS) -> str:
    """The tail of a before-fix run in which a FAIL_TO_PASS test failed: what a reporter saw.

    Prefers a run whose status for those tests is failed or errored (an assertion or traceback
    to quote) over one where they were absent; empty when validation kept no log."""
    wanted = set(task.FAIL_TO_PASS)
    best = ""
    for run in task.validation.runs:
        if run.side != "before" or not run.log_tail.strip():
            continue
        statuses = {run.statuses.get(t) for t in wanted}
        if statuses & {TestStatus.FAILED, TestStatus.ERROR}:
            best = run.log_tail
            break
        best = best or run.log_tail
    best = best.strip()
    return best[-limit:] if len(best) > limit else best


def rewrite_request(task: Task, statement: str, config: CleanConfig, prompt: Prompt) -> ChatRequest:
    messages = prompt.render(
        repo=task.repo, statement=truncate_middle(statement, config.llm_max_input_chars)
    )
    return ChatRequest(
        messages=messages,
        prompt_version=prompt.version,
        json_schema=CLEAN_SCHEMA,
        temperature=config.llm_temperature,
        max_tokens=config.llm_max_tokens,
    )


def synthesize_request(task: Task, config: CleanConfig, prompt: Prompt) -> ChatRequest:
    """The synthesis request: test ids, before-fix output and test patch; never ``task.patch``."""
    limit = config.llm_max_input_chars
    messages = prompt.render(
        repo=task.repo,
        fail_to_pass="\n".join(task.FAIL_TO_PASS),
        failure_output=failure_output(task) or "(no output was kept)",
        test_patch=truncate_middle(task.test_patch, limit),
    )
    return ChatRequest(
        messages=messages,
        prompt_version=prompt.version,
        json_schema=SYNTHESIZE_SCHEMA,
        temperature=config.llm_temperature,
        max_tokens=config.llm_max_tokens,
    )


def judge_request(task: Task, statement: str, config: CleanConfig, prompt: Prompt) -> ChatRequest:
    limit = config.llm_max_input_chars
    messages = prompt.render(
        repo=task.repo,
        statement=truncate_middle(statement, limit),
        fail_to_pass="\n".join(task.FAIL_TO_PASS),
        test_patch=truncate_middle(task.test_patch, limit),
    )
    return ChatRequest(
        messages=messages,
        prompt_version=prompt.version,
        json_schema=JUDGE_SCHEMA,
        temperature=config.llm_temperature,
        max_tokens=min(config.llm_max_tokens, 512),
    )


def _score(data: Mapping[str, Any], name: str) -> int:
    value = data.get(name)
    try:
        score = int(value)  # type: ignore[arg-type]  # "2" from a lax model is fine
    except (TypeError, ValueError):
        raise UnusableReply(f"judge gave no integer {name}: {value!r}") from None
    if not 0 <= score <= 3 or (isinstance(value, float) and value != score):
        raise UnusableReply(f"judge gave {name}={value!r}, outside 0-3")
    return score


def parse_judgement(data: Mapping[str, Any] | None) -> tuple[int, int, str]:
    """(specification_score, test_alignment_score, rationale) from the judge's JSON."""
    if data is None:
        raise UnusableReply("judge reply had no JSON object")
    rationale = str(data.get("rationale", "")).strip()
    return _score(data, "specification_score"), _score(data, "test_alignment_score"), rationale
