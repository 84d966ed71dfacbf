"""Timestamps: one parser for every date smelter reads, one printed form for every date it writes.

Deliberate choices:
- ``parse_utc`` takes what the sources hand us: an ISO 8601 date or date-time with any offset
  (``Z`` included), unix seconds (git's ``%at``) or a ``datetime`` (PyGithub). A value without
  an offset means UTC, never the machine's local zone, so a run gives the same records anywhere.
- ``utc_iso`` prints ``YYYY-MM-DDTHH:MM:SSZ`` (GitHub's form): records hold it, and strings of
  this one form order as the instants do, so date filters may compare them as text.
- ``None`` passes through ``utc_iso`` (an unknown date stays unknown) but not ``parse_utc``.
- No Beam, no heavy imports: the option loader checks configured dates with it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import overload

Timestamp = str | int | float | datetime


def parse_utc(value: Timestamp) -> datetime:
    """``value`` as an aware UTC datetime; ValueError when a string is no ISO date or date-time."""
    if isinstance(value, datetime):
        when = value
    elif isinstance(value, int | float):
        when = datetime.fromtimestamp(value, UTC)
    else:
        when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC)


@overload
def utc_iso(value: Timestamp) -> str: ...
@overload
def utc_iso(value: None) -> None: ...
@overload
def utc_iso(value: Timestamp | None) -> str | None: ...
def utc_iso(value: Timestamp | None) -> str | None:
    """``value`` as ``YYYY-MM-DDTHH:MM:SSZ`` (see ``parse_utc``); None stays None."""
    if value is None:
        return None
    return parse_utc(value).strftime("%Y-%m-%dT%H:%M:%SZ")
