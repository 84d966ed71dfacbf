"""Stage ``clean``: normalise the problem statement, rewrite and judge it with an LLM, refuse leaks.

Deliberate choices:
- Evidence is never replaced: ``Quality`` keeps the raw text, the normalised text, the rewrite
  (even a refused one), the scores, the model, the prompt versions and the leak overlap; the
  task's ``problem_statement`` is whichever text was chosen (``Quality.used``).
- Without ``llm_base_url`` the stage runs the deterministic normaliser alone and says so
  (``CleanFn.normalizer_only``, counter ``clean:normalizer_only``, ``describe_clean``).
- The leak check is pure and deterministic (``leak.py``): word n-grams of the rewrite that also
  occur in the lines the code patch ADDS. Above ``leak_threshold`` the rewrite is refused and the
  normalised text is used. Prompts, requests and reply checks are ``prompting.py``; issue texts
  ``issues.py``; the per-run report ``report.py``.
- Scores use SWE-bench Verified's two questions on a 0-3 scale where higher is better
  (score = 3 - Verified's label), so thresholds read "at least"; the defaults keep what
  Verified kept (labels 0 and 1).
- Requests are batched per bundle through ``StageFn``'s batching hook (``batch_size``,
  ``run_batch``): records that miss the stage cache are buffered and cleaned by a thread pool of
  ``llm_concurrency`` workers; counters are bumped on the bundle's thread only (``count``),
  because Beam's metrics container is thread-local. An LLM failure rejects the record with
  ``llm_error`` but is not written to the stage cache (``cacheable``), so the next run tries
  again.
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
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests
from apache_beam.metrics import Metrics

from smelter.schemas import Quality, Reason, Record, Rejection, Stage, Task
from smelter.transforms.adapters.chat import (
    ChatModel,
    ChatRequest,
    LLMError,
    UnusableReply,
    usage_counters,
)
from smelter.transforms.adapters.llm import OpenAIChatClient
from smelter.transforms.clean.config import CleanConfig
from smelter.transforms.clean.issues import IssueSource
from smelter.transforms.clean.leak import leak_overlap
from smelter.transforms.clean.normalize import NORMALIZER_VERSION, normalize_statement
from smelter.transforms.clean.prompting import (
    Prompts,
    judge_request,
    parse_judgement,
    refusal,
    rewrite_request,
    synthesize_request,
)
from smelter.transforms.errors import Fatal, Rejected
from smelter.transforms.stage import StageFn
from smelter.transforms.util import stable_hash

STAGE = Stage.CLEAN
log = logging.getLogger(__name__)

# A normalised statement of one line and at most this many characters is a title alone: GitHub
# titles are short (SWE-bench's median is ~50 characters), real issue texts have a body.
TITLE_ONLY_CHARS = 120


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


class CleanFn(StageFn[CleanConfig, Task, Task]):
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
        cfg = self._config
        self._model: OpenAIChatClient | None = None
        self._pool: ThreadPoolExecutor | None = None
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

    # -- batching: StageFn buffers cache misses, the pool sends their requests at once ----------
    def batch_size(self) -> int:
        """``llm_batch_size`` with an endpoint; the normaliser alone has nothing to wait on."""
        return 1 if self._config.normalizer_only else max(1, self._config.llm_batch_size)

    def run_batch(self, batch: Sequence[tuple[Task, str]]) -> list[list[Record]]:
        assert self._pool is not None
        results = list(self._pool.map(lambda item: self._outcomes(*item), batch))
        self._report_usage()
        return results

    def cacheable(self, outcomes: list[Record]) -> bool:
        """An LLM failure is transient: caching it would make the next run skip the retry."""
        return not any(isinstance(o, Rejection) and o.reason is Reason.LLM_ERROR for o in outcomes)

    def count(self, outcomes: list[Record], fresh: bool) -> None:
        if self._config.normalizer_only:
            Metrics.counter(STAGE, "normalizer_only").inc()  # every record, cached or not
            return
        if not fresh:
            return
        for o in outcomes:
            if isinstance(o, Task) and o.quality is not None:
                if o.quality.leak_rejected:
                    Metrics.counter(STAGE, "leak_refused").inc()
                if o.quality.used in ("rewritten", "synthesized"):
                    Metrics.counter(STAGE, o.quality.used).inc()
                if o.quality.raw_source == "issue" and o.provenance.source == "git":
                    Metrics.counter(STAGE, "issue_text").inc()  # fetched by this stage

    def _report_usage(self) -> None:
        assert self._model is not None
        now = self._model.usage.snapshot()
        for name, delta in usage_counters(self._usage_seen, now).items():
            if delta:
                Metrics.counter(STAGE, name).inc(delta)
        self._usage_seen = now
