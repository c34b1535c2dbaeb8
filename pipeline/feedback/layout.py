"""Where the feedback bucket keeps its objects: `feedback/dt=YYYY-MM-DD/<writer>-<YYYYmmddTHHMMSS>-<seq>.jsonl.gz`."""

from __future__ import annotations

import re
from datetime import date, timedelta

PREFIX = "feedback/"
_KEY = re.compile(r"^feedback/dt=(\d{4}-\d{2}-\d{2})/[^/]+\.jsonl\.gz$")


def day_prefix(day: str) -> str:
    return f"{PREFIX}dt={day}/"


def object_key(day: str, writer: str, stamp: str, seq: int) -> str:
    """The key a writer flushes a buffer to (stamp: YYYYmmddTHHMMSS, UTC)."""
    return f"{day_prefix(day)}{writer}-{stamp}-{seq:06d}.jsonl.gz"


def day_of_key(key: str) -> str | None:
    """The `dt=` day of a feedback object key; None for anything else under `feedback/` (it is not read)."""
    match = _KEY.match(key)
    return match.group(1) if match else None


def days_between(first: str, last: str) -> list[str]:
    """Every day from `first` to `last`, both included, as YYYY-MM-DD."""
    start, end = date.fromisoformat(first), date.fromisoformat(last)
    return [(start + timedelta(days=i)).isoformat() for i in range((end - start).days + 1)]


def shift_day(day: str, days: int) -> str:
    return (date.fromisoformat(day) + timedelta(days=days)).isoformat()
