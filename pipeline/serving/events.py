"""The feedback bucket's events (../shared/FEEDBACK.md) and where they go: one builder per kind, one key format."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

SCHEMA_PATH = Path(__file__).with_name("feedback_event.schema.json")
PREFIX = "feedback/"


def now_ts() -> str:
    """RFC 3339, UTC, milliseconds, `Z`: the contract's `ts`."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_ts(ts: str) -> datetime:
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


def object_key(day: str, writer: str, stamp: str, seq: int) -> str:
    """`feedback/dt=YYYY-MM-DD/<writer>-<YYYYmmddTHHMMSS>-<seq>.jsonl.gz`; `day` is the events' own UTC date."""
    return f"{PREFIX}dt={day}/{writer}-{stamp}-{seq:06d}.jsonl.gz"


def interaction(model: dict[str, str], messages: list[dict[str, str]], response: str, params: dict[str, Any],
                usage: dict[str, int], latency_ms: int, event_id: str | None = None) -> dict[str, Any]:
    return {"kind": "interaction", "id": event_id or str(uuid.uuid4()), "ts": now_ts(), "model": model,
            "messages": messages, "response": response, "params": params, "usage": usage, "latency_ms": latency_ms}


def feedback(interaction_id: str, rating: int | None, correction: str | None, comment: str | None) -> dict[str, Any]:
    event: dict[str, Any] = {"kind": "feedback", "id": str(uuid.uuid4()), "ts": now_ts(), "interaction_id": interaction_id}
    for key, value in (("rating", rating), ("correction", correction), ("comment", comment)):
        if value is not None:
            event[key] = value
    return event


def comparison(messages: list[dict[str, str]], a: dict[str, Any], b: dict[str, Any], winner: str) -> dict[str, Any]:
    """`a`/`b`: {"response": ..., "model": {"name", "version"}}; winner `a`, `b` or `tie`."""
    return {"kind": "comparison", "id": str(uuid.uuid4()), "ts": now_ts(), "messages": messages, "a": a, "b": b,
            "winner": winner}


def load_schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text())
