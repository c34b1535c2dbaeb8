"""Read one day of the feedback bucket: gzip JSON Lines objects into validated events, the rest quarantined.

A bad line never costs its object, and a bad object never costs its day: a corrupt or truncated gzip keeps
the lines that decompressed before the damage, and every rejected line is kept with its key, line and reason.
"""

from __future__ import annotations

import json
import zlib
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from pipeline.curation.pii import scrub_text

KINDS = ("interaction", "feedback", "comparison")
RAW_CLIP = 2000  # characters of a rejected line kept (scrubbed) for inspection
_CHUNK = 1 << 16


class BadEvent(ValueError):
    """An event that breaks the contract; `reason` is a short stable code counted in the quarantine."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass
class DayRead:
    """A day's objects read: events kept, lines quarantined, event ids seen twice, and the books per object."""

    day: str
    events: list[dict] = field(default_factory=list)
    quarantined: list[dict] = field(default_factory=list)  # {"key", "line", "reason", "detail", "raw"}
    duplicates: int = 0
    objects: list[dict] = field(default_factory=list)  # {"key", "etag", "lines", "events", "quarantined", "duplicates"}

    @property
    def lines(self) -> int:
        return sum(o["lines"] for o in self.objects)

    def balanced(self) -> bool:
        """Every line is an event, a quarantined line or a duplicate; object-level damage counts as one line."""
        return self.lines == len(self.events) + len(self.quarantined) + self.duplicates


def gunzip_lines(body: bytes) -> tuple[list[bytes], tuple[str, str] | None]:
    """The complete lines of a gzip object, and (reason, detail) when it is damaged; what decompressed before the
    damage is kept. Several gzip members one after another read as one stream."""
    out, error, data = bytearray(), None, body
    while data:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            for i in range(0, len(data), _CHUNK):
                out += inflater.decompress(data[i:i + _CHUNK])
                if inflater.eof:
                    break
        except zlib.error as e:
            error = ("corrupt_gzip", str(e))
            break
        if not inflater.eof:
            error = ("truncated_gzip", f"the gzip stream ends early after {len(out)} bytes")
            break
        data = inflater.unused_data
    lines = bytes(out).split(b"\n")
    tail = lines.pop()  # after the last newline: empty for a whole object
    if tail and error is None:
        lines.append(tail)  # a last line without its newline is still a line
    elif tail:
        error = (error[0], f"{error[1]}; a partial last line of {len(tail)} bytes dropped")
    return lines, error


def _ts(value: Any, day: str) -> str:
    if not isinstance(value, str):
        raise BadEvent("bad_timestamp", f"ts is {type(value).__name__}, not RFC 3339 text")
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise BadEvent("bad_timestamp", f"ts {value[:40]!r} is not RFC 3339") from None
    if moment.tzinfo is None:
        raise BadEvent("bad_timestamp", f"ts {value!r} has no timezone")
    utc_day = moment.astimezone(timezone.utc).date().isoformat()
    if utc_day != day:
        raise BadEvent("wrong_day", f"ts {value} is on {utc_day}, the object is under dt={day}")
    return value


def _messages(value: Any) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise BadEvent("bad_messages", "messages must be a non-empty list")
    for i, m in enumerate(value):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant") or not isinstance(m.get("content"), str):
            raise BadEvent("bad_messages", f"messages[{i}] needs a role (system/user/assistant) and text content")
    if value[-1]["role"] != "user" or not value[-1]["content"].strip():
        raise BadEvent("bad_messages", "the last message must be a non-empty user turn (the prompt)")
    return value


def _text(value: Any, name: str, reason: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise BadEvent(reason, f"{name} must be non-empty text")
    return value


def _version(model: Any, name: str) -> None:
    if not isinstance(model, dict) or not isinstance(model.get("version"), (str, int)):
        raise BadEvent("bad_model", f"{name} must be an object with a version")


def validate_event(raw: Any, day: str) -> dict:
    """The event itself when it keeps the contract (unknown fields kept), else BadEvent."""
    if not isinstance(raw, dict):
        raise BadEvent("not_an_object", f"a JSON {type(raw).__name__}, not an object")
    kind = raw.get("kind")
    if kind not in KINDS:
        raise BadEvent("unknown_kind", f"kind {str(kind)[:40]!r} is none of {list(KINDS)}")
    if not isinstance(raw.get("id"), str) or not raw["id"]:
        raise BadEvent("missing_id", "id must be a non-empty string")
    _ts(raw.get("ts"), day)
    if kind == "interaction":
        _messages(raw.get("messages"))
        _text(raw.get("response"), "response", "missing_response")
        _version(raw.get("model"), "model")
    elif kind == "feedback":
        _text(raw.get("interaction_id"), "interaction_id", "missing_interaction_id")
        rating, correction = raw.get("rating"), raw.get("correction")
        if rating is not None and (isinstance(rating, bool) or rating not in (1, -1)):
            raise BadEvent("bad_rating", f"rating {rating!r} is not 1 or -1")
        if correction is not None and not isinstance(correction, str):
            raise BadEvent("bad_correction", "correction must be text")
        if rating is None and not (correction or "").strip():
            raise BadEvent("empty_feedback", "neither a rating nor a correction")
    else:
        _messages(raw.get("messages"))
        for side in ("a", "b"):
            if not isinstance(raw.get(side), dict):
                raise BadEvent("bad_comparison", f"{side} must be an object with a response and a model")
            _text(raw[side].get("response"), f"{side}.response", "bad_comparison")
            _version(raw[side].get("model"), f"{side}.model")
        if raw.get("winner") not in ("a", "b", "tie"):
            raise BadEvent("bad_winner", f"winner {str(raw.get('winner'))[:20]!r} is not a, b or tie")
    return raw


def _raw(text: str) -> str:
    return scrub_text(text[:RAW_CLIP])[0]  # a rejected line may hold the very secrets scrubbing exists for


def read_object(day_read: DayRead, key: str, etag: str, body: bytes, seen: set[str]) -> None:
    """Add one object's events to the day; its bad lines go to quarantine, event ids already seen are counted."""
    before = (len(day_read.events), len(day_read.quarantined), day_read.duplicates)
    lines, damage = gunzip_lines(body)
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            day_read.quarantined.append({"key": key, "line": number, "reason": "empty_line", "detail": "", "raw": ""})
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            day_read.quarantined.append({"key": key, "line": number, "reason": "invalid_utf8", "detail": str(e), "raw": ""})
            continue
        try:
            event = validate_event(json.loads(text), day_read.day)
        except json.JSONDecodeError as e:
            day_read.quarantined.append({"key": key, "line": number, "reason": "invalid_json", "detail": str(e), "raw": _raw(text)})
            continue
        except BadEvent as e:
            day_read.quarantined.append({"key": key, "line": number, "reason": e.reason, "detail": e.detail, "raw": _raw(text)})
            continue
        if event["id"] in seen:
            day_read.duplicates += 1  # a writer's retry wrote it twice; the first copy is kept
            continue
        seen.add(event["id"])
        day_read.events.append({**event, "_origin": {"key": key, "line": number}})
    extra = 0
    if damage:
        extra = 1  # the damaged remainder of the object counts as one line of its books
        day_read.quarantined.append({"key": key, "line": len(lines) + 1, "reason": damage[0], "detail": damage[1], "raw": ""})
    events, quarantined, duplicates = (len(day_read.events) - before[0], len(day_read.quarantined) - before[1],
                                       day_read.duplicates - before[2])
    day_read.objects.append({"key": key, "etag": etag, "bytes": len(body), "lines": len(lines) + extra, "events": events,
                             "quarantined": quarantined, "duplicates": duplicates})


def read_day(day: str, objects: list[tuple[str, str, bytes]]) -> DayRead:
    """Read a day's objects (key, etag, body) in key order, so the same objects give the same events."""
    day_read, seen = DayRead(day), set()
    for key, etag, body in sorted(objects):
        read_object(day_read, key, etag, body, seen)
    return day_read


def counts(day_read: DayRead) -> dict[str, Counter]:
    """Events per kind and per served model version, ratings, corrections and rejects per reason."""
    kinds = Counter(e["kind"] for e in day_read.events)
    versions = Counter(str(e["model"]["version"]) for e in day_read.events if e["kind"] == "interaction")
    ratings = Counter({1: "up", -1: "down"}[e["rating"]] for e in day_read.events if e["kind"] == "feedback" and e.get("rating") is not None)
    corrections = Counter("correction" for e in day_read.events if e["kind"] == "feedback" and (e.get("correction") or "").strip())
    winners = Counter(e["winner"] for e in day_read.events if e["kind"] == "comparison")
    return {"kinds": kinds, "model_versions": versions, "ratings": ratings, "corrections": corrections, "winners": winners,
            "rejects": Counter(q["reason"] for q in day_read.quarantined)}
