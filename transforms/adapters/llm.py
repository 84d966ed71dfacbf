"""The one ``ChatModel`` backend: any OpenAI-compatible Chat Completions endpoint.

Deliberate choices:
- One client for vLLM, SGLang, llama.cpp's server and hosted APIs: they all speak
  ``POST {base_url}/chat/completions``. ``base_url`` includes the version prefix
  (``http://127.0.0.1:8080/v1``), as OpenAI's SDKs expect.
- The HTTP session is passed in (``requests.Session``): tests hand it a real server on
  127.0.0.1, and the client never opens connections in a constructor a Beam worker pickles.
- Replies are cached on disk by a hash of (model, prompt version, sorted request body) *before*
  any fallback rewrites the body, so a re-run of the same work makes zero requests. Only parsed,
  successful replies are cached; errors are retried on the next run.
- Retries: 429 / 503 wait for ``Retry-After`` (capped), other 5xx, 408, timeouts and dropped
  connections back off exponentially with jitter. 401 / 403 / 404 stop the run (``Fatal``):
  every later request would fail the same way.
- Structured output comes in three forms, best first (``RESPONSE_FORMATS``): ``json_schema``
  (OpenAI, vLLM, SGLang), ``json_object`` with a ``schema`` (llama.cpp's servers, which answer
  ``json_schema`` with HTTP 500 "Input should be 'text' or 'json_object'"), and plain JSON in the
  text. ``probe`` asks the endpoint once with a tiny request per form and keeps the first it
  accepts; a 4xx or 5xx whose body names the response format is a capability answer (the next
  form is tried at once), not an outage to retry. Parsing is tolerant in every form (first JSON
  object in the text, code fences and trailing commas allowed).
- The seam itself (requests, replies, the two kinds of failure, usage, reply parsing) is
  ``chat.py``; this module is the wire: request bodies, retries, the response cache, the probe.
- The API key is read from the environment at each request and exists only in the
  ``Authorization`` header: never an attribute, never in a cache entry, a log line or an error.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import requests
from apache_beam.io.filesystems import FileSystems

from smelter.transforms.adapters.chat import (
    RESPONSE_FORMATS,
    ChatRequest,
    ChatResponse,
    LLMError,
    MalformedResponse,
    UnusableReply,
    Usage,
    extract_json_object,
)
from smelter.transforms.clean.config import DEFAULT_API_KEY_ENV
from smelter.transforms.errors import Fatal

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
MAX_RETRY_AFTER_SECONDS = 120.0

PROBE_SCHEMA: Mapping[str, Any] = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}},
    "required": ["ok"],
}


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from ``Retry-After`` (delta-seconds or HTTP-date); None if absent."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def request_body(request: ChatRequest, model: str, response_format: str) -> dict[str, Any]:
    """The JSON body of one request, with ``response_format`` in the given form (see
    ``RESPONSE_FORMATS``); a request without a schema never carries one."""
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": r, "content": c} for r, c in request.messages],
        "temperature": request.temperature,
        "max_tokens": request.max_tokens,
    }
    if request.json_schema is None or response_format == "text":
        return body
    if response_format == "json_schema":
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {
                "name": request.prompt_version,
                "schema": dict(request.json_schema),
                "strict": True,
            },
        }
    elif response_format == "json_object":
        # llama.cpp's servers (llama-cpp-python's and llama-server) turn this schema into a
        # grammar; servers that ignore the extra key still return a JSON object.
        body["response_format"] = {"type": "json_object", "schema": dict(request.json_schema)}
    else:
        raise ValueError(f"unknown response format {response_format!r}")
    return body


def cache_key(model: str, prompt_version: str, body: Mapping[str, Any]) -> str:
    blob = json.dumps(
        {"model": model, "prompt_version": prompt_version, "body": body},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(blob.encode()).hexdigest()


# ------------------------------------------------------------------------------------ cache


@dataclass(frozen=True)
class ResponseCache:
    """Parsed replies, one JSON file each, on any Beam filesystem (local, GCS, S3)."""

    root: str

    def _path(self, key: str) -> str:
        return FileSystems.join(self.root, key[:2], f"{key}.json")

    def get(self, key: str) -> dict[str, Any] | None:
        path = self._path(key)
        try:
            if not FileSystems.exists(path):
                return None
            with FileSystems.open(path) as f:
                doc = json.loads(f.read())
        except (OSError, ValueError) as e:  # a torn entry is a miss, not a crash
            log.warning("ignoring unreadable LLM cache entry %s: %s", path, e)
            return None
        return doc if doc.get("format") == CACHE_FORMAT else None

    def put(self, key: str, doc: dict[str, Any]) -> None:
        path = self._path(key)
        tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
        with FileSystems.create(tmp) as f:
            f.write(json.dumps({"format": CACHE_FORMAT, **doc}).encode())
        if FileSystems.exists(path):
            FileSystems.delete([tmp])  # same key, same answer: keep the first
            return
        FileSystems.rename([tmp], [path])


# ------------------------------------------------------------------------------------ client


class OpenAIChatClient:
    """``ChatModel`` over an OpenAI-compatible ``/chat/completions`` endpoint."""

    def __init__(
        self,
        base_url: str,
        model: str,
        session: requests.Session,
        *,
        api_key_env: str = DEFAULT_API_KEY_ENV,
        timeout_seconds: float = 120.0,
        max_retries: int = 4,
        backoff_seconds: float = 1.0,
        max_backoff_seconds: float = 30.0,
        concurrency: int = 4,
        json_schema: bool = True,
        response_format: str | None = None,
        cache_dir: str | None = None,
        cost_per_1k_prompt_tokens: float = 0.0,
        cost_per_1k_completion_tokens: float = 0.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not base_url:
            raise Fatal("LLM base URL is empty (set --llm-base-url)")
        if not model:
            raise Fatal("--llm-model is required with --llm-base-url")
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._models_url = base_url.rstrip("/") + "/models"
        self._model = model
        self._session = session
        self._api_key_env = api_key_env
        self._timeout = timeout_seconds
        self._max_retries = max(0, max_retries)
        self._backoff = backoff_seconds
        self._max_backoff = max_backoff_seconds
        self._slots = threading.BoundedSemaphore(max(1, concurrency))
        self._concurrency = max(1, concurrency)
        if response_format is not None and response_format not in RESPONSE_FORMATS:
            raise Fatal(f"unknown response format {response_format!r}")
        # None: not known yet; the first request with a schema probes (once, under the lock).
        self._format: str | None = response_format if json_schema else "text"
        self._format_lock = threading.Lock()
        self.probe_notes: list[str] = []
        self._cache = ResponseCache(cache_dir) if cache_dir else None
        self._cost_prompt = cost_per_1k_prompt_tokens
        self._cost_completion = cost_per_1k_completion_tokens
        self._sleep = sleep
        self._clock = clock
        self.usage = Usage()
        self._pool: ThreadPoolExecutor | None = None

    @property
    def model(self) -> str:
        return self._model

    @property
    def schema_supported(self) -> bool:
        """False once the server refused every structured-output form."""
        return self._format != "text"

    @property
    def response_format(self) -> str | None:
        """The structured-output form in use (``RESPONSE_FORMATS``); None until probed."""
        return self._format

    def probe(self) -> str:
        """Which structured-output form the endpoint accepts: one tiny request per form, best
        first, until one comes back as a JSON object. A refusal that names the response format
        (any 4xx/5xx) or a 200 without JSON moves on to the next form; an answer that says
        nothing about formats (a timeout, a 5xx about something else) stops the probe at the
        best form not yet refused, whose real requests then retry or fall back as usual.
        ``probe_notes`` says what each form got. Never cached: servers change."""
        request = ChatRequest(
            messages=(
                ("system", "You answer with one JSON object and nothing else."),
                ("user", 'Answer with this JSON object: {"ok": true}'),
            ),
            prompt_version="probe_v1",
            json_schema=PROBE_SCHEMA,
            max_tokens=24,
        )
        notes: list[str] = []
        chosen = "text"
        for form in RESPONSE_FORMATS[:-1]:
            body = request_body(request, self._model, form)
            started = self._clock()
            try:
                reply = self._post(body)
            finally:
                self.usage.add(seconds=self._clock() - started, requests=1)
            if isinstance(reply, requests.RequestException):
                notes.append(f"{form}: no answer ({_short(reply)}), kept untested")
                chosen = form
                break
            status = reply.status_code
            if status in (401, 403, 404):
                self._classify(reply, body, self._max_retries)  # raises Fatal
            if status == 200:
                try:
                    self._parse(reply, request, form)
                except (MalformedResponse, UnusableReply) as e:
                    notes.append(f"{form}: answered without a JSON object ({e})")
                    continue
                notes.append(f"{form}: accepted")
                chosen = form
                break
            detail = _error_text(reply)
            if _mentions_format(detail) or _mentions_format(reply.text):
                notes.append(f"{form}: refused (HTTP {status}: {detail[:100]})")
                continue
            notes.append(f"{form}: HTTP {status} about something else ({detail[:80]}), kept")
            chosen = form
            break
        with self._format_lock:
            self._format = chosen
            self.probe_notes = notes
        return chosen

    # -- public --------------------------------------------------------------------------------
    def complete(self, request: ChatRequest) -> ChatResponse:
        """One answer, from the cache or the endpoint; raises ``LLMError`` when none comes."""
        if request.json_schema is not None and self._format is None:
            with self._format_lock:
                unknown = self._format is None
            if unknown:
                self.probe()
        # Keyed by the form asked for: the same prompt under another form may answer otherwise.
        logical = request_body(request, self._model, self._format or "text")
        key = cache_key(self._model, request.prompt_version, logical)
        if self._cache is not None:
            hit = self._cache.get(key)
            if hit is not None:
                self.usage.add(cached=1)
                return ChatResponse(
                    text=hit["text"],
                    data=hit.get("data"),
                    model=hit.get("model", self._model),
                    prompt_tokens=int(hit.get("prompt_tokens", 0)),
                    completion_tokens=int(hit.get("completion_tokens", 0)),
                    seconds=0.0,
                    cached=True,
                )
        try:
            response = self._complete_uncached(request)
        except LLMError:
            self.usage.add(errors=1)
            raise
        except UnusableReply:
            self.usage.add(refused=1)
            raise
        if self._cache is not None:
            # Under the form that answered: a refusal may have stepped it down mid-request.
            key = cache_key(
                self._model,
                request.prompt_version,
                request_body(request, self._model, self._format or "text"),
            )
            doc = {
                "model": response.model,
                "prompt_version": request.prompt_version,
                "text": response.text,
                "data": response.data,
                "prompt_tokens": response.prompt_tokens,
                "completion_tokens": response.completion_tokens,
            }
            self._cache.put(key, doc)
        return response

    def complete_many(
        self, requests_: Sequence[ChatRequest]
    ) -> list[ChatResponse | LLMError | UnusableReply]:
        """Answers in order, at most ``concurrency`` in flight; a failure is returned, not raised.

        ``Fatal`` (bad key, unknown model) is raised: the run cannot go on.
        """
        if len(requests_) <= 1:
            return [self._guarded(r) for r in requests_]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._concurrency, thread_name_prefix="smelter-llm")
        return list(self._pool.map(self._guarded, requests_))

    def list_models(self) -> list[str]:
        """Model ids the endpoint serves (``GET /models``); ``Fatal`` when it cannot be reached."""
        try:
            r = self._session.get(self._models_url, headers=self._headers(), timeout=self._timeout)
        except requests.RequestException as e:
            raise Fatal(f"LLM endpoint unreachable at {self._models_url}: {_short(e)}") from None
        if r.status_code == 404:
            return []  # some proxies serve completions only: not knowing the list is fine
        if r.status_code in (401, 403):
            raise Fatal(
                f"LLM endpoint refused the credentials (HTTP {r.status_code}); "
                f"check the key in ${self._api_key_env}"
            )
        if r.status_code != 200:
            raise Fatal(f"LLM endpoint {self._models_url} answered HTTP {r.status_code}")
        try:
            return [str(m.get("id")) for m in r.json().get("data", [])]
        except (ValueError, AttributeError):
            raise Fatal(f"LLM endpoint {self._models_url} sent no model list") from None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self._session.close()

    def report(self) -> dict[str, float]:
        return self.usage.snapshot()

    # -- internals -----------------------------------------------------------------------------
    def _guarded(self, request: ChatRequest) -> ChatResponse | LLMError | UnusableReply:
        try:
            return self.complete(request)
        except (LLMError, UnusableReply) as e:
            return e

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = os.environ.get(self._api_key_env, "")
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _complete_uncached(self, request: ChatRequest) -> ChatResponse:
        malformed_retries = 1  # temperature 0 repeats itself; one more try catches a fluke only
        attempt = 0
        while True:
            form = self._format or "text"
            body = request_body(request, self._model, form)
            started = self._clock()
            try:
                with self._slots:
                    reply = self._post(body)
            finally:
                self.usage.add(seconds=self._clock() - started, requests=1)
            outcome, wait = self._classify(reply, body, attempt)
            if outcome == "schema_refused":
                continue  # same attempt, without response_format
            if outcome == "retry":
                attempt += 1
                self.usage.add(retries=1)
                self._sleep(wait)
                continue
            assert isinstance(reply, requests.Response)
            try:
                return self._parse(reply, request, form)
            except (MalformedResponse, UnusableReply):
                if malformed_retries <= 0 or attempt >= self._max_retries:
                    raise
                malformed_retries -= 1
                attempt += 1
                self.usage.add(retries=1)

    def _post(self, body: dict[str, Any]) -> requests.Response | requests.RequestException:
        try:
            return self._session.post(
                self._url,
                data=json.dumps(body),
                headers=self._headers(),
                timeout=(min(10.0, self._timeout), self._timeout),
            )
        except requests.RequestException as e:
            return e

    def _backoff_seconds(self, attempt: int) -> float:
        base = min(self._max_backoff, self._backoff * (2**attempt))
        return base * (0.5 + random.random() / 2)  # jitter: workers must not retry in lockstep

    def _classify(
        self,
        reply: requests.Response | requests.RequestException,
        body: Mapping[str, Any],
        attempt: int,
    ) -> tuple[str, float]:
        """Decide what one HTTP outcome means: ``ok``, ``retry`` (with a wait), or raise."""
        if isinstance(reply, requests.RequestException):
            if attempt >= self._max_retries:
                raise LLMError(f"{self._url}: {_short(reply)} after {attempt + 1} attempts")
            return "retry", self._backoff_seconds(attempt)
        status = reply.status_code
        if status == 200:
            return "ok", 0.0
        detail = _error_text(reply)
        if (
            400 <= status < 600
            and "response_format" in body
            and (_mentions_format(detail) or _mentions_format(reply.text))
        ):
            # A capability answer, whatever the status (llama.cpp says it with a 500): step
            # down to the next form for the rest of the run instead of retrying an outage.
            self._downgrade(body, f"HTTP {status}: {detail[:100]}")
            return "schema_refused", 0.0
        if status in (401, 403):
            raise Fatal(
                f"LLM endpoint refused the credentials (HTTP {status}); "
                f"check the key in ${self._api_key_env}"
            )
        if status == 404:
            raise Fatal(f"LLM endpoint {self._url} or model {self._model!r} not found (HTTP 404)")
        if status in (408, 409, 429) or status >= 500:
            if attempt >= self._max_retries:
                raise LLMError(f"HTTP {status} after {attempt + 1} attempts: {detail}")
            wait = self._backoff_seconds(attempt)
            if status in (429, 503):
                hinted = retry_after_seconds(reply.headers.get("Retry-After"))
                if hinted is not None:
                    wait = min(hinted, MAX_RETRY_AFTER_SECONDS)
            return "retry", wait
        raise LLMError(f"HTTP {status}: {detail}")

    def _downgrade(self, body: Mapping[str, Any], why: str) -> None:
        sent = str((body.get("response_format") or {}).get("type", "json_schema"))
        with self._format_lock:
            if self._format != sent:
                return  # another thread stepped down already
            self._format = RESPONSE_FORMATS[RESPONSE_FORMATS.index(sent) + 1]
            log.warning("endpoint refused response_format %s (%s); using %s", sent, why,
                        self._format)  # fmt: skip
            self.probe_notes.append(f"{sent}: refused ({why})")

    def _parse(self, reply: requests.Response, request: ChatRequest, form: str) -> ChatResponse:
        elapsed = reply.elapsed.total_seconds() if reply.elapsed else 0.0
        try:
            doc = reply.json()
            choice = doc["choices"][0]
            text = choice["message"]["content"] or ""
        except (ValueError, KeyError, IndexError, TypeError):
            snippet = reply.text[:120].replace("\n", " ")
            raise MalformedResponse(f"not a chat completion: {snippet!r}") from None
        usage = doc.get("usage") or {}
        prompt_tokens = int(usage.get("prompt_tokens") or 0)
        completion_tokens = int(usage.get("completion_tokens") or 0)
        cost = (
            prompt_tokens * self._cost_prompt + completion_tokens * self._cost_completion
        ) / 1000.0
        # Counted before parsing the content: the tokens were spent whether or not it is usable.
        self.usage.add(
            completions=1,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cost=cost,
            **{f"format_{form if request.json_schema is not None else 'text'}": 1},
        )
        data = None
        if request.json_schema is not None:
            try:
                data = extract_json_object(text)
            except UnusableReply as e:
                if isinstance(choice, dict) and choice.get("finish_reason") == "length":
                    raise UnusableReply(
                        f"reply cut at max_tokens={request.max_tokens} before its JSON closed"
                    ) from None
                raise e from None
        return ChatResponse(
            text=text,
            data=data,
            model=str(doc.get("model") or self._model),
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            seconds=elapsed,
        )


def _short(e: BaseException) -> str:
    """One line for an exception, without any header or body of the request."""
    name = type(e).__name__
    if isinstance(e, requests.Timeout):
        return f"{name} (timed out)"
    if isinstance(e, requests.ConnectionError):
        return f"{name} (connection failed)"
    return name


def _error_text(reply: requests.Response) -> str:
    try:
        doc = reply.json()
        err = doc.get("error", doc) if isinstance(doc, dict) else doc
        msg = err.get("message", err) if isinstance(err, dict) else err
        text = str(msg)
    except ValueError:
        text = reply.text
    return text.strip().replace("\n", " ")[:200]


def _mentions_format(detail: str) -> bool:
    """Whether an error body is about the response format (a capability answer)."""
    low = detail.lower()
    return any(
        word in low
        for word in ("response_format", "json_schema", "json_object", "response format", "grammar")
    )
