"""Stage clean: normaliser-only mode, rewrite + judge through a real HTTP stand-in, leak check,
thresholds, response cache and secrets; the Beam shell with batching and counters."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import apache_beam as beam
import pytest

from smelter.pipeline.demo.files import NOISY_BODY
from smelter.schemas import Reason, Rejection, Task
from smelter.transforms.adapters.chat import UnusableReply
from smelter.transforms.adapters.llm import OpenAIChatClient
from smelter.transforms.clean.clean import (
    CleanFn,
    check_endpoint,
    clean_task,
    describe_clean,
    unusable_statement,
)
from smelter.transforms.clean.config import CleanConfig
from smelter.transforms.clean.issues import IssueSource
from smelter.transforms.clean.leak import added_lines, leak_overlap, word_ngrams
from smelter.transforms.clean.prompting import (
    Prompts,
    failure_output,
    load_prompt,
    parse_judgement,
    refusal,
    truncate_middle,
)
from smelter.transforms.clean.report import clean_report, counters_of
from smelter.transforms.errors import Fatal, Rejected
from smelter.transforms.mine.github_config import GitHubConfig
from smelter.transforms.outage import find_outage, outage_line
from smelter.transforms.stage import Stage
from tests.fixtures.clean_tasks import (
    POWER_PATCH,
    make_task,
    title_only_task,
)
from tests.fixtures.github_standin import FakeComment, FakeIssue, FakeRepo
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
        response_format="json_schema",
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
    with pytest.raises(UnusableReply):
        parse_judgement({"specification_score": 4, "test_alignment_score": 3})
    with pytest.raises(UnusableReply):
        parse_judgement({"test_alignment_score": 3})
    with pytest.raises(UnusableReply):
        parse_judgement(None)


def test_config_fields_all_have_help_and_distinctive_names() -> None:
    for f in dataclasses.fields(CleanConfig):
        assert f.metadata.get("help"), f.name
        if f.metadata.get("from_section"):
            continue
        assert f.name.startswith(
            ("llm_", "min_", "leak_", "clean_", "judge_", "synthesize_", "outage_")
        ), f.name


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
    llm_standin.script("judge", Reply.server_error(503), Reply.server_error(503))
    with pytest.raises(Rejected) as r:
        clean_task(make_task(statement=NOISY), cfg, _client(cfg), Prompts.load(cfg))
    assert r.value.reason is Reason.LLM_ERROR and r.value.detail.startswith("judge:")


def test_judge_reply_without_json_is_refused_not_an_outage(llm_standin: LLMStandIn) -> None:
    """Regression (issue 13): a judge that answers prose was counted as llm_error, an outage."""
    cfg = _config(llm_standin, llm_max_retries=1)
    llm_standin.script("judge", Reply(content="no idea"), Reply(content="still no json"))
    with pytest.raises(Rejected) as r:
        clean_task(make_task(statement=NOISY), cfg, _client(cfg), Prompts.load(cfg))
    assert r.value.reason is Reason.REPLY_REFUSED
    assert r.value.detail.startswith("judge: no JSON object")


def test_rewrite_echoing_the_placeholder_is_refused(llm_standin: LLMStandIn) -> None:
    """Regression (issue 13): with the judge off, SmolLM2 answered the prompt's placeholder
    ``"<the rewritten statement>"``, which was stored as the rewrite."""
    cfg = _config(llm_standin, llm_judge=False)
    llm_standin.script("clean", Reply.rewrite("<the rewritten statement>"))
    out = clean_task(make_task(statement=NOISY), cfg, _client(cfg), Prompts.load(cfg))
    q = out.quality
    assert q is not None and q.used == "normalized" and q.statement_source == "pr"
    assert out.problem_statement == q.normalized_statement
    assert "rewrite refused: echoes the prompt's placeholder" in q.rationale


def test_rewrite_repeating_the_prompt_is_refused(llm_standin: LLMStandIn) -> None:
    cfg = _config(llm_standin, llm_judge=False)
    system = load_prompt("clean_v1").system
    llm_standin.script("clean", Reply.rewrite(system[:600]))
    out = clean_task(make_task(statement=NOISY), cfg, _client(cfg), Prompts.load(cfg))
    assert out.quality is not None and out.quality.used == "normalized"
    assert "repeats the prompt's instructions" in out.quality.rationale


def test_refusal_reasons() -> None:
    clean = load_prompt("clean_v1")
    assert refusal("", clean) == "empty reply"
    assert refusal('  "<the rewritten statement>" ', clean) is not None
    assert "placeholder" in (refusal("<your answer here>", clean) or "")
    assert "instructions" in (refusal(clean.system, clean) or "")
    assert refusal(GOOD_REWRITE, clean) is None
    # repeating the statement it was given is what a rewrite does: not a refusal
    assert refusal(NOISY_BODY, clean) is None


def test_unusable_statement_rules() -> None:
    cfg = CleanConfig()
    assert "characters" in (unusable_statement("Fix power", cfg) or "")
    assert "title alone" in (
        unusable_statement("Fix power() with a negative exponent now", cfg) or ""
    )
    assert (
        unusable_statement("Fix power()\n\n`power(2, -1)` returned 1 instead of 0.5.", cfg) is None
    )
    long_line = "When I call power(2, -1) " + "it returns 1 and the docs say otherwise " * 4
    assert unusable_statement(long_line, cfg) is None  # one long line is a statement


def test_failure_output_takes_a_failing_before_run() -> None:
    task = title_only_task()
    assert "AssertionError" in failure_output(task) and "assert 1 == 0.5" in failure_output(task)
    assert failure_output(make_task()) == ""  # validation kept no runs
    assert len(failure_output(task, limit=50)) == 50


# ------------------------------------------------------------------------------------ synthesis


def test_title_only_task_gets_a_synthesized_statement(llm_standin: LLMStandIn) -> None:
    """Issue 13's case: a validated task whose PR has a 10-character title and no body."""
    cfg = _config(llm_standin)
    task = title_only_task()
    assert len(task.problem_statement) == 10
    out = clean_task(task, cfg, _client(cfg), Prompts.load(cfg))
    q = out.quality
    assert q is not None
    assert (q.used, q.statement_source, q.raw_source) == ("synthesized", "synthesized", "pr")
    assert out.problem_statement == q.synthesized_statement and q.rewritten_statement is None
    assert "tests/test_core.py::test_power_negative_exponent" in out.problem_statement
    assert q.leak_overlap is not None and q.leak_overlap <= cfg.leak_threshold
    assert not q.leak_rejected and q.raw_problem_statement == "Fix power!"
    assert q.prompt_version == "synthesize_v1+judge_v1" and q.specification_score == 3
    assert "no usable statement" in q.rationale
    # the synthesizer saw the tests, their output before the fix and the test patch, not the fix
    [syn] = llm_standin.chat_requests("synthesize")
    prompt = "\n".join(m["content"] for m in syn.body["messages"])  # type: ignore[index]
    assert "tests/test_core.py::test_power_negative_exponent" in prompt
    assert "assert 1 == 0.5" in prompt and "def test_power_negative_exponent" in prompt
    assert "return 1 / power(base, -exp)" not in prompt and "if exp < 0" not in prompt
    # and it was judged like a rewrite
    [jd] = llm_standin.chat_requests("judge")
    assert out.problem_statement in jd.body["messages"][1]["content"]  # type: ignore[index]
    assert llm_standin.chat_requests("clean") == []  # nothing to rewrite


@pytest.mark.parametrize(
    ("reply", "why"),
    [
        ("<the issue text>", "placeholder"),  # a placeholder of any prompt
        ("", "empty reply"),
        ("`power(2, -1)` is wrong; add `if exp < 0: return 1 / power(base, -exp)` to power.",
         "overlap with the patch"),
        ("power is broken", "characters"),
    ],
)  # fmt: skip
def test_synthesized_statement_refused_with_a_reason(
    llm_standin: LLMStandIn, reply: str, why: str
) -> None:
    cfg = _config(llm_standin)
    llm_standin.script("synthesize", Reply.rewrite(reply))
    with pytest.raises(Rejected) as r:
        clean_task(title_only_task(), cfg, _client(cfg), Prompts.load(cfg))
    assert r.value.reason is Reason.REPLY_REFUSED and why in r.value.detail
    assert r.value.detail.startswith("synthesized statement refused")
    assert llm_standin.chat_requests("judge") == []


def test_synthesis_off_or_no_endpoint_keeps_the_old_rules(llm_standin: LLMStandIn) -> None:
    with pytest.raises(Rejected) as r:
        clean_task(title_only_task(), CleanConfig(), None, None)
    assert r.value.reason is Reason.STATEMENT_TOO_SHORT
    cfg = _config(llm_standin, llm_synthesize=False)
    with pytest.raises(Rejected) as r:
        clean_task(title_only_task(), cfg, _client(cfg), Prompts.load(cfg))
    assert r.value.reason is Reason.STATEMENT_TOO_SHORT
    assert llm_standin.chat_requests() == []
    # a longer title alone without an endpoint is kept as it was: there is nothing better
    title = "Fix power() with a negative exponent, again"
    out = clean_task(make_task(statement=title), CleanConfig(), None, None)
    assert out.problem_statement == title and out.quality is not None
    assert out.quality.statement_source == "pr"


# ------------------------------------------------------------------------------------ issues

GH_TOKEN_ENV = "SMELTER_TEST_CLEAN_GH_TOKEN"


def _issue_repo(standin_url: str = "") -> FakeRepo:
    issue = FakeIssue(
        number=6,
        title="power() is wrong for negative exponents",
        body="`power(2, -1)` returns `1`; I expected `0.5`.\n\nSeen on 0.3.",
        created_at="2024-02-01T00:00:00Z",
        comments=[
            FakeComment("dev", "2024-02-02T00:00:00Z", "Confirmed on main.", id=61),
            FakeComment("dev", "2024-03-05T00:00:00Z", "Fixed by the PR.", id=62),
        ],
    )
    return FakeRepo("smelter-demo/calc", "file:///nowhere", issues=[issue])


def _gh_config(llm: LLMStandIn, gh: Any, tmp_path: Path, **kw: Any) -> CleanConfig:
    github = GitHubConfig(
        github_base_url=gh.base_url,
        github_token_env=GH_TOKEN_ENV,
        github_cache_dir=str(tmp_path / "gh-cache"),
        github_backoff_seconds=0.01,
    )
    return _config(llm, github=github, **kw)


def _linked(task: Task, *numbers: int) -> Task:
    return task.model_copy(
        update={"provenance": task.provenance.model_copy(update={"linked_issues": list(numbers)})}
    )


def test_issue_text_fetched_when_a_token_is_at_hand(
    llm_standin: LLMStandIn,
    github_standin_factory: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gh = github_standin_factory([_issue_repo()])
    monkeypatch.setenv(GH_TOKEN_ENV, "ghp_test_token_1")
    cfg = _gh_config(llm_standin, gh, tmp_path, llm_judge=False)
    assert IssueSource.enabled(cfg)
    task = _linked(title_only_task(), 6)
    issues = IssueSource(cfg).open()
    try:
        out = clean_task(task, cfg, _client(cfg), Prompts.load(cfg), issues)
        again = clean_task(task, cfg, _client(cfg), Prompts.load(cfg), issues)
    finally:
        issues.close()
    q = out.quality
    assert q is not None and q.raw_source == "issue" and q.statement_source == "rewritten"
    assert q.raw_problem_statement.startswith("power() is wrong for negative exponents")
    assert "statement from issue(s) #6" in q.rationale
    assert out.hints_text == "Confirmed on main."  # before the PR's first commit only
    [rw] = llm_standin.chat_requests("clean")[:1]
    assert "I expected `0.5`" in rw.body["messages"][1]["content"]  # type: ignore[index]
    assert llm_standin.chat_requests("synthesize") == []  # the issue made synthesis needless
    assert again.problem_statement == out.problem_statement
    assert {r.token for r in gh.log} == {"ghp_test_token_1"}
    # the second task's issue came through the GitHub source's response cache (304s)
    assert gh.count(status=304) >= 1


def test_no_token_no_issue_request(
    llm_standin: LLMStandIn,
    github_standin_factory: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gh = github_standin_factory([_issue_repo()])
    monkeypatch.delenv(GH_TOKEN_ENV, raising=False)
    cfg = _gh_config(llm_standin, gh, tmp_path)
    assert not IssueSource.enabled(cfg)
    fn = CleanFn(cfg)
    out = tmp_path / "out"
    out.mkdir()
    check_endpoint(cfg)
    tasks, _, _ = _run(fn, [_linked(title_only_task(), 6)], out)
    assert gh.log == []
    assert tasks[0].quality is not None and tasks[0].quality.statement_source == "synthesized"
    monkeypatch.setenv(GH_TOKEN_ENV, "tok")
    assert not IssueSource.enabled(dataclasses.replace(cfg, clean_fetch_issues=False))


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
    assert "structured output: json_schema (json_schema: accepted)" in check_endpoint(cfg)
    probes = len(llm_standin.chat_requests())
    llm_standin.script("judge", Reply.scores(1, 3, "vague"))  # one task under-specified
    first_out = tmp_path / "run1"
    first_out.mkdir()
    tasks, rejects, counters = _run(CleanFn(cfg), _demo_tasks(), first_out)
    assert len(tasks) == 5
    assert sorted(r.reason.value for r in rejects) == ["under_specified"]
    used = sorted(t.quality.used for t in tasks if t.quality)
    assert used.count("rewritten") + used.count("synthesized") == 5 and "synthesized" in used
    # the pre-flight's answer travelled with the CleanFn: the workers did not probe again
    assert llm_standin.chat_requests("probe") == llm_standin.chat_requests()[:probes]
    # 5 tasks x (rewrite + judge) + the too-short one (synthesis + judge)
    assert len(llm_standin.chat_requests()) - probes == 12
    assert counters["requests"] == 12 and counters["completions"] == 12
    assert counters["prompt_tokens"] > 0 and counters["completion_tokens"] > 0
    report = clean_report(counters, cfg)
    assert (report.tasks_in, report.kept) == (6, 5)
    assert report.rewritten + report.synthesized == 5 and report.synthesized >= 0
    assert report.rejected == {"under_specified": 1}
    assert "12 requests" in report.summary()
    assert "structured output: json_schema (12)" in report.summary()

    # Same work again, no stage cache: every answer comes from the response cache.
    second_out = tmp_path / "run2"
    second_out.mkdir()
    tasks2, rejects2, counters2 = _run(CleanFn(cfg), _demo_tasks(), second_out)
    assert len(llm_standin.chat_requests()) - probes == 12
    assert counters2.get("requests", 0) == 0 and counters2["cached"] == 12
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


def test_beam_stage_with_a_llama_cpp_like_server(tmp_path: Path) -> None:
    """Regression (issue 13): against a server that answers json_schema with HTTP 500, every
    request was retried 4 times and all tasks ended as llm_error."""
    with LLMStandIn(accept_formats=("json_object",)) as server:
        cfg = _config(server, tmp_path)
        assert "structured output: json_object" in check_endpoint(cfg)
        out = tmp_path / "out"
        out.mkdir()
        tasks, rejects, counters = _run(CleanFn(cfg), _demo_tasks(), out)
        assert len(tasks) == 6 and rejects == []
        assert all(t.quality and t.quality.response_format == "json_object" for t in tasks)
        report = clean_report(counters, cfg)
        assert report.retries == 0 and report.errors == 0
        assert report.response_format == "json_object (12)"


def test_outage_is_found_in_the_funnel(tmp_path: Path) -> None:
    funnel = {
        "stages": [
            {"stage": "validate", "in": 10, "out": 10, "rejected": {}},
            {"stage": "clean", "in": 10, "out": 4, "rejected": {"llm_error": 6}},
        ]
    }
    assert find_outage(funnel, 0.5) == ("clean", "llm_error", 6, 10)
    assert find_outage(funnel, 0.6) is None  # "more than" the share
    # many records rejected for a reason about the records themselves is a result, not an outage
    quality = {
        "stages": [{"stage": "clean", "in": 10, "out": 0, "rejected": {"under_specified": 10}}]
    }
    assert find_outage(quality, 0.5) is None
    (tmp_path / "rejects.jsonl").write_text(
        json.dumps({"instance_id": "a", "stage": "clean", "reason": "llm_error",
                    "detail": "rewrite: HTTP 500 after 5 attempts: boom"}) + "\n"
    )  # fmt: skip
    line = outage_line(funnel, tmp_path, 0.5)
    assert line is not None and "\n" not in line
    assert line.startswith("clean: 6 of 10 records failed with llm_error (more than 50%)")
    assert "HTTP 500 after 5 attempts" in line and "run the same command again" in line


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
    assert line.endswith("structured output: json_schema (json_schema: accepted)")
    assert "lists standin-1, not other" in check_endpoint(_config(llm_standin, llm_model="other"))
    # the probe: one tiny request per check, never a rewrite or a judgement
    assert [r.kind for r in llm_standin.chat_requests()] == ["probe", "probe"]
    no_schema = check_endpoint(_config(llm_standin, llm_json_schema=False))
    assert no_schema.endswith("structured output: text (--no-llm-json-schema)")
    assert len(llm_standin.chat_requests()) == 2
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


def test_run_ends_non_zero_on_an_outage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The CLI's closing report: exit 1 and one line when most of a stage failed for one
    infrastructure reason (issue 13: every task was llm_error and the run exited 0)."""
    from smelter.pipeline.cmd_run import _report
    from smelter.pipeline.plan import RunPlan

    def funnel(rejected: dict[str, int]) -> dict[str, Any]:
        return {
            "stages": [{"stage": "clean", "in": 4, "out": 4 - sum(rejected.values()),
                        "rejected": rejected}],
            "files": {"pull_requests": 4, "candidates": 4, "tasks": 4 - sum(rejected.values())},
            "unaccounted": [],
            "duplicated": [],
        }  # fmt: skip

    plan = RunPlan(out_dir=str(tmp_path), until="clean", repo_specs=(),
                   configs={"clean": CleanConfig()})  # fmt: skip
    assert _report(funnel({"llm_error": 3}), plan) == 1
    assert "run failed: clean: 3 of 4 records failed with llm_error" in capsys.readouterr().out
    assert _report(funnel({"llm_error": 2}), plan) == 0  # half is not "more than" 50%
    assert _report(funnel({"under_specified": 4}), plan) == 0  # a result, not an outage
    strict = dataclasses.replace(plan, configs={"clean": CleanConfig(outage_share=0.25)})
    assert _report(funnel({"llm_error": 2}), strict) == 1
