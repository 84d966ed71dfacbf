"""Stage clean: normaliser-only mode, rewrite + judge through a real HTTP stand-in, leak check,
thresholds, response cache and secrets; the Beam shell with batching and counters."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import apache_beam as beam
import pytest

from smelter.pipeline.demo_source import NOISY_BODY
from smelter.schemas import Reason, Rejection, Task
from smelter.transforms.clean import (
    CleanConfig,
    CleanFn,
    Prompts,
    added_lines,
    check_endpoint,
    clean_report,
    clean_task,
    counters_of,
    describe_clean,
    leak_overlap,
    load_prompt,
    parse_judgement,
    truncate_middle,
    word_ngrams,
)
from smelter.transforms.common import Fatal, Rejected, Stage
from smelter.transforms.llm import MalformedResponse, OpenAIChatClient
from tests.fixtures.clean_tasks import POWER_PATCH, make_task
from tests.fixtures.llm_standin import LLMStandIn, Reply

NOISY = "Fix power() with a negative exponent\n\n" + NOISY_BODY
GOOD_REWRITE = (
    "`power(base, exp)` in `calc.core` gives a wrong result for a negative exponent: "
    "`power(2, -1)` returns `1` instead of `0.5`.\n\nExpected: `power(2, -1) == 0.5`, "
    "while `power(2, 3) == 8` keeps working."
)
LEAKING_REWRITE = (
    "`power(2, -1)` returns 1 instead of 0.5. Fix it by adding at the top of `power`:\n\n"
    "```python\nif exp < 0:\n    return 1 / power(base, -exp)\n```"
)
SECRET = "sk-live-SECRET-9f8e7d6c"


def _config(server: LLMStandIn | None = None, tmp_path: Path | None = None, **kw) -> CleanConfig:
    if server is not None:
        kw.setdefault("llm_base_url", server.base_url)
        kw.setdefault("llm_model", "standin-1")
        kw.setdefault("llm_timeout_seconds", 5.0)
        kw.setdefault("llm_backoff_seconds", 0.01)
    if tmp_path is not None:
        kw.setdefault("llm_cache_dir", str(tmp_path / "llm-cache"))
    return CleanConfig(**kw)


def _client(config: CleanConfig) -> OpenAIChatClient:
    import requests

    return OpenAIChatClient(
        config.llm_base_url or "",
        config.llm_model,
        requests.Session(),
        timeout_seconds=config.llm_timeout_seconds,
        backoff_seconds=config.llm_backoff_seconds,
        max_retries=config.llm_max_retries,
        cache_dir=config.llm_cache_dir,
        sleep=lambda s: None,
    )


# ------------------------------------------------------------------------------------ pure parts


def test_added_lines_skip_headers_and_context() -> None:
    assert added_lines(POWER_PATCH) == ["    if exp < 0:", "        return 1 / power(base, -exp)"]


def test_word_ngrams_ignore_punctuation_and_case() -> None:
    assert word_ngrams("Return  1/power(base,-EXP)", 3) == word_ngrams("return 1 power base exp", 3)
    assert word_ngrams("too short", 3) == set()


def test_leak_overlap_flags_copied_fix_not_the_problem() -> None:
    assert leak_overlap(LEAKING_REWRITE, POWER_PATCH, 6) == 1.0
    assert leak_overlap(GOOD_REWRITE, POWER_PATCH, 6) == 0.0
    assert leak_overlap(LEAKING_REWRITE, "", 6) == 0.0  # deletion-only patch: nothing to leak
    assert leak_overlap("", POWER_PATCH, 6) == 0.0


def test_leak_overlap_partial() -> None:
    patch = "+++ b/x.py\n" + "".join(
        f"+value_{i} = compute_{i}(alpha, beta, gamma)\n" for i in range(10)
    )
    one_line = "The problem: value_3 = compute_3(alpha, beta, gamma) is wrong and other prose here."
    overlap = leak_overlap(one_line, patch, 4)
    assert 0.0 < overlap < 1.0


def test_truncate_middle_keeps_both_ends() -> None:
    text = "HEAD" + "x" * 1000 + "TAIL"
    cut = truncate_middle(text, 100)
    assert cut.startswith("HEAD") and cut.endswith("TAIL") and "characters cut" in cut
    assert len(cut) < 150
    assert truncate_middle("short", 100) == "short"


def test_packaged_prompts_parse_and_render() -> None:
    clean, judge = load_prompt("clean_v1"), load_prompt("judge_v1")
    assert clean.version == "clean_v1" and judge.version == "judge_v1"
    system, user = clean.render(repo="o/r", statement="STATEMENT-TEXT")
    assert system[0] == "system" and "never describe the solution".lower() in system[1].lower()
    assert "STATEMENT-TEXT" in user[1] and "{{" not in user[1]
    _, juser = judge.render(repo="o/r", statement="s", fail_to_pass="t::a", test_patch="+x")
    assert "<test_patch>" in juser[1] and "t::a" in juser[1]
    with pytest.raises(KeyError):
        clean.render(repo="o/r")


def test_prompt_by_path_and_unknown(tmp_path: Path) -> None:
    path = tmp_path / "clean_v9.md"
    path.write_text("header\n=== system ===\nS\n=== user ===\nU {{statement}}\n")
    assert load_prompt(str(path)).version == "clean_v9"
    with pytest.raises(Fatal, match="unknown prompt"):
        load_prompt("clean_v0")
    bad = tmp_path / "bad.md"
    bad.write_text("no sections")
    with pytest.raises(Fatal, match="section"):
        load_prompt(str(bad))


def test_parse_judgement_tolerates_strings_refuses_out_of_range() -> None:
    assert parse_judgement({"specification_score": "2", "test_alignment_score": 3}) == (2, 3, "")
    with pytest.raises(MalformedResponse):
        parse_judgement({"specification_score": 4, "test_alignment_score": 3})
    with pytest.raises(MalformedResponse):
        parse_judgement({"test_alignment_score": 3})
    with pytest.raises(MalformedResponse):
        parse_judgement(None)


def test_config_fields_all_have_help_and_distinctive_names() -> None:
    for f in dataclasses.fields(CleanConfig):
        assert f.metadata.get("help"), f.name
        assert f.name.startswith(("llm_", "min_", "leak_", "clean_", "judge_")), f.name


# ------------------------------------------------------------------------------------ clean_task


def test_normaliser_only_cleans_the_noisy_demo_statement() -> None:
    task = make_task(statement=NOISY)
    out = clean_task(task, CleanConfig(), None, None)
    assert out.problem_statement == (
        "Fix power() with a negative exponent\n\n## Description\n"
        "`power(2, -1)` returned 1 instead of 0.5: the loop never ran for a negative exponent."
    )
    q = out.quality
    assert q is not None and q.used == "normalized" and q.raw_problem_statement == NOISY
    assert q.model is None and q.prompt_version is None and q.normalizer_version == "normalize_v1"
    for noise in ("<!--", "Fixes #", "- [", "calc-bot", "reviewable", "Checklist"):
        assert noise not in out.problem_statement


def test_too_short_after_normalising_rejects() -> None:
    task = make_task(statement="<!-- describe -->\n- [ ] tests\nFixes #1\n\nBug.")
    with pytest.raises(Rejected) as r:
        clean_task(task, CleanConfig(), None, None)
    assert r.value.reason is Reason.STATEMENT_TOO_SHORT


def test_recleaning_keeps_the_original_raw_text() -> None:
    once = clean_task(make_task(statement=NOISY), CleanConfig(), None, None)
    twice = clean_task(once, CleanConfig(), None, None)
    assert twice.quality is not None and twice.quality.raw_problem_statement == NOISY


def test_rewrite_and_judge(llm_standin: LLMStandIn) -> None:
    cfg = _config(llm_standin)
    llm_standin.script("clean", Reply.rewrite(GOOD_REWRITE))
    llm_standin.script("judge", Reply.scores(3, 2, "clear; test checks the example"))
    out = clean_task(make_task(statement=NOISY), cfg, _client(cfg), Prompts.load(cfg))
    assert out.problem_statement == GOOD_REWRITE
    q = out.quality
    assert q is not None
    assert (q.used, q.specification_score, q.test_alignment_score) == ("rewritten", 3, 2)
    assert q.raw_problem_statement == NOISY and q.rewritten_statement == GOOD_REWRITE
    assert q.model == "standin-1" and q.prompt_version == "clean_v1+judge_v1"
    assert q.leak_overlap == 0.0 and not q.leak_rejected
    assert q.rationale == "clear; test checks the example"
    # the rewriter saw the normalised text, not the noise; the judge saw the rewrite + tests
    [rw] = llm_standin.chat_requests("clean")
    assert "<!--" not in rw.body["messages"][1]["content"]  # type: ignore[index]
    [jd] = llm_standin.chat_requests("judge")
    judge_prompt = jd.body["messages"][1]["content"]  # type: ignore[index]
    assert GOOD_REWRITE in judge_prompt
    assert "tests/test_core.py::test_power_negative_exponent" in judge_prompt
    assert "def test_power_negative_exponent" in judge_prompt
    assert "return 1 / power(base, -exp)" not in judge_prompt  # the judge never sees the fix


def test_leaking_rewrite_is_refused(llm_standin: LLMStandIn) -> None:
    cfg = _config(llm_standin)
    llm_standin.script("clean", Reply.rewrite(LEAKING_REWRITE))
    out = clean_task(make_task(statement=NOISY), cfg, _client(cfg), Prompts.load(cfg))
    q = out.quality
    assert q is not None and q.leak_rejected and q.used == "normalized"
    assert q.leak_overlap == 1.0 and q.rewritten_statement == LEAKING_REWRITE
    assert out.problem_statement == q.normalized_statement
    assert "rewrite refused" in q.rationale
    [jd] = llm_standin.chat_requests("judge")
    assert "return 1 / power" not in jd.body["messages"][1]["content"]  # type: ignore[index]


@pytest.mark.parametrize(
    ("spec", "align", "reason"),
    [
        (1, 3, Reason.UNDER_SPECIFIED),
        (3, 1, Reason.TESTS_MISALIGNED),
        (0, 0, Reason.UNDER_SPECIFIED),
    ],
)
def test_low_scores_reject(llm_standin: LLMStandIn, spec: int, align: int, reason: Reason) -> None:
    cfg = _config(llm_standin)
    llm_standin.script("judge", Reply.scores(spec, align, "vague"))
    with pytest.raises(Rejected) as r:
        clean_task(make_task(statement=NOISY), cfg, _client(cfg), Prompts.load(cfg))
    assert r.value.reason is reason and "vague" in r.value.detail


def test_thresholds_are_configurable(llm_standin: LLMStandIn) -> None:
    cfg = _config(llm_standin, min_specification_score=1, min_test_alignment_score=0)
    llm_standin.script("judge", Reply.scores(1, 0, "weak"))
    out = clean_task(make_task(statement=NOISY), cfg, _client(cfg), Prompts.load(cfg))
    assert out.quality is not None and out.quality.specification_score == 1


def test_judge_off_records_no_scores(llm_standin: LLMStandIn) -> None:
    cfg = _config(llm_standin, llm_judge=False)
    out = clean_task(make_task(statement=NOISY), cfg, _client(cfg), Prompts.load(cfg))
    assert out.quality is not None and out.quality.specification_score is None
    assert out.quality.prompt_version == "clean_v1"
    assert llm_standin.chat_requests("judge") == []


def test_llm_failure_rejects_with_llm_error(llm_standin: LLMStandIn) -> None:
    cfg = _config(llm_standin, llm_max_retries=1)
    llm_standin.script("judge", Reply(content="no idea"), Reply(content="still no json"))
    with pytest.raises(Rejected) as r:
        clean_task(make_task(statement=NOISY), cfg, _client(cfg), Prompts.load(cfg))
    assert r.value.reason is Reason.LLM_ERROR and r.value.detail.startswith("judge:")


# ------------------------------------------------------------------------------------ Beam


def _run(fn: CleanFn, tasks: list[Task], out: Path) -> tuple[list[Task], list[Rejection], dict]:
    p = beam.Pipeline(runner="DirectRunner")
    ok, rej = p | beam.Create(tasks) | Stage(fn)
    (
        ok
        | "ok" >> beam.Map(lambda t: t.to_json())
        | "wok" >> beam.io.WriteToText(str(out / "ok"), shard_name_template="", num_shards=1)
    )
    (
        rej
        | "rej" >> beam.Map(lambda t: t.to_json())
        | "wrej" >> beam.io.WriteToText(str(out / "rej"), shard_name_template="", num_shards=1)
    )
    result = p.run()
    result.wait_until_finish()
    tasks_out = [Task.from_json(x) for x in (out / "ok").read_text().splitlines()]
    rejects = [Rejection.from_json(x) for x in (out / "rej").read_text().splitlines()]
    return tasks_out, rejects, counters_of(result)


def _demo_tasks() -> list[Task]:
    tasks = [make_task(number=n, statement=f"{NOISY}\n\nSeen in build {n}.") for n in range(30, 35)]
    tasks.append(make_task(number=40, statement="Fixes #1"))  # too short
    return tasks


def test_beam_stage_batches_counts_and_second_run_is_request_free(
    llm_standin: LLMStandIn, tmp_path: Path
) -> None:
    cfg = _config(llm_standin, tmp_path, llm_batch_size=2, llm_concurrency=3)
    llm_standin.script("judge", Reply.scores(1, 3, "vague"))  # one task under-specified
    first_out = tmp_path / "run1"
    first_out.mkdir()
    tasks, rejects, counters = _run(CleanFn(cfg), _demo_tasks(), first_out)
    assert len(tasks) == 4
    assert sorted(r.reason.value for r in rejects) == ["statement_too_short", "under_specified"]
    assert all(t.quality and t.quality.used == "rewritten" for t in tasks)
    assert len(llm_standin.chat_requests()) == 10  # 5 tasks x (rewrite + judge)
    assert counters["requests"] == 10 and counters["completions"] == 10
    assert counters["prompt_tokens"] > 0 and counters["completion_tokens"] > 0
    report = clean_report(counters, cfg)
    assert (report.tasks_in, report.kept, report.rewritten) == (6, 4, 4)
    assert report.rejected == {"statement_too_short": 1, "under_specified": 1}
    assert "10 requests" in report.summary()

    # Same work again, no stage cache: every answer comes from the response cache.
    second_out = tmp_path / "run2"
    second_out.mkdir()
    tasks2, rejects2, counters2 = _run(CleanFn(cfg), _demo_tasks(), second_out)
    assert len(llm_standin.chat_requests()) == 10
    assert counters2.get("requests", 0) == 0 and counters2["cached"] == 10
    assert sorted(t.instance_id for t in tasks2) == sorted(t.instance_id for t in tasks)
    assert sorted(r.reason for r in rejects2) == sorted(r.reason for r in rejects)


def test_beam_stage_cache_and_llm_errors_are_retried_next_run(
    llm_standin: LLMStandIn, tmp_path: Path
) -> None:
    cfg = _config(llm_standin, tmp_path, llm_max_retries=0)
    task = make_task(statement=NOISY)
    llm_standin.script("clean", Reply.server_error())
    run1 = tmp_path / "run1"
    run1.mkdir()
    fn = CleanFn(cfg).attach(str(tmp_path / "stage-cache"))
    _, rejects, _ = _run(fn, [task], run1)  # type: ignore[arg-type]
    assert [r.reason for r in rejects] == [Reason.LLM_ERROR]
    run2 = tmp_path / "run2"
    run2.mkdir()
    tasks, rejects, _ = _run(CleanFn(cfg).attach(str(tmp_path / "stage-cache")), [task], run2)
    assert len(tasks) == 1 and rejects == []
    n = len(llm_standin.chat_requests())
    run3 = tmp_path / "run3"
    run3.mkdir()
    tasks3, _, counters3 = _run(CleanFn(cfg).attach(str(tmp_path / "stage-cache")), [task], run3)
    assert len(llm_standin.chat_requests()) == n and counters3["cache_hits"] == 1
    assert tasks3 == tasks


def test_llm_cache_defaults_beside_the_stage_cache(llm_standin: LLMStandIn, tmp_path: Path) -> None:
    cfg = _config(llm_standin)
    assert cfg.llm_cache_dir is None
    out = tmp_path / "out"
    out.mkdir()
    _run(CleanFn(cfg).attach(str(tmp_path / "cache")), [make_task(statement=NOISY)], out)
    assert len(list((tmp_path / "cache" / "llm").rglob("*.json"))) == 2  # rewrite + judge


def test_beam_normaliser_only_says_so(tmp_path: Path) -> None:
    fn = CleanFn(CleanConfig())
    assert fn.normalizer_only and "only" in fn.describe()
    tasks, rejects, counters = _run(fn, _demo_tasks(), tmp_path)
    assert len(tasks) == 5 and [r.reason for r in rejects] == [Reason.STATEMENT_TOO_SHORT]
    assert counters["normalizer_only"] == 6 and "requests" not in counters
    assert clean_report(counters, CleanConfig()).summary().startswith("clean: normaliser only")


def test_check_endpoint(llm_standin: LLMStandIn) -> None:
    assert "only" in check_endpoint(CleanConfig())
    line = check_endpoint(_config(llm_standin))
    assert "standin-1" in line and "lists" not in line
    assert "lists standin-1, not other" in check_endpoint(_config(llm_standin, llm_model="other"))
    assert llm_standin.chat_requests() == []
    with pytest.raises(Fatal, match="unreachable"):
        check_endpoint(CleanConfig(llm_base_url="http://127.0.0.1:9/v1", llm_model="m"))


def test_base_url_without_model_is_fatal() -> None:
    with pytest.raises(Fatal, match="--llm-model"):
        CleanFn(CleanConfig(llm_base_url="http://127.0.0.1:1/v1"))
    assert "standin" in describe_clean(
        CleanConfig(llm_base_url="http://127.0.0.1:1/v1", llm_model="standin")
    )


def test_no_api_key_in_any_output(
    llm_standin: LLMStandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SMELTER_LLM_API_KEY", SECRET)
    cfg = _config(llm_standin, tmp_path)
    llm_standin.script("clean", Reply.rate_limited("0"), Reply.server_error())
    llm_standin.script("judge", Reply.scores(0, 0, "bad"))
    out = tmp_path / "out"
    out.mkdir()
    tasks = [make_task(number=n, statement=NOISY + f"\n\nCase {n}.") for n in (1, 2)]
    fn = CleanFn(cfg).attach(str(tmp_path / "stage-cache"))
    _run(fn, tasks, out)
    assert all(r.headers.get("Authorization") == f"Bearer {SECRET}" for r in llm_standin.requests)
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any("llm-cache" in str(p) for p in written)
    for path in written:
        assert SECRET not in path.read_text(errors="replace"), path
    assert SECRET not in json.dumps(dataclasses.asdict(cfg))
