"""The HTTP layer under PyGithub: persistent response cache, conditional requests, rate limits.

Deliberate choices:
- PyGithub stays the client (its objects, pagination, error classes); only its transport is
  replaced. PyGithub builds a connection object per host from a class it keeps on ``Requester``;
  ``Requester.injectConnectionClasses`` (public, used by PyGithub's own replay tests) swaps that
  class. Our classes serve a request through a ``GitHubTransport`` only when the ``retry`` object
  PyGithub hands them is a ``TransportHandle`` (what ``GitHubSource`` passes as
  ``Github(retry=...)``); any other ``Github`` instance in the process gets PyGithub's own
  connection classes, unchanged. So the hook is per client, without touching private names.
- Conditional requests: a cached GET is re-sent with ``If-None-Match`` / ``If-Modified-Since``;
  GitHub answers 304 without charging the quota and we hand PyGithub the cached body as a 200.
- The cache holds response status, a whitelist of response headers and the body, keyed by
  method + URL + Accept. Request headers (``Authorization``) are never stored, and an entry that
  would contain a token verbatim is not written at all.
- Rate limits are handled here, not in PyGithub's urllib3 ``Retry``: exhausted primary quota
  (``X-RateLimit-Remaining: 0``) switches to the next token with quota left, else waits until
  ``X-RateLimit-Reset`` with a visible countdown on stderr; secondary limits (403/429 with
  ``Retry-After``) wait as told; 5xx and connection errors retry with capped exponential backoff.
  Clock, sleep and the countdown writer are injected so tests need not wait for real.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TextIO

import github
import requests
from github.Requester import HTTPRequestsConnectionClass, HTTPSRequestsConnectionClass, Requester
from urllib3.util import Retry

from smelter.transforms.errors import Fatal, Retryable

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
# Response headers worth keeping: what PyGithub reads (pagination, rate limit) and validators.
KEPT_HEADERS = (
    "content-type",
    "etag",
    "last-modified",
    "link",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "x-ratelimit-used",
    "x-ratelimit-resource",
)


# --------------------------------------------------------------------------- tokens


class TokenPool(github.Auth.Auth):
    """One or more tokens used in turn: a token whose quota is spent rests until its reset.

    ``repr`` and PyGithub's masked form never show a token.
    """

    def __init__(self, tokens: Iterable[str]) -> None:
        self._tokens = [t.strip() for t in tokens if t.strip()]
        if not self._tokens:
            raise ValueError("TokenPool needs at least one token")
        self._index = 0
        self._resting_until = [0.0] * len(self._tokens)
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls, value: str | None) -> TokenPool | None:
        """GITHUB_TOKEN may hold several tokens, comma-separated; empty means anonymous."""
        tokens = [t for t in (value or "").split(",") if t.strip()]
        return cls(tokens) if tokens else None

    def __repr__(self) -> str:
        return f"TokenPool({len(self._tokens)} token(s))"

    def __len__(self) -> int:
        return len(self._tokens)

    @property
    def secrets(self) -> tuple[str, ...]:
        """The raw tokens, only so writers can check they never leak them."""
        return tuple(self._tokens)

    @property
    def token_type(self) -> str:
        return "token"

    @property
    def token(self) -> str:
        with self._lock:
            return self._tokens[self._index]

    @property
    def _masked_token(self) -> str:
        return "token (removed)"

    @property
    def current(self) -> int:
        return self._index

    def rest(self, until: float, now: float) -> float | None:
        """The current token's quota is spent until ``until``. Switch to a token that has quota;
        return None when one was found, else the time the earliest token becomes usable."""
        with self._lock:
            self._resting_until[self._index] = until
            for step in range(1, len(self._tokens) + 1):
                i = (self._index + step) % len(self._tokens)
                if self._resting_until[i] <= now:
                    self._index = i
                    return None
            earliest = min(range(len(self._tokens)), key=lambda i: self._resting_until[i])
            self._index = earliest
            return self._resting_until[earliest]


# --------------------------------------------------------------------------- cache


@dataclasses.dataclass(frozen=True)
class CachedResponse:
    url: str
    status: int
    headers: dict[str, str]
    body: str
    stored_at: float


class ResponseCache:
    """GET responses on local disk, one JSON file per (method, URL, Accept)."""

    def __init__(self, root: str | os.PathLike[str], secrets: tuple[str, ...] = ()) -> None:
        self.root = Path(root)
        self._secrets = tuple(s for s in secrets if s)

    @staticmethod
    def key(url: str, accept: str = "") -> str:
        return hashlib.sha256(f"GET {url}\n{accept}".encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> CachedResponse | None:
        path = self._path(key)
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:  # a torn entry is a miss, not a crash
            log.warning("ignoring unreadable GitHub cache entry %s: %s", path, e)
            return None
        if doc.get("format") != CACHE_FORMAT:
            return None
        return CachedResponse(
            doc["url"], doc["status"], doc["headers"], doc["body"], doc["stored_at"]
        )

    def put(self, key: str, entry: CachedResponse) -> bool:
        """Store an entry; refuse (return False) if it contains a secret verbatim."""
        doc = dataclasses.asdict(entry) | {"format": CACHE_FORMAT}
        blob = json.dumps(doc)
        if any(s in blob for s in self._secrets):
            log.warning("not caching a response that echoes a credential (%s)", entry.url)
            return False
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(blob, encoding="utf-8")
        os.replace(tmp, path)  # atomic: a killed run leaves no half entry
        return True


# --------------------------------------------------------------------------- policy & stats


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 6
    backoff_seconds: float = 1.0
    backoff_max_seconds: float = 60.0
    secondary_wait_seconds: float = 60.0
    max_wait_seconds: float | None = None
    cache_max_age_seconds: float = 0.0
    request_timeout_seconds: float = 30.0


@dataclasses.dataclass
class TransportStats:
    """What the transport did; read by tests and the benchmark."""

    sent: int = 0  # requests that reached the server and were not answered 304
    not_modified: int = 0  # 304 answers served from the cache (no quota spent)
    fresh_hits: int = 0  # served from the cache without any request (max-age)
    retried_5xx: int = 0
    secondary_waits: int = 0
    quota_waits: int = 0
    token_switches: int = 0
    waited_seconds: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


def stderr_countdown(stream: TextIO | None = None) -> Callable[[float, str], None]:
    """A countdown writer: one self-overwriting stderr line per second of waiting."""

    def show(remaining: float, why: str) -> None:
        out = stream or sys.stderr
        if remaining > 0:
            out.write(f"\rsmelter: {why}; resuming in {remaining:5.0f}s ")
        else:
            out.write(f"\rsmelter: {why}; resuming now{' ' * 10}\n")
        out.flush()

    return show


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def backoff_delay(attempt: int, policy: RetryPolicy) -> float:
    """Exponential backoff for the ``attempt``-th retry (1-based), capped."""
    return min(policy.backoff_max_seconds, policy.backoff_seconds * 2 ** (attempt - 1))


def rate_resource(url: str) -> str:
    """GitHub's rate-limit bucket of a request: search has its own (30/min), the rest "core"."""
    path = url.split("://", 1)[-1].split("/", 1)[-1]
    return "search" if path.startswith(("search/", "api/v3/search/")) else "core"


# --------------------------------------------------------------------------- transport


class GitHubTransport:
    """Sends PyGithub's requests with caching, quota accounting and retries."""

    def __init__(
        self,
        *,
        cache: ResponseCache | None,
        tokens: TokenPool | None,
        policy: RetryPolicy = RetryPolicy(),
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        countdown: Callable[[float, str], None] | None = None,
        session: requests.Session | None = None,
    ) -> None:
        self.cache = cache
        self.tokens = tokens
        self.policy = policy
        self.stats = TransportStats()
        self._clock, self._sleep = clock, sleep
        self._countdown = countdown or stderr_countdown()
        self._session = session or requests.Session()
        # Per rate-limit resource ("core", "search"…): when its spent quota resets. No request
        # goes out to a resource whose quota is known to be spent.
        self._spent: dict[str, float] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        self._session.close()

    # -- waiting -------------------------------------------------------------------------------
    def wait(self, seconds: float, why: str) -> None:
        """Sleep ``seconds`` showing a countdown; refuse waits beyond the configured cap."""
        cap = self.policy.max_wait_seconds
        if cap is not None and seconds > cap:
            raise Fatal(
                f"GitHub asks to wait {seconds:.0f}s ({why}), more than the "
                f"{cap:.0f}s allowed by --github-max-wait-seconds; re-run later to resume"
            )
        log.info("waiting %.1fs: %s", seconds, why)
        self.stats.waited_seconds += seconds
        end = self._clock() + seconds
        while (left := end - self._clock()) > 0:
            self._countdown(left, why)
            self._sleep(min(1.0, left))
        self._countdown(0, why)

    def _quota_spent(self, resource: str, reset_at: float) -> None:
        """Primary quota exhausted: take another token, or wait for the reset."""
        now = self._clock()
        if self.tokens is not None and len(self.tokens) > 1:
            usable_at = self.tokens.rest(reset_at, now)
            if usable_at is None:
                self.stats.token_switches += 1
                log.info("GitHub quota spent; switching to token #%d", self.tokens.current + 1)
                self._spent.clear()  # the new token has its own quotas
                return
            reset_at = usable_at
        self.stats.quota_waits += 1
        stamp = time.strftime("%H:%M:%S", time.gmtime(reset_at))
        self.wait(max(1.0, reset_at - now + 1.0),
                  f"GitHub API quota spent ({resource}), resets {stamp} UTC")  # fmt: skip
        self._spent.pop(resource, None)

    def _note_rate(self, headers: dict[str, str], resource: str) -> None:
        remaining, reset = headers.get("x-ratelimit-remaining"), headers.get("x-ratelimit-reset")
        if remaining is None or reset is None:
            return
        resource = headers.get("x-ratelimit-resource", resource)
        with contextlib.suppress(ValueError):  # a malformed header is ignored, not fatal
            if int(float(remaining)) <= 0:
                self._spent[resource] = float(reset)
            else:
                self._spent.pop(resource, None)

    # -- sending -------------------------------------------------------------------------------
    def send(
        self, verb: str, url: str, headers: dict[str, str], body: Any = None
    ) -> tuple[int, dict[str, str], str]:
        """One logical request; returns (status, lower-case headers, body text)."""
        with self._lock:  # one request at a time per client: GitHub asks for serial requests
            return self._send(verb, url, dict(headers), body)

    def _send(
        self, verb: str, url: str, headers: dict[str, str], body: Any
    ) -> tuple[int, dict[str, str], str]:
        cacheable = verb == "GET" and self.cache is not None and body is None
        key = ResponseCache.key(url, headers.get("Accept", "")) if cacheable else ""
        cached = self.cache.get(key) if cacheable and self.cache else None
        max_age = self.policy.cache_max_age_seconds
        if cached and max_age > 0 and self._clock() - cached.stored_at <= max_age:
            self.stats.fresh_hits += 1
            return cached.status, dict(cached.headers), cached.body
        if cached:
            if etag := cached.headers.get("etag"):
                headers["If-None-Match"] = etag
            if modified := cached.headers.get("last-modified"):
                headers["If-Modified-Since"] = modified

        resource = rate_resource(url)
        failures = 0
        while True:
            if self._spent.get(resource, 0.0) > self._clock():
                self._quota_spent(resource, self._spent[resource])
            if self.tokens is not None:
                self.tokens.authentication(headers)  # the current token, after any switch
            try:
                resp = self._session.request(
                    verb,
                    url,
                    headers=headers,
                    data=body,
                    allow_redirects=False,
                    timeout=self.policy.request_timeout_seconds,
                )
            except (requests.ConnectionError, requests.Timeout) as e:
                failures += 1
                if failures >= self.policy.max_attempts:
                    raise Retryable(
                        f"GitHub unreachable after {failures} attempts: {type(e).__name__}"
                    ) from None
                self.wait(backoff_delay(failures, self.policy), "GitHub connection failed")
                continue
            status = resp.status_code
            rheaders = {k.lower(): v for k, v in resp.headers.items()}
            self._note_rate(rheaders, resource)

            if status == 304 and cached is not None:
                self.stats.not_modified += 1
                merged = dict(cached.headers)
                merged.update({k: v for k, v in rheaders.items() if k in KEPT_HEADERS})
                return cached.status, merged, cached.body
            self.stats.sent += 1
            text = resp.text or ""

            if status in (403, 429):
                retry_after = parse_retry_after(rheaders.get("retry-after"))
                if retry_after is not None:
                    self.stats.secondary_waits += 1
                    self.wait(retry_after, "GitHub secondary rate limit")
                    continue
                if rheaders.get("x-ratelimit-remaining") == "0":
                    reset = self._spent.get(resource) or self._clock() + 60
                    self._quota_spent(resource, reset)
                    continue
                if status == 429 or "secondary rate limit" in text.lower():
                    self.stats.secondary_waits += 1
                    self.wait(self.policy.secondary_wait_seconds, "GitHub secondary rate limit")
                    continue
            if 500 <= status < 600:
                failures += 1
                if failures < self.policy.max_attempts:
                    self.stats.retried_5xx += 1
                    self.wait(backoff_delay(failures, self.policy), f"GitHub answered {status}")
                    continue
            if cacheable and status == 200 and self.cache is not None:
                kept = {k: v for k, v in rheaders.items() if k in KEPT_HEADERS}
                self.cache.put(key, CachedResponse(url, status, kept, text, self._clock()))
            return status, rheaders, text


# --------------------------------------------------------------------------- PyGithub hook


class TransportHandle(Retry):
    """What ``GitHubSource`` passes as ``Github(retry=...)``: carries the transport to our
    connection classes. PyGithub only type-checks it and hands it to the connection class."""

    def __init__(self, transport: GitHubTransport | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("total", 0)
        super().__init__(**kwargs)
        self.transport = transport

    def new(self, **kw: Any) -> TransportHandle:  # urllib3 copies Retry objects
        out = super().new(**kw)
        out.transport = self.transport
        return out


class _Response:
    """The slice of an httplib response PyGithub reads."""

    def __init__(self, status: int, headers: dict[str, str], body: str) -> None:
        self.status, self.headers, self._body = status, headers, body

    def getheaders(self) -> Iterable[tuple[str, str]]:
        return self.headers.items()

    def read(self) -> str:
        return self._body

    def iter_content(self, chunk_size: int | None = 1) -> Iterable[bytes]:
        yield self._body.encode()


def _connection_class(default: type[Any], protocol: str) -> type[Any]:
    class Connection:
        def __init__(
            self,
            host: str,
            port: int | None = None,
            strict: bool = False,
            timeout: int | None = None,
            retry: Any = None,
            pool_size: int | None = None,
            **kwargs: Any,
        ) -> None:
            self.host, self.protocol = host, protocol
            self.port = port or (443 if protocol == "https" else 80)
            self._transport = retry.transport if isinstance(retry, TransportHandle) else None
            self._default = (
                None
                if self._transport
                else default(
                    host,
                    port,
                    strict=strict,
                    timeout=timeout,
                    retry=retry,
                    pool_size=pool_size,
                    **kwargs,
                )
            )
            self._pending: tuple[str, str, Any, dict[str, str]] | None = None

        def request(
            self, verb: str, url: str, input: Any, headers: dict[str, str], stream: bool = False
        ) -> None:
            if self._default is not None:
                self._default.request(verb, url, input, headers, stream)
            else:
                self._pending = (verb, url, input, headers)

        def getresponse(self) -> Any:
            if self._default is not None:
                return self._default.getresponse()
            assert self._transport is not None and self._pending is not None
            verb, url, body, headers = self._pending
            full = f"{self.protocol}://{self.host}:{self.port}{url}"
            return _Response(*self._transport.send(verb, full, headers, body))

        def close(self) -> None:
            if self._default is not None:
                self._default.close()

    Connection.__name__ = Connection.__qualname__ = f"Smelter{default.__name__}"
    return Connection


SmelterHTTPConnection = _connection_class(HTTPRequestsConnectionClass, "http")
SmelterHTTPSConnection = _connection_class(HTTPSRequestsConnectionClass, "https")
_installed = threading.Lock()


def install_connection_classes() -> None:
    """Route PyGithub clients created with a ``TransportHandle`` through their transport.

    Idempotent; clients without a handle keep PyGithub's behaviour (their connection objects
    delegate to PyGithub's own classes)."""
    with _installed:
        Requester.injectConnectionClasses(SmelterHTTPConnection, SmelterHTTPSConnection)
