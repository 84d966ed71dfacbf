"""The clean stage's per-run report, read back from its Beam counters."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from smelter.transforms.adapters.chat import RESPONSE_FORMATS
from smelter.transforms.clean.clean import STAGE
from smelter.transforms.clean.config import CleanConfig

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
