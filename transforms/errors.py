"""The three error tiers, importable without Apache Beam (the CLI needs them before Beam loads)."""

from __future__ import annotations

from smelter.schemas import Reason


class Rejected(Exception):
    """This record cannot go on; it becomes a Rejection. Carries the reason and a short detail."""

    def __init__(self, reason: Reason, detail: str = "") -> None:
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)
        self.reason = reason
        self.detail = detail


class Retryable(Exception):
    """A transient failure (rate limit, engine hiccup) that an adapter may retry."""


class Fatal(Exception):
    """The run cannot go on (bad config, no Docker engine); shown as one line, exit non-zero."""
