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
"""

from __future__ import annotations

import dataclasses
import re
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

from smelter.schemas import Quality, Reason, Rejection, Task
from smelter.transforms.clean_config import CleanConfig
from smelter.transforms.common import Fatal, Rejected, StageFn
from smelter.transforms.llm import (
    ChatModel,
    ChatRequest,
    LLMError,
    MalformedResponse,
    OpenAIChatClient,
    usage_counters,
)
from smelter.transforms.normalize import NORMALIZER_VERSION, normalize_statement

STAGE = "clean"


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
    res = resources.files("smelter.transforms").joinpath("prompts", f"{name}.md")
    if not res.is_file():
        raise Fatal(f"unknown prompt {name!r} (no transforms/prompts/{name}.md in the package)")
    return parse_prompt(name, res.read_text(encoding="utf-8"))


CLEAN_SCHEMA: Mapping[str, Any] = {
    "type": "object",
    "properties": {"statement": {"type": "string"}},
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

    @classmethod
    def load(cls, config: CleanConfig) -> Prompts:
        return cls(clean=load_prompt(config.clean_prompt), judge=load_prompt(config.judge_prompt))

    def version(self, judge: bool) -> str:
        return f"{self.clean.version}+{self.judge.version}" if judge else self.clean.version


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
        raise MalformedResponse(f"judge gave no integer {name}: {value!r}") from None
    if not 0 <= score <= 3 or (isinstance(value, float) and value != score):
        raise MalformedResponse(f"judge gave {name}={value!r}, outside 0-3")
    return score


def parse_judgement(data: Mapping[str, Any] | None) -> tuple[int, int, str]:
    """(specification_score, test_alignment_score, rationale) from the judge's JSON."""
    if data is None:
        raise MalformedResponse("judge reply had no JSON object")
    rationale = str(data.get("rationale", "")).strip()
    return _score(data, "specification_score"), _score(data, "test_alignment_score"), rationale


def clean_task(
    task: Task, config: CleanConfig, model: ChatModel | None, prompts: Prompts | None
) -> Task:
    """The whole stage for one task. Raises ``Rejected`` (short, under-specified, misaligned,
    LLM failure) or ``Fatal`` (the endpoint refuses us altogether)."""
    raw = task.quality.raw_problem_statement if task.quality else task.problem_statement
    normalized = normalize_statement(raw)
    if len(normalized) < config.min_statement_chars:
        raise Rejected(
            Reason.STATEMENT_TOO_SHORT,
            f"{len(normalized)} characters after {NORMALIZER_VERSION} "
            f"(minimum {config.min_statement_chars})",
        )
    if model is None or prompts is None:
        quality = Quality(
            raw_problem_statement=raw,
            normalized_statement=normalized,
            used="normalized",
            normalizer_version=NORMALIZER_VERSION,
        )
        return task.model_copy(update={"problem_statement": normalized, "quality": quality})

    notes: list[str] = []
    try:
        reply = model.complete(rewrite_request(task, normalized, config, prompts.clean))
    except LLMError as e:
        raise Rejected(Reason.LLM_ERROR, f"rewrite: {e}") from None
    rewritten = str((reply.data or {}).get("statement", "")).strip()
    overlap = leak_overlap(rewritten, task.patch, config.leak_ngram) if rewritten else 0.0
    leaked = overlap > config.leak_threshold
    chosen, used = rewritten, "rewritten"
    if leaked:
        chosen, used = normalized, "normalized"
        notes.append(f"rewrite refused: {overlap:.0%} n-gram overlap with the patch")
    elif len(rewritten) < config.min_statement_chars:
        chosen, used = normalized, "normalized"
        notes.append(f"rewrite refused: {len(rewritten)} characters")

    spec = align = None
    if config.llm_judge:
        try:
            judged = model.complete(judge_request(task, chosen, config, prompts.judge))
            spec, align, rationale = parse_judgement(judged.data)
        except LLMError as e:
            raise Rejected(Reason.LLM_ERROR, f"judge: {e}") from None
        notes.insert(0, rationale)

    quality = Quality(
        raw_problem_statement=raw,
        normalized_statement=normalized,
        rewritten_statement=rewritten or None,
        used=used,  # type: ignore[arg-type]
        specification_score=spec,
        test_alignment_score=align,
        rationale=" | ".join(n for n in notes if n),
        leak_overlap=round(overlap, 4),
        leak_rejected=leaked,
        model=model.model,
        prompt_version=prompts.version(config.llm_judge),
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
    return task.model_copy(update={"problem_statement": chosen, "quality": quality})


def describe_clean(config: CleanConfig) -> str:
    """One line for the run summary: which cleaning actually ran."""
    if config.normalizer_only:
        return f"clean: {NORMALIZER_VERSION} only (no --llm-base-url: no rewrite, no judge)"
    judge = f" + {config.judge_prompt}" if config.llm_judge else ""
    return (
        f"clean: {NORMALIZER_VERSION} + {config.clean_prompt}{judge} "
        f"with {config.llm_model} at {config.llm_base_url}"
    )


def check_endpoint(config: CleanConfig, session: requests.Session | None = None) -> str:
    """Pre-flight for the CLI, before Beam starts: ``Fatal`` (one line) when the endpoint cannot
    be reached or refuses the key; otherwise the ``describe_clean`` line, with a note when the
    server does not list the model (llama.cpp lists its file name, so this is not an error).
    Costs one ``GET /models``, never a completion."""
    if config.normalizer_only:
        return describe_clean(config)
    client = OpenAIChatClient(
        config.llm_base_url or "",
        config.llm_model,
        session or requests.Session(),
        api_key_env=config.llm_api_key_env,
        timeout_seconds=min(config.llm_timeout_seconds, 30.0),
    )
    try:
        served = client.list_models()
    finally:
        client.close()
    line = describe_clean(config)
    if served and config.llm_model not in served:
        line += f" (the endpoint lists {', '.join(served[:3])}, not {config.llm_model})"
    return line


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
)
FLAG_COUNTERS = ("normalizer_only", "leak_refused", "rewritten")


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

    def attach(self, cache_root: str | None, progress_dir: str | None = None) -> CleanFn:
        """As ``StageFn.attach``; LLM replies default to ``<cache_root>/llm`` beside the stage
        cache, so a re-run of a run directory makes no request without any extra flag."""
        super().attach(cache_root, progress_dir)
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
            cache_dir=self._llm_cache_dir,
            cost_per_1k_prompt_tokens=cfg.llm_cost_per_1k_prompt_tokens,
            cost_per_1k_completion_tokens=cfg.llm_cost_per_1k_completion_tokens,
        )
        self._pool = ThreadPoolExecutor(max(1, cfg.llm_concurrency), thread_name_prefix="clean")
        self._usage_seen = self._model.usage.snapshot()

    def teardown_stage(self) -> None:
        if getattr(self, "_pool", None) is not None:
            self._pool.shutdown(wait=True)  # type: ignore[union-attr]
        if getattr(self, "_model", None) is not None:
            self._model.close()  # type: ignore[union-attr]

    def run(self, record: Task) -> Iterable[Task]:
        yield clean_task(record, self._config, self._model, self._prompts)

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
                    if o.quality.used == "rewritten":
                        Metrics.counter(STAGE, "rewritten").inc()
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
    leak_refused: int = 0
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

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        if self.normalizer_only:
            return f"clean: normaliser only, {self.kept} kept of {self.tasks_in}"
        per = max(1, self.tasks_in - self.stage_cache_hits)
        cost = f", cost {self.cost:.4f}" if self.cost else ""
        return (
            f"clean: {self.kept} kept of {self.tasks_in}, {self.rewritten} rewritten, "
            f"{self.leak_refused} leaking rewrites refused; {self.requests} requests "
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
        leak_refused=counters.get("leak_refused", 0),
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
