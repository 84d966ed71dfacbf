"""Stage ``clean``: normalise the problem statement, rewrite and judge it with an LLM, refuse leaks.

Deliberate choices:
- Evidence is never replaced: ``Quality`` keeps the raw text, the normalised text, the rewrite
  (even a refused one), the scores, the model, the prompt versions and the leak overlap; the
  task's ``problem_statement`` is whichever text was chosen (``Quality.used``).
- Without ``llm_base_url`` the stage runs the deterministic normaliser alone and says so
  (``CleanFn.normalizer_only``, counter ``clean:normalizer_only``, ``describe_clean``).
- The leak check is pure and deterministic: word n-grams of the rewrite that also occur in the
  lines the code patch ADDS. Above ``leak_threshold`` the rewrite is refused and the normalised
  text is used. The rewriter never sees the patch, so a leak can only come from a raw text that
  already narrates the fix; the check catches a rewrite that kept that narration.
- Scores use SWE-bench Verified's two questions on a 0-3 scale where higher is better
  (score = 3 - Verified's label), so thresholds read "at least"; the defaults keep what
  Verified kept (labels 0 and 1).
- Requests are batched per bundle: records that miss the stage cache are buffered and cleaned by a
  thread pool of ``llm_concurrency`` workers; counters are bumped on the bundle's thread only,
  because Beam's metrics container is thread-local. An LLM failure rejects the record with
  ``llm_error`` but is not written to the stage cache, so the next run tries again.
- A validated task cost minutes of builds and test runs, so a missing statement does not throw
  it away: when the normalised text is unusable (shorter than ``min_statement_chars``, or one
  line of at most ``TITLE_ONLY_CHARS``: a title alone) and an endpoint is configured, the LLM
  synthesizes an issue from what a reporter could have known (failing test ids, their output in
  a before-fix run, the test patch; never the code patch), which then passes the same leak check
  and judge as a rewrite. Without an endpoint a title alone is kept as before (nothing better).
- Where the statement came from is recorded (``Quality.statement_source``: issue, pr, rewritten,
  synthesized). A git-mined task whose PR closes issues takes their text from GitHub when a
  token is set, through the GitHub source's cached client, for validated tasks only (the cheap
  end of the funnel); without a token nothing changes.
- A reply is refused with a stated reason when it is empty, echoes a placeholder of the prompt
  (``"<the rewritten statement>"``), repeats the prompt's instructions, or carries no JSON
  (``refusal``): a refused rewrite falls back to the normalised text, a refused synthesis or
  judgement rejects the task as ``reply_refused``. These are the model's faults, not outages.
- The structured-output form is probed once at pre-flight (``check_endpoint``) and carried to
  the workers inside the pickled ``CleanFn`` built next (``_PROBED``), so workers do not probe
  again; a ``CleanFn`` built without a pre-flight probes once per worker.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import apache_beam as beam
import requests
from apache_beam.metrics import Metrics
from apache_beam.utils.windowed_value import WindowedValue

from smelter.schemas import Quality, Reason, Rejection, Task, TestStatus
from smelter.transforms.adapters.llm import (
    RESPONSE_FORMATS,
    ChatModel,
    ChatRequest,
    LLMError,
    OpenAIChatClient,
    UnusableReply,
    usage_counters,
)
from smelter.transforms.clean.config import CleanConfig
from smelter.transforms.clean.normalize import NORMALIZER_VERSION, normalize_statement
from smelter.transforms.stage import Fatal, Rejected, StageFn, stable_hash

STAGE = "clean"
log = logging.getLogger(__name__)

# A normalised statement of one line and at most this many characters is a title alone: GitHub
# titles are short (SWE-bench's median is ~50 characters), real issue texts have a body.
TITLE_ONLY_CHARS = 120
# Characters of a before-fix run's output given to the synthesis prompt (its tail: pytest ends
# with the assertion and the short summary).
FAILURE_OUTPUT_CHARS = 4000


# ------------------------------------------------------------------------------------ prompts


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


# ------------------------------------------------------------------------------------ leak check

_WORD = re.compile(r"\w+")


def added_lines(patch: str) -> list[str]:
    """The lines a unified diff adds (without the ``+``); file headers excluded."""
    return [
        line[1:]
        for line in patch.splitlines()
        if line.startswith("+") and not line.startswith("+++ ")
    ]


def word_ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    """Lower-cased word n-grams; punctuation and whitespace do not count, so reflowing or
    re-quoting code does not hide a copy."""
    words = [w.lower() for w in _WORD.findall(text)]
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def leak_overlap(rewrite: str, patch: str, n: int) -> float:
    """Share of n-grams common to the rewrite and the patch's added lines, relative to the
    smaller of the two sets: 1.0 when the rewrite reproduces a small fix whole, or when a long
    fix fills the rewrite. 0.0 when either side has no n-gram."""
    mine = word_ngrams(rewrite, n)
    theirs = word_ngrams("\n".join(added_lines(patch)), n)
    if not mine or not theirs:
        return 0.0
    return len(mine & theirs) / min(len(mine), len(theirs))


def truncate_middle(text: str, limit: int) -> str:
    """Keep the head and the tail (where tracebacks end); mark the cut."""
    if len(text) <= limit:
        return text
    half = max(0, limit // 2 - 20)
    cut = len(text) - 2 * half
    return f"{text[:half]}\n[... {cut} characters cut ...]\n{text[-half:]}"


# ------------------------------------------------------------------------------------ the logic


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


# ------------------------------------------------------------------------------------ refusals

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


def unusable_statement(normalized: str, config: CleanConfig) -> str | None:
    """Why a normalised statement is no usable problem statement, or None. Pure."""
    if len(normalized) < config.min_statement_chars:
        return (
            f"{len(normalized)} characters after {NORMALIZER_VERSION} "
            f"(minimum {config.min_statement_chars})"
        )
    if "\n" not in normalized.strip() and len(normalized) <= TITLE_ONLY_CHARS:
        return f"a title alone ({len(normalized)} characters, one line)"
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


@dataclass(frozen=True)
class IssueText:
    """Text of the issues a git-mined PR closes, fetched from GitHub (``IssueSource``)."""

    statement: str
    hints: str
    numbers: tuple[int, ...]


class IssueSource:
    """Issue texts through the GitHub source's client: its token pool, response cache (a re-run
    costs conditional requests only) and retries. Opened in ``setup``; one request at a time,
    because the clean stage's thread pool shares it and PyGithub's requester is not meant for
    concurrent use."""

    def __init__(self, config: CleanConfig) -> None:
        from smelter.transforms.mine.github_source import GitHubSource

        self._source = GitHubSource(config.github, report=lambda line: log.info("%s", line))
        self._lock = threading.Lock()

    @staticmethod
    def enabled(config: CleanConfig, environ: Mapping[str, str] = os.environ) -> bool:
        """A token is at hand and fetching is on: without a token nothing changes."""
        return config.clean_fetch_issues and bool(environ.get(config.github.github_token_env))

    def open(self) -> IssueSource:
        self._source.open()
        return self

    def close(self) -> None:
        self._source.close()

    def fetch(self, task: Task) -> IssueText | None:
        """The linked issues' title + body (as the snapshot stage joins them) and their hint
        comments; None when the task is not git-mined, closes no issue, or no issue has text.
        Issues live in the task's repository: the task keeps only their numbers."""
        from github import GithubException

        from smelter.transforms.mine.github_source import hints_text
        from smelter.transforms.mine.prmeta import IssueRef

        numbers = task.provenance.linked_issues
        if task.provenance.source != "git" or not numbers:
            return None
        try:
            with self._lock:
                issues = [
                    self._source.fetch_issue(task.repo, IssueRef(task.repo, n, True))
                    for n in numbers
                ]
        except (GithubException, OSError) as e:
            # The PR's own text is still there: a GitHub hiccup costs the issue text, not the
            # task. (A spent quota waits inside the transport, as the GitHub source does.)
            log.warning("%s: issue text not fetched: %s", task.instance_id, type(e).__name__)
            return None
        found = [i for i in issues if i.title.strip() or i.body.strip()]
        if not found:
            return None
        statement = "\n\n".join(f"{i.title.strip()}\n\n{i.body.strip()}".strip() for i in found)
        return IssueText(
            statement=statement,
            hints=hints_text(found, task.created_at),
            numbers=tuple(i.number for i in found),
        )


def _complete(model: ChatModel, request: ChatRequest, what: str) -> Any:
    """One completion; an outage rejects as ``llm_error`` (retried next run), an unusable reply
    as ``reply_refused`` (the model's answer; cached like any outcome)."""
    try:
        return model.complete(request)
    except LLMError as e:
        raise Rejected(Reason.LLM_ERROR, f"{what}: {e}") from None
    except UnusableReply as e:
        raise Rejected(Reason.REPLY_REFUSED, f"{what}: {e}") from None


def _response_format(model: ChatModel) -> str | None:
    return getattr(model, "response_format", None)


def clean_task(
    task: Task,
    config: CleanConfig,
    model: ChatModel | None,
    prompts: Prompts | None,
    issues: IssueSource | None = None,
) -> Task:
    """The whole stage for one task. Raises ``Rejected`` (no usable statement, under-specified,
    misaligned, refused reply, LLM failure) or ``Fatal`` (the endpoint refuses us altogether)."""
    raw = task.quality.raw_problem_statement if task.quality else task.problem_statement
    raw_source: str = task.quality.raw_source if task.quality else _raw_source(task)
    notes: list[str] = []
    hints = task.hints_text
    fetched = issues.fetch(task) if issues is not None and task.quality is None else None
    if fetched is not None:
        raw, raw_source, hints = fetched.statement, "issue", fetched.hints or hints
        notes.append(f"statement from issue(s) {', '.join(f'#{n}' for n in fetched.numbers)}")
    normalized = normalize_statement(raw)
    problem = unusable_statement(normalized, config)
    synthesize = (
        problem is not None
        and model is not None
        and prompts is not None
        and prompts.synthesize is not None
    )
    if problem is not None and not synthesize and len(normalized) < config.min_statement_chars:
        raise Rejected(Reason.STATEMENT_TOO_SHORT, problem)
    if model is None or prompts is None:
        quality = Quality(
            raw_problem_statement=raw,
            normalized_statement=normalized,
            used="normalized",
            raw_source=raw_source,  # type: ignore[arg-type]
            statement_source=raw_source,  # type: ignore[arg-type]
            normalizer_version=NORMALIZER_VERSION,
            rationale=" | ".join(notes),
        )
        update = {"problem_statement": normalized, "quality": quality, "hints_text": hints}
        return task.model_copy(update=update)

    rewritten = synthesized = None
    overlap = 0.0
    leaked = False
    if synthesize:
        assert prompts.synthesize is not None
        first = prompts.synthesize
        notes.append(f"no usable statement ({problem}): synthesized from the tests")
        reply = _complete(model, synthesize_request(task, config, first), "synthesis")
        synthesized = str((reply.data or {}).get("statement", "")).strip()
        overlap = leak_overlap(synthesized, task.patch, config.leak_ngram)
        why = refusal(synthesized, first, config.leak_ngram)
        if why is None and overlap > config.leak_threshold:
            leaked = True
            why = f"{overlap:.0%} n-gram overlap with the patch"
        if why is None and len(synthesized) < config.min_statement_chars:
            why = f"{len(synthesized)} characters (minimum {config.min_statement_chars})"
        if why is not None:
            raise Rejected(
                Reason.REPLY_REFUSED,
                f"synthesized statement refused: {why}: {synthesized[:160]!r}",
            )
        chosen, used = synthesized, "synthesized"
    else:
        first = prompts.clean
        try:
            reply = _complete(model, rewrite_request(task, normalized, config, first), "rewrite")
        except Rejected as r:
            if r.reason is not Reason.REPLY_REFUSED:
                raise
            reply = None  # an unusable rewrite is no loss: the normalised text stays
            notes.append(f"rewrite refused: {r.detail.removeprefix('rewrite: ')}")
        rewritten = str((reply.data or {}).get("statement", "")).strip() if reply else ""
        overlap = leak_overlap(rewritten, task.patch, config.leak_ngram) if rewritten else 0.0
        leaked = overlap > config.leak_threshold
        chosen, used = rewritten, "rewritten"
        why = refusal(rewritten, first, config.leak_ngram) if reply else None
        if leaked:
            chosen, used = normalized, "normalized"
            notes.append(f"rewrite refused: {overlap:.0%} n-gram overlap with the patch")
        elif why is not None:
            chosen, used = normalized, "normalized"
            notes.append(f"rewrite refused: {why}")
        elif reply is not None and len(rewritten) < config.min_statement_chars:
            chosen, used = normalized, "normalized"
            notes.append(f"rewrite refused: {len(rewritten)} characters")
        elif reply is None:
            chosen, used = normalized, "normalized"

    spec = align = None
    if config.llm_judge:
        judged = _complete(model, judge_request(task, chosen, config, prompts.judge), "judge")
        try:
            spec, align, rationale = parse_judgement(judged.data)
        except UnusableReply as e:
            raise Rejected(Reason.REPLY_REFUSED, f"judge: {e}") from None
        if refusal(rationale, prompts.judge, config.leak_ngram) is not None:
            rationale = ""  # "<one or two sentences>" echoed: the scores stand, the text not
        notes.insert(0, rationale)

    source = used if used in ("rewritten", "synthesized") else raw_source
    quality = Quality(
        raw_problem_statement=raw,
        normalized_statement=normalized,
        rewritten_statement=rewritten or None,
        synthesized_statement=synthesized or None,
        used=used,  # type: ignore[arg-type]
        raw_source=raw_source,  # type: ignore[arg-type]
        statement_source=source,  # type: ignore[arg-type]
        response_format=_response_format(model),
        specification_score=spec,
        test_alignment_score=align,
        rationale=" | ".join(n for n in notes if n),
        leak_overlap=round(overlap, 4),
        leak_rejected=leaked,
        model=model.model,
        prompt_version=prompts.version(config.llm_judge, first),
        normalizer_version=NORMALIZER_VERSION,
    )
    if spec is not None and spec < config.min_specification_score:
        raise Rejected(
            Reason.UNDER_SPECIFIED,
            f"specification_score {spec} < {config.min_specification_score}: {quality.rationale}",
        )
    if align is not None and align < config.min_test_alignment_score:
        raise Rejected(
            Reason.TESTS_MISALIGNED,
            f"test_alignment_score {align} < {config.min_test_alignment_score}: "
            f"{quality.rationale}",
        )
    update = {"problem_statement": chosen, "quality": quality, "hints_text": hints}
    return task.model_copy(update=update)


def _raw_source(task: Task) -> str:
    """Where the snapshot stage took the raw text from: the GitHub source fetches linked issues'
    text (the snapshot prefers it); the git source knows only their numbers, so its text is
    the PR's unless this stage fetched the issues."""
    if task.provenance.source == "github" and task.provenance.linked_issues:
        return "issue"
    return "pr"


def describe_clean(config: CleanConfig) -> str:
    """One line for the run summary: which cleaning actually ran."""
    if config.normalizer_only:
        return f"clean: {NORMALIZER_VERSION} only (no --llm-base-url: no rewrite, no judge)"
    judge = f" + {config.judge_prompt}" if config.llm_judge else ""
    synth = ""
    if config.llm_synthesize:
        synth = f" (+ {config.synthesize_prompt} for tasks without one)"
    return (
        f"clean: {NORMALIZER_VERSION} + {config.clean_prompt}{judge}{synth} "
        f"with {config.llm_model} at {config.llm_base_url}"
    )


# (base URL, model) -> structured-output form found by ``check_endpoint`` in this process. The
# CLI calls it before building the graph, so the ``CleanFn`` built next carries the answer to
# the workers in its pickled state and they need not probe again.
_PROBED: dict[tuple[str, str], str] = {}


def check_endpoint(config: CleanConfig, session: requests.Session | None = None) -> str:
    """Pre-flight for the CLI, before Beam starts: ``Fatal`` (one line) when the endpoint cannot
    be reached or refuses the key; otherwise the ``describe_clean`` line, with a note when the
    server does not list the model (llama.cpp lists its file name, so this is not an error).
    Costs one ``GET /models`` and, with ``llm_json_schema``, the structured-output probe: a tiny
    completion per form until one is accepted (``OpenAIChatClient.probe``); the form found is
    named in the line and remembered for the ``CleanFn`` built next (``_PROBED``)."""
    if config.normalizer_only:
        return describe_clean(config)
    client = OpenAIChatClient(
        config.llm_base_url or "",
        config.llm_model,
        session or requests.Session(),
        api_key_env=config.llm_api_key_env,
        timeout_seconds=config.llm_timeout_seconds,
        json_schema=config.llm_json_schema,
    )
    try:
        served = client.list_models()
        form = client.probe() if config.llm_json_schema else "text"
        notes = client.probe_notes
    finally:
        client.close()
    _PROBED[(config.llm_base_url or "", config.llm_model)] = form
    line = describe_clean(config)
    if served and config.llm_model not in served:
        line += f" (the endpoint lists {', '.join(served[:3])}, not {config.llm_model})"
    why = f" ({'; '.join(notes)})" if notes else " (--no-llm-json-schema)"
    return f"{line}; structured output: {form}{why}"


# ------------------------------------------------------------------------------------ Beam

# Counters in namespace "clean" (besides StageFn's ok / rejected_* / cache_hits):
USAGE_COUNTERS = (
    "requests",
    "completions",
    "cached",
    "retries",
    "errors",
    "prompt_tokens",
    "completion_tokens",
    "request_ms",
    "cost_micros",
    "refused",
    *(f"format_{form}" for form in RESPONSE_FORMATS),
)
FLAG_COUNTERS = ("normalizer_only", "leak_refused", "rewritten", "synthesized", "issue_text")


class CleanFn(StageFn):
    """``Task -> Task`` (cleaned, with ``quality``) or a Rejection; see the module docstring."""

    STAGE = STAGE

    def __init__(
        self,
        config: CleanConfig,
        cache_root: str | None = None,
        http_session: Callable[[], requests.Session] = requests.Session,
    ) -> None:
        super().__init__(config, cache_root)
        self._make_session = http_session  # a factory: sessions are not picklable
        if not config.normalizer_only and not config.llm_model:
            raise Fatal("--llm-model is required with --llm-base-url")
        self._prompts = None if config.normalizer_only else Prompts.load(config)
        self._llm_cache_dir = config.llm_cache_dir
        self._response_format: str | None = None
        if not config.normalizer_only:
            probed = _PROBED.get((config.llm_base_url or "", config.llm_model))
            self._response_format = probed if config.llm_json_schema else "text"
        self._fetch_issues = IssueSource.enabled(config)
        # The outcome depends on the form asked for and on whether issue texts are fetched, not
        # on the [github] mining options or the outage share: key on what changes results.
        keyed = dataclasses.replace(config, github=None, outage_share=0.0)  # type: ignore[arg-type]
        issue_api = config.github.github_base_url if self._fetch_issues else None
        self._config_hash = stable_hash(
            self.STAGE, self.VERSION, keyed, self._response_format, issue_api
        )

    def attach(
        self, cache_root: str | None, progress_dir: str | None = None, run: Any = None
    ) -> CleanFn:
        """As ``StageFn.attach``; LLM replies default to ``<cache_root>/llm`` beside the stage
        cache, so a re-run of a run directory makes no request without any extra flag."""
        if run is None:  # works with a StageFn.attach that takes no run, too
            super().attach(cache_root, progress_dir)
        else:
            super().attach(cache_root, progress_dir, run=run)
        if cache_root and not self._config.llm_cache_dir:
            self._llm_cache_dir = cache_root.rstrip("/") + "/llm"
        return self

    @property
    def normalizer_only(self) -> bool:
        """True when no endpoint is configured: the run cleans with the normaliser alone."""
        return self._config.normalizer_only

    def describe(self) -> str:
        return describe_clean(self._config)

    # -- StageFn hooks -------------------------------------------------------------------------
    def setup_stage(self) -> None:
        cfg: CleanConfig = self._config
        self._model: OpenAIChatClient | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._buffer: list[tuple[Task, str, str | None, Any, Any]] = []
        self._issues: IssueSource | None = IssueSource(cfg).open() if self._fetch_issues else None
        if cfg.normalizer_only:
            return
        self._model = OpenAIChatClient(
            cfg.llm_base_url or "",
            cfg.llm_model,
            self._make_session(),
            api_key_env=cfg.llm_api_key_env,
            timeout_seconds=cfg.llm_timeout_seconds,
            max_retries=cfg.llm_max_retries,
            backoff_seconds=cfg.llm_backoff_seconds,
            concurrency=cfg.llm_concurrency,
            json_schema=cfg.llm_json_schema,
            response_format=self._response_format,
            cache_dir=self._llm_cache_dir,
            cost_per_1k_prompt_tokens=cfg.llm_cost_per_1k_prompt_tokens,
            cost_per_1k_completion_tokens=cfg.llm_cost_per_1k_completion_tokens,
        )
        self._pool = ThreadPoolExecutor(max(1, cfg.llm_concurrency), thread_name_prefix="clean")
        self._usage_seen = self._model.usage.snapshot()

    def teardown_stage(self) -> None:
        if getattr(self, "_issues", None) is not None:
            self._issues.close()  # type: ignore[union-attr]
        if getattr(self, "_pool", None) is not None:
            self._pool.shutdown(wait=True)  # type: ignore[union-attr]
        if getattr(self, "_model", None) is not None:
            self._model.close()  # type: ignore[union-attr]

    def run(self, record: Task) -> Iterable[Task]:
        issues = getattr(self, "_issues", None)
        yield clean_task(record, self._config, self._model, self._prompts, issues)

    # -- batching ------------------------------------------------------------------------------
    def start_bundle(self) -> None:
        self._buffer = []

    def process(
        self,
        record: Task,
        timestamp: Any = beam.DoFn.TimestampParam,
        window: Any = beam.DoFn.WindowParam,
    ) -> Iterator[Any]:
        if self._model is None:  # normaliser only: nothing to batch
            Metrics.counter(STAGE, "normalizer_only").inc()
            yield from super().process(record)
            return
        instance_id, key, cached = self.lookup(record)
        if cached is not None:
            yield from self._emit(cached)
            return
        self._buffer.append((record, instance_id, key, timestamp, window))
        if len(self._buffer) >= max(1, self._config.llm_batch_size):
            yield from self._flush()

    def finish_bundle(self) -> Iterator[Any]:
        yield from self._flush()

    def _flush(self) -> Iterator[Any]:
        batch, self._buffer = self._buffer, []
        if not batch:
            return
        assert self._pool is not None and self._model is not None
        started = time.monotonic()
        results = list(self._pool.map(lambda item: self._outcomes(item[0], item[1]), batch))
        per_record_ms = int((time.monotonic() - started) * 1000 / len(batch))
        for (_record, instance_id, key, timestamp, window), outcomes in zip(
            batch, results, strict=True
        ):
            if self._cache and key and _cacheable(outcomes):
                self._cache.put(self.STAGE, instance_id, key, outcomes)
            seconds = getattr(self, "_seconds", None)
            if seconds is not None:
                seconds.update(per_record_ms)
            rejected = bool(outcomes) and all(isinstance(o, Rejection) for o in outcomes)
            self._tick_safe("r" if rejected else "o")
            for o in outcomes:
                if isinstance(o, Task) and o.quality is not None:
                    if o.quality.leak_rejected:
                        Metrics.counter(STAGE, "leak_refused").inc()
                    if o.quality.used in ("rewritten", "synthesized"):
                        Metrics.counter(STAGE, o.quality.used).inc()
                    if o.quality.raw_source == "issue" and o.provenance.source == "git":
                        Metrics.counter(STAGE, "issue_text").inc()  # fetched by this stage
            for out in self._emit(outcomes):
                # A buffered record's outputs may leave while another element (or none, in
                # finish_bundle) is current: they carry their own window and timestamp.
                if isinstance(out, beam.pvalue.TaggedOutput):
                    yield beam.pvalue.TaggedOutput(
                        out.tag, WindowedValue(out.value, timestamp, (window,))
                    )
                else:
                    yield WindowedValue(out, timestamp, (window,))
        self._report_usage()

    def _report_usage(self) -> None:
        assert self._model is not None
        now = self._model.usage.snapshot()
        for name, delta in usage_counters(self._usage_seen, now).items():
            if delta:
                Metrics.counter(STAGE, name).inc(delta)
        self._usage_seen = now

    def _tick_safe(self, mark: str) -> None:
        tick = getattr(self, "_tick", None)
        if tick is not None:
            tick(mark)


def _cacheable(outcomes: list[Any]) -> bool:
    """An LLM failure is transient: caching it would make the next run skip the retry."""
    return not any(isinstance(o, Rejection) and o.reason is Reason.LLM_ERROR for o in outcomes)


@dataclass(frozen=True)
class CleanReport:
    """Per-run figures of the clean stage, read back from Beam counters."""

    normalizer_only: bool
    tasks_in: int = 0
    kept: int = 0
    rewritten: int = 0
    synthesized: int = 0
    issue_texts: int = 0
    leak_refused: int = 0
    refused_replies: int = 0
    stage_cache_hits: int = 0
    requests: int = 0
    completions: int = 0
    cached: int = 0
    retries: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    request_seconds: float = 0.0
    cost: float = 0.0
    rejected: dict[str, int] = field(default_factory=dict)
    # answers obtained per structured-output form (json_schema, json_object, text)
    formats: dict[str, int] = field(default_factory=dict)

    @property
    def response_format(self) -> str:
        """The structured-output form(s) the answers came in, most used first."""
        used = sorted((n, f) for f, n in self.formats.items() if n)
        if not used:
            return "none asked (every reply cached)" if self.cached else "none asked"
        return " + ".join(f"{f} ({n})" for n, f in reversed(used))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"response_format": self.response_format}

    def summary(self) -> str:
        if self.normalizer_only:
            return f"clean: normaliser only, {self.kept} kept of {self.tasks_in}"
        per = max(1, self.tasks_in - self.stage_cache_hits)
        cost = f", cost {self.cost:.4f}" if self.cost else ""
        rejected = ", ".join(f"{k}: {v}" for k, v in sorted(self.rejected.items())) or "none"
        return (
            f"clean: {self.kept} kept of {self.tasks_in} (rejected: {rejected}), "
            f"{self.rewritten} rewritten, {self.synthesized} synthesized, "
            f"{self.issue_texts} issue texts fetched, {self.leak_refused} leaking rewrites "
            f"refused, {self.refused_replies} unusable replies; structured output: "
            f"{self.response_format}; {self.requests} requests "
            f"({self.cached} cached replies, {self.retries} retries, {self.errors} errors), "
            f"{self.prompt_tokens}+{self.completion_tokens} tokens, "
            f"{self.request_seconds:.1f} s waiting ({self.requests / per:.1f} requests per "
            f"uncached task){cost}"
        )


def clean_report(counters: Mapping[str, int], config: CleanConfig) -> CleanReport:
    """Build the report from ``{counter name: value}`` of namespace ``clean``
    (see ``counters_of`` for reading them off a ``PipelineResult``)."""
    rejected = {
        k.removeprefix("rejected_"): v for k, v in counters.items() if k.startswith("rejected_")
    }
    ok = counters.get("ok", 0)
    return CleanReport(
        normalizer_only=config.normalizer_only,
        tasks_in=ok + sum(rejected.values()),
        kept=ok,
        rewritten=counters.get("rewritten", 0),
        synthesized=counters.get("synthesized", 0),
        issue_texts=counters.get("issue_text", 0),
        leak_refused=counters.get("leak_refused", 0),
        refused_replies=counters.get("refused", 0),
        stage_cache_hits=counters.get("cache_hits", 0),
        requests=counters.get("requests", 0),
        completions=counters.get("completions", 0),
        cached=counters.get("cached", 0),
        retries=counters.get("retries", 0),
        errors=counters.get("errors", 0),
        prompt_tokens=counters.get("prompt_tokens", 0),
        completion_tokens=counters.get("completion_tokens", 0),
        request_seconds=counters.get("request_ms", 0) / 1000.0,
        cost=counters.get("cost_micros", 0) / 1_000_000,
        rejected=rejected,
        formats={f: counters.get(f"format_{f}", 0) for f in RESPONSE_FORMATS},
    )


def counters_of(result: Any, namespace: str = STAGE) -> dict[str, int]:
    """Committed counter values of one namespace from a finished ``PipelineResult``."""
    from apache_beam.metrics.metric import MetricsFilter

    found: dict[str, int] = {}
    query = result.metrics().query(MetricsFilter().with_namespace(namespace))
    for c in query["counters"]:
        name = c.key.metric.name
        found[name] = found.get(name, 0) + int(c.committed or c.attempted or 0)
    return found
