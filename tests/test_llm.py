"""OpenAIChatClient against a real HTTP stand-in on 127.0.0.1: retries, parsing, cache, secrets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests

from smelter.transforms.adapters.chat import (
    ChatRequest,
    LLMError,
    UnusableReply,
    extract_json_object,
)
from smelter.transforms.adapters.llm import (
    OpenAIChatClient,
    cache_key,
    request_body,
    retry_after_seconds,
)
from smelter.transforms.errors import Fatal
from tests.fixtures.llm_standin import LLAMA_CPP_REFUSAL, LLMStandIn, Reply

SECRET = "sk-test-Zq81mVx0secret"
SCHEMA = {
    "type": "object",
    "properties": {"statement": {"type": "string"}},
    "required": ["statement"],
    "additionalProperties": False,
}


def _request(text: str = "hello", schema: bool = True) -> ChatRequest:
    return ChatRequest(
        messages=(("system", "Answer in JSON."), ("user", f"<statement>\n{text}\n</statement>")),
        prompt_version="clean_v1",
        json_schema=SCHEMA if schema else None,
    )


class Sleeps:
    """A sleep that records how long it was asked to wait (and waits a token amount)."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def _client(server: LLMStandIn, tmp_path: Path | None = None, **kw) -> OpenAIChatClient:
    kw.setdefault("sleep", Sleeps())
    kw.setdefault("timeout_seconds", 5.0)
    kw.setdefault("response_format", "json_schema")  # known: no probe unless a test wants one
    return OpenAIChatClient(
        server.base_url,
        "standin-1",
        requests.Session(),
        cache_dir=str(tmp_path / "llm") if tmp_path else None,
        **kw,
    )


# ------------------------------------------------------------------------------------ parsing


@pytest.mark.parametrize(
    "text",
    [
        '{"a": 1}',
        'Sure! Here it is:\n```json\n{"a": 1}\n```\nAnything else?',
        '```\n{"a": 1,}\n```',
        'prefix {"a": 1, "b": [1, 2,],} suffix',
        'noise {not json} then {"a": 1}',
    ],
)
def test_extract_json_object_tolerant(text: str) -> None:
    assert extract_json_object(text)["a"] == 1


def test_extract_json_object_braces_and_commas_inside_strings() -> None:
    doc = extract_json_object('{"s": "a } b, ] c,}", "n": 2,}')
    assert doc == {"s": "a } b, ] c,}", "n": 2}


@pytest.mark.parametrize("text", ["", "no json here", '{"a": ', "[1, 2]"])
def test_extract_json_object_refuses(text: str) -> None:
    with pytest.raises(UnusableReply):
        extract_json_object(text)


def test_retry_after_forms() -> None:
    assert retry_after_seconds("3") == 3.0
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0


def test_cache_key_ignores_dict_order_but_not_prompt_version() -> None:
    body = request_body(_request(), "m", "json_schema")
    shuffled = json.loads(json.dumps(dict(reversed(list(body.items())))))
    assert cache_key("m", "clean_v1", body) == cache_key("m", "clean_v1", shuffled)
    assert cache_key("m", "clean_v1", body) != cache_key("m", "clean_v2", body)
    assert cache_key("m", "clean_v1", body) != cache_key("other", "clean_v1", body)


# ------------------------------------------------------------------------------------ HTTP


def test_success_sends_schema_and_counts_usage(llm_standin: LLMStandIn) -> None:
    client = _client(llm_standin)
    resp = client.complete(_request("parse() fails"))
    assert resp.data == {"statement": "The problem, restated:\n\nparse() fails"}
    assert resp.model == "standin-1"
    [req] = llm_standin.chat_requests()
    assert req.body is not None
    assert req.body["response_format"]["type"] == "json_schema"
    assert req.body["response_format"]["json_schema"]["schema"] == SCHEMA
    assert req.body["model"] == "standin-1"
    usage = client.usage.snapshot()
    assert usage["requests"] == 1 and usage["completions"] == 1
    assert usage["prompt_tokens"] == resp.prompt_tokens > 0
    assert usage["completion_tokens"] == resp.completion_tokens > 0


def test_429_honours_retry_after(llm_standin: LLMStandIn) -> None:
    sleeps = Sleeps()
    llm_standin.script("clean", Reply.rate_limited("7"), Reply.rate_limited("2"))
    client = _client(llm_standin, sleep=sleeps)
    assert client.complete(_request()).data is not None
    assert sleeps.calls == [7.0, 2.0]
    assert len(llm_standin.chat_requests()) == 3
    assert client.usage.snapshot()["retries"] == 2


def test_500_retried_with_backoff_then_gives_up(llm_standin: LLMStandIn) -> None:
    sleeps = Sleeps()
    llm_standin.script("clean", *[Reply.server_error()] * 3)
    client = _client(llm_standin, sleep=sleeps, max_retries=2, backoff_seconds=1.0)
    with pytest.raises(LLMError, match="HTTP 500 after 3 attempts"):
        client.complete(_request())
    assert len(llm_standin.chat_requests()) == 3
    # exponential with jitter in [0.5, 1] x base
    assert 0.5 <= sleeps.calls[0] <= 1.0 and 1.0 <= sleeps.calls[1] <= 2.0
    assert client.usage.snapshot()["errors"] == 1


def test_500_then_success(llm_standin: LLMStandIn) -> None:
    llm_standin.script("clean", Reply.server_error(502), Reply.rewrite("fine now"))
    client = _client(llm_standin)
    assert client.complete(_request()).data == {"statement": "fine now"}


def test_timeout_is_retried(llm_standin: LLMStandIn) -> None:
    llm_standin.script("clean", Reply(content="{}", delay=3.0))
    llm_standin.script("clean", Reply.rewrite("in time"))
    client = _client(llm_standin, timeout_seconds=0.5)
    assert client.complete(_request()).data == {"statement": "in time"}
    assert len(llm_standin.chat_requests()) == 2


def test_timeout_every_time_is_an_llm_error(llm_standin: LLMStandIn) -> None:
    llm_standin.script("clean", *[Reply(content="{}", delay=3.0)] * 2)
    client = _client(llm_standin, timeout_seconds=0.3, max_retries=1)
    with pytest.raises(LLMError, match="timed out"):
        client.complete(_request())


def test_malformed_http_body_retried_once(llm_standin: LLMStandIn) -> None:
    llm_standin.script("clean", Reply.malformed_body(), Reply.rewrite("ok"))
    client = _client(llm_standin)
    assert client.complete(_request()).data == {"statement": "ok"}


def test_malformed_content_twice_is_an_error(llm_standin: LLMStandIn, tmp_path: Path) -> None:
    llm_standin.script("clean", Reply(content="I cannot do that."), Reply(content="Nope {"))
    client = _client(llm_standin, tmp_path)
    with pytest.raises(UnusableReply, match="no JSON object"):
        client.complete(_request())
    assert client.usage.snapshot()["refused"] == 1
    assert client.usage.snapshot()["errors"] == 0  # the server answered: no outage
    # a failure is not cached: the next call asks again
    assert client.complete(_request()).data is not None
    assert len(llm_standin.chat_requests()) == 3


def test_fenced_reply_with_trailing_comma_is_parsed(llm_standin: LLMStandIn) -> None:
    llm_standin.script("clean", Reply(content='```json\n{"statement": "x",}\n```'))
    assert _client(llm_standin).complete(_request()).data == {"statement": "x"}


def test_response_format_refused_falls_back(tmp_path: Path) -> None:
    with LLMStandIn(accept_response_format=False) as server:
        client = _client(server, tmp_path)
        first = client.complete(_request("one"))
        second = client.complete(_request("two"))
        assert first.data and second.data
        assert not client.schema_supported and client.response_format == "text"
        bodies = [r.body or {} for r in server.chat_requests()]
        sent = [b.get("response_format", {}).get("type") for b in bodies]
        # a 400 naming the format steps down at once (no retry, no backoff): json_schema,
        # json_object, then plain text for the rest of the run
        assert sent == ["json_schema", "json_object", None, None]
        # the cache key is the request in the form used: a new client that knows the form
        # re-reads both with no request
        again = _client(server, tmp_path, response_format="text")
        assert again.complete(_request("one")).cached
        assert again.complete(_request("two")).cached
        assert len(server.chat_requests()) == 4


def test_auth_failure_is_fatal(llm_standin: LLMStandIn) -> None:
    llm_standin.script("clean", Reply(status=401, raw=b'{"error": {"message": "bad key"}}'))
    with pytest.raises(Fatal, match="SMELTER_LLM_API_KEY"):
        _client(llm_standin).complete(_request())


def test_list_models_and_unreachable(llm_standin: LLMStandIn) -> None:
    assert _client(llm_standin).list_models() == ["standin-1"]
    dead = OpenAIChatClient("http://127.0.0.1:9/v1", "m", requests.Session(), timeout_seconds=1)
    with pytest.raises(Fatal, match="unreachable"):
        dead.list_models()


def test_cache_makes_second_run_request_free(llm_standin: LLMStandIn, tmp_path: Path) -> None:
    reqs = [_request(f"task {i}") for i in range(5)]
    first = _client(llm_standin, tmp_path, concurrency=3).complete_many(reqs)
    assert len(llm_standin.chat_requests()) == 5
    second_client = _client(llm_standin, tmp_path)
    second = second_client.complete_many(reqs)
    assert len(llm_standin.chat_requests()) == 5  # no new request
    assert [r.data for r in second] == [r.data for r in first]  # type: ignore[union-attr]
    assert all(r.cached for r in second)  # type: ignore[union-attr]
    assert second_client.usage.snapshot()["requests"] == 0
    assert second_client.usage.snapshot()["cached"] == 5


def test_complete_many_returns_errors_in_place(llm_standin: LLMStandIn) -> None:
    llm_standin.script("clean", Reply(status=400, raw=b'{"error": {"message": "too long"}}'))
    out = _client(llm_standin, concurrency=1).complete_many([_request("a"), _request("b")])
    assert isinstance(out[0], LLMError) and "too long" in str(out[0])
    assert not isinstance(out[1], LLMError)


def test_api_key_only_in_authorization_header(
    llm_standin: LLMStandIn,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("MY_LLM_KEY", SECRET)
    caplog.set_level("DEBUG")
    llm_standin.script("clean", Reply.server_error(), Reply(status=400, raw=b"{}"))
    client = _client(llm_standin, tmp_path, api_key_env="MY_LLM_KEY", max_retries=1)
    with pytest.raises(LLMError) as err:
        client.complete(_request())
    client.complete(_request("cached one"))
    for req in llm_standin.chat_requests():
        assert req.headers["Authorization"] == f"Bearer {SECRET}"
        assert SECRET not in json.dumps(req.body)
    assert SECRET not in str(err.value) and SECRET not in repr(client.__dict__)
    assert SECRET not in caplog.text
    for path in (tmp_path / "llm").rglob("*"):
        if path.is_file():
            assert SECRET not in path.read_text()
    assert any((tmp_path / "llm").rglob("*.json"))


def test_no_key_no_authorization_header(llm_standin: LLMStandIn, monkeypatch) -> None:
    monkeypatch.delenv("SMELTER_LLM_API_KEY", raising=False)
    _client(llm_standin).complete(_request())
    assert "Authorization" not in llm_standin.chat_requests()[0].headers


# ------------------------------------------------------------------------------------ formats


def test_request_body_forms() -> None:
    schema = request_body(_request(), "m", "json_schema")["response_format"]
    assert schema["type"] == "json_schema" and schema["json_schema"]["schema"] == SCHEMA
    obj = request_body(_request(), "m", "json_object")["response_format"]
    assert obj == {"type": "json_object", "schema": SCHEMA}
    assert "response_format" not in request_body(_request(), "m", "text")
    assert "response_format" not in request_body(_request(schema=False), "m", "json_schema")


def test_probe_keeps_json_object_when_json_schema_gets_llama_cpp_500() -> None:
    """Regression (issue 13): llama-cpp-python's server answers json_schema with HTTP 500
    "Input should be 'text' or 'json_object'"; that was retried 4 times per request as an
    outage and every task ended as llm_error. It is a capability answer."""
    with LLMStandIn(accept_formats=("json_object",)) as server:
        sleeps = Sleeps()
        client = _client(server, sleep=sleeps, response_format=None)
        assert client.probe() == "json_object"
        assert client.probe_notes[0].startswith("json_schema: refused (HTTP 500")
        assert client.probe_notes[1] == "json_object: accepted"
        resp = client.complete(_request("x"))
        assert resp.data is not None
        sent = [(r.body or {}).get("response_format", {}).get("type") for r in
                server.chat_requests()]  # fmt: skip
        assert sent == ["json_schema", "json_object", "json_object"]
        assert sleeps.calls == []  # no backoff: nothing was treated as an outage
        assert client.usage.snapshot()["format_json_object"] == 2  # probe + request


def test_probe_falls_to_text_and_first_request_probes_lazily() -> None:
    with LLMStandIn(accept_formats=(), refuse_status=422) as server:
        client = _client(server, response_format=None)
        assert client.response_format is None
        assert client.complete(_request("x")).data is not None  # probes first
        assert client.response_format == "text"
        kinds = [r.kind for r in server.chat_requests()]
        assert kinds == ["probe", "probe", "clean"]


def test_500_naming_the_format_mid_run_steps_down_without_retry(llm_standin: LLMStandIn) -> None:
    refusal = json.dumps({"error": {"message": LLAMA_CPP_REFUSAL}}).encode()
    llm_standin.script("clean", Reply(status=500, raw=refusal))
    sleeps = Sleeps()
    client = _client(llm_standin, sleep=sleeps)
    assert client.complete(_request()).data is not None
    assert client.response_format == "json_object"
    assert sleeps.calls == [] and client.usage.snapshot()["retries"] == 0


def test_500_about_something_else_is_still_an_outage(llm_standin: LLMStandIn) -> None:
    llm_standin.script("clean", *[Reply.server_error()] * 2)
    client = _client(llm_standin, max_retries=1)
    with pytest.raises(LLMError, match="HTTP 500"):
        client.complete(_request())
    assert client.response_format == "json_schema"


def test_reply_cut_at_max_tokens_says_so(llm_standin: LLMStandIn) -> None:
    cut = {
        "choices": [{"message": {"content": '{"statement": "abc'}, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 9},
    }
    llm_standin.script("clean", *[Reply(raw=json.dumps(cut).encode())] * 2)
    with pytest.raises(UnusableReply, match="cut at max_tokens"):
        _client(llm_standin).complete(_request())


def test_empty_content_is_unusable_not_an_outage(llm_standin: LLMStandIn) -> None:
    llm_standin.script("clean", Reply(content=""), Reply(content=""))
    client = _client(llm_standin)
    with pytest.raises(UnusableReply, match="empty reply"):
        client.complete(_request())
    assert client.usage.snapshot()["errors"] == 0
