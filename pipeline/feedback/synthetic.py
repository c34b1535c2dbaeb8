"""Synthetic-but-realistic production feedback from real Debian packages, written in the bucket's format.

Each day some users ask for a package summary; the served model (mostly the champion, some canary) answers
right or with a neighbour package's summary; users rate, reviewers correct wrong answers (now and then
pasting an e-mail address or a token, as real users do), a few pairs are compared side by side, and some
ratings arrive after midnight, in the next day's folder. Deterministic for a seed.
"""

from __future__ import annotations

import gzip
import json
import random
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

from pipeline.feedback.layout import object_key
from pipeline.paths import PROJECT_ROOT

SOURCE = PROJECT_ROOT / "data/sample/feedback_source.jsonl"
INSTRUCTION = "Write the one-line summary of this Debian package from its description."
MODEL = "debian-package-summarizer"
LEAKS = ["reach me at {name}@example.org", "token ghp_{token}", "call +1 415 555 0{n:03d}"]


def load_packages(path: Path = SOURCE) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _ts(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def day_events(day: str, packages: list[dict], per_day: int, rng: random.Random,
               versions: tuple[str, str] = ("1", "2")) -> list[dict]:
    """One day of events (interactions, feedback, comparisons), each with its own ts; some feedback spills past midnight."""
    start = datetime.fromisoformat(day).replace(tzinfo=timezone.utc)
    events = []
    for i in range(per_day):
        pkg = rng.choice(packages)
        moment = start + timedelta(seconds=rng.randint(0, 86_399), milliseconds=rng.randint(0, 999))
        canary = rng.random() < 0.2
        version = versions[1] if canary else versions[0]
        right = rng.random() < (0.55 if canary else 0.45)
        prompt = [{"role": "user", "content": f"{INSTRUCTION}\n\n{pkg['description']}"}]
        interaction = {"kind": "interaction", "id": str(uuid.UUID(int=rng.getrandbits(128))), "ts": _ts(moment),
                       "model": {"name": MODEL, "version": version, "alias": "canary" if canary else "champion"},
                       "messages": prompt, "response": pkg["summary"] if right else pkg["weak_summary"],
                       "params": {"temperature": 0.0, "max_tokens": 64},
                       "usage": {"prompt_tokens": len(prompt[0]["content"]) // 4, "completion_tokens": 12},
                       "latency_ms": rng.randint(60, 400)}
        events.append(interaction)
        later = moment + timedelta(seconds=rng.randint(5, 7_200))  # feedback can land in the next day's folder
        feedback = {"kind": "feedback", "id": str(uuid.UUID(int=rng.getrandbits(128))), "ts": _ts(later),
                    "interaction_id": interaction["id"]}
        if right:
            if rng.random() < 0.5:
                events.append({**feedback, "rating": 1})
        elif rng.random() < 0.8:
            correction = pkg["summary"]
            if rng.random() < 0.15:
                leak = rng.choice(LEAKS).format(name=f"user{i}", token="".join(rng.choices("abcdefghijklmnopqrstuvwxyz0123456789", k=36)), n=i)
                correction = f"{correction} ({leak})"
            events.append({**feedback, "rating": -1, "correction": correction,
                           **({"comment": "wrong package"} if rng.random() < 0.3 else {})})
        else:
            events.append({**feedback, "rating": -1})
        if rng.random() < 0.15:
            champion_answer, canary_answer = pkg["weak_summary"], pkg["summary"]
            if rng.random() < 0.3:
                champion_answer, canary_answer = canary_answer, champion_answer
            events.append({"kind": "comparison", "id": str(uuid.UUID(int=rng.getrandbits(128))), "ts": _ts(later),
                           "messages": prompt,
                           "a": {"response": champion_answer, "model": {"name": MODEL, "version": versions[0]}},
                           "b": {"response": canary_answer, "model": {"name": MODEL, "version": versions[1]}},
                           "winner": "b" if canary_answer == pkg["summary"] else "a"})
    return events


def gzip_lines(lines: list[str]) -> bytes:
    return gzip.compress("".join(line + "\n" for line in lines).encode("utf-8"), mtime=0)


def write_days(days: list[str], write: Callable[[str, bytes], object], per_day: int = 24, seed: int = 7,
               writer: str = "serve-demo", flush_every: int = 20, packages: list[dict] | None = None) -> dict[str, list[str]]:
    """Write `days` of events the way a server flushes them: into the folder of each event's own UTC day, a new
    object every `flush_every` events. Returns the keys written per day."""
    rng = random.Random(seed)
    packages = packages or load_packages()
    by_day: dict[str, list[dict]] = {}
    for day in days:
        for event in day_events(day, packages, per_day, rng):
            by_day.setdefault(event["ts"][:10], []).append(event)
    written: dict[str, list[str]] = {}
    for day, events in sorted(by_day.items()):
        events.sort(key=lambda e: e["ts"])
        for n, start in enumerate(range(0, len(events), flush_every)):
            chunk = events[start:start + flush_every]
            stamp = chunk[-1]["ts"][:19].replace("-", "").replace(":", "")
            key = object_key(day, writer, stamp, n)
            write(key, gzip_lines([json.dumps(e, ensure_ascii=False) for e in chunk]))
            written.setdefault(day, []).append(key)
    return written
