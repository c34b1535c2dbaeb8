"""When to ingest and when to retrain: a cursor over the bucket's listing, and new curated examples since the champion."""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict

from pipeline.feedback.layout import day_of_key


def listing_by_day(listing: list[tuple[str, str]]) -> dict[str, dict]:
    """Objects (key, ETag or mtime) grouped by day, each day with a digest of its keys and tags and a count."""
    days: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for key, tag in listing:
        day = day_of_key(key)
        if day:
            days[day].append((key, tag))
    return {day: {"objects": len(objs), "digest": hashlib.sha256(json.dumps(sorted(objs)).encode()).hexdigest()[:16]}
            for day, objs in days.items()}


def changed_days(listing: list[tuple[str, str]], cursor: dict[str, dict]) -> tuple[dict[str, dict], dict[str, dict]]:
    """Days whose objects differ from the cursor (new day, new object, or a changed ETag), and the next cursor.

    The cursor keeps each day's digest and count (a digest of every key and tag, not the keys), so it stays small and a restarted daemon
    compares against exactly what was last handed to a run."""
    now = listing_by_day(listing)
    changed = {}
    for day, state in sorted(now.items()):
        before = cursor.get(day)
        if before is None or before["digest"] != state["digest"]:
            changed[day] = {"objects": state["objects"], "new_objects": state["objects"] - (before["objects"] if before else 0),
                            "late": before is not None, "digest": state["digest"]}
    cursor_next = {**cursor, **{d: {"digest": s["digest"], "objects": s["objects"]} for d, s in now.items()}}
    return changed, cursor_next


def new_examples_since(current: dict[str, tuple[str, int]], trained: dict[str, tuple[str, int]]) -> tuple[int, list[str]]:
    """Curated examples in `current` (day -> (version, count)) that the champion's data (`trained`) did not have:
    a day it never saw counts whole, a day whose version changed counts what it gained. Returns the count and
    one line per day that contributed."""
    total, lines = 0, []
    for day, (version, count) in sorted(current.items()):
        before = trained.get(day)
        if before is None:
            gain = count
        elif before[0] == version:
            continue
        else:
            gain = max(count - before[1], 0)
        if gain:
            total += gain
            lines.append(f"{day}: +{gain}")
    return total, lines
