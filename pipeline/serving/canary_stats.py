"""Canary statistics: the live feedback of canary and champion since the canary started, and the decision.

The test, stated: each metric is a proportion with a Beta(1 + successes, 1 + failures) posterior per version
(uniform prior). The canary is WORSE on a metric when P(p_canary < p_champion) >= confidence, and AT LEAST AS GOOD
when P(p_canary > p_champion - margin) >= confidence (non-inferiority). Metrics, each judged only with at least
`min_samples` observations on both sides:
- rating: share of ratings that are +1;
- no_correction: share of the interactions that got feedback which were not corrected;
- comparison: the canary's share of decisive canary-vs-champion comparisons (against the champion's 1 - share).
Roll back when any judged metric is worse; promote when at least one is judged and every judged one is at least
as good; otherwise wait."""

from __future__ import annotations

import gzip
import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterable

from scipy import integrate, stats

from pipeline.recipe import CanaryRecipe
from pipeline.serving.events import PREFIX, parse_ts

PROMOTE, ROLLBACK, WAIT = "promote", "rollback", "wait"


@dataclass
class VersionFeedback:
    interactions: int = 0
    ratings_up: int = 0
    ratings_down: int = 0
    with_feedback: int = 0
    corrected: int = 0
    comparison_wins: int = 0
    comparison_losses: int = 0
    comparison_ties: int = 0


@dataclass
class Decision:
    action: str
    reason: str
    evidence: dict[str, Any] = field(default_factory=dict)


def read_events(list_keys: Callable[[str], Iterable[str]], read_bytes: Callable[[str], bytes], since: datetime,
                until: datetime | None = None) -> tuple[list[dict[str, Any]], int]:
    """Every well-formed event with `ts` >= since from the day folders since then; malformed lines are counted."""
    until = until or datetime.now(timezone.utc)
    events, malformed = [], 0
    day = since.date()
    while day <= until.date():
        for key in sorted(list_keys(f"{PREFIX}dt={day.isoformat()}/")):
            if not key.endswith(".jsonl.gz"):
                continue
            try:
                lines = gzip.decompress(read_bytes(key)).decode("utf-8").splitlines()
            except (OSError, UnicodeDecodeError, EOFError):
                malformed += 1
                continue
            for line in lines:
                try:
                    event = json.loads(line)
                    if parse_ts(event["ts"]) >= since:
                        events.append(event)
                except (ValueError, KeyError, TypeError, AttributeError):
                    malformed += 1
        day += timedelta(days=1)
    return events, malformed


def feedback_by_version(events: list[dict[str, Any]], versions: Iterable[str]) -> dict[str, VersionFeedback]:
    """Counts per version for `versions`; comparisons count only between two of them."""
    wanted = set(versions)
    out = {v: VersionFeedback() for v in wanted}
    served = {}
    for e in events:
        if e.get("kind") == "interaction" and str(e.get("model", {}).get("version")) in wanted:
            served[e["id"]] = str(e["model"]["version"])
            out[served[e["id"]]].interactions += 1
    rated: dict[str, set[str]] = {}
    for e in events:
        kind = e.get("kind")
        if kind == "feedback" and e.get("interaction_id") in served:
            version = served[e["interaction_id"]]
            row = out[version]
            row.ratings_up += e.get("rating") == 1
            row.ratings_down += e.get("rating") == -1
            marks = rated.setdefault(e["interaction_id"], set())
            if not marks:
                row.with_feedback += 1
            if (e.get("correction") or "").strip() and "corrected" not in marks:
                row.corrected += 1
                marks.add("corrected")
            marks.add("seen")
        elif kind == "comparison":
            try:
                a, b = str(e["a"]["model"]["version"]), str(e["b"]["model"]["version"])
            except (KeyError, TypeError):
                continue
            if a == b or not {a, b} <= wanted:
                continue
            if e.get("winner") == "tie":
                out[a].comparison_ties += 1
                out[b].comparison_ties += 1
            elif e.get("winner") in ("a", "b"):
                winner, loser = (a, b) if e["winner"] == "a" else (b, a)
                out[winner].comparison_wins += 1
                out[loser].comparison_losses += 1
    return out


def prob_above(success_x: int, n_x: int, success_y: int, n_y: int, margin: float = 0.0) -> float:
    """P(p_x > p_y - margin) under independent Beta(1 + s, 1 + n - s) posteriors."""
    x = stats.beta(1 + success_x, 1 + n_x - success_x)
    y = stats.beta(1 + success_y, 1 + n_y - success_y)
    value, _ = integrate.quad(lambda p: y.pdf(p) * x.sf(p - margin), 0, 1, limit=200)
    return min(max(value, 0.0), 1.0)


def _metric(name: str, canary: tuple[int, int], champion: tuple[int, int], settings: CanaryRecipe) -> dict[str, Any]:
    (sc, nc), (sh, nh) = canary, champion
    row: dict[str, Any] = {"metric": name, "canary": {"successes": sc, "n": nc}, "champion": {"successes": sh, "n": nh},
                           "canary_rate": round(sc / nc, 4) if nc else None, "champion_rate": round(sh / nh, 4) if nh else None}
    row["judged"] = min(nc, nh) >= settings.min_samples
    if row["judged"]:
        row["p_worse"] = round(1 - prob_above(sc, nc, sh, nh), 4)
        row["p_at_least_as_good"] = round(prob_above(sc, nc, sh, nh, settings.margin), 4)
    return row


def _comparison_metric(canary: VersionFeedback, settings: CanaryRecipe) -> dict[str, Any]:
    wins, losses = canary.comparison_wins, canary.comparison_losses
    n = wins + losses
    row: dict[str, Any] = {"metric": "comparison", "canary_wins": wins, "champion_wins": losses,
                           "ties": canary.comparison_ties, "canary_rate": round(wins / n, 4) if n else None}
    row["judged"] = n >= settings.min_samples
    if row["judged"]:
        share = stats.beta(1 + wins, 1 + losses)
        row["p_worse"] = round(share.cdf(0.5), 4)  # canary share below the champion's
        row["p_at_least_as_good"] = round(share.sf((1 - settings.margin) / 2), 4)  # 2p - 1 > -margin
    return row


def decide(champion: VersionFeedback, canary: VersionFeedback, settings: CanaryRecipe) -> Decision:
    """Promote, roll back or wait, with every metric's numbers as the evidence."""
    rows = [
        _metric("rating", (canary.ratings_up, canary.ratings_up + canary.ratings_down),
                (champion.ratings_up, champion.ratings_up + champion.ratings_down), settings),
        _metric("no_correction", (canary.with_feedback - canary.corrected, canary.with_feedback),
                (champion.with_feedback - champion.corrected, champion.with_feedback), settings),
        _comparison_metric(canary, settings),
    ]
    evidence = {"test": "Beta posterior", "confidence": settings.confidence, "margin": settings.margin,
                "min_samples": settings.min_samples, "metrics": rows,
                "canary": asdict(canary), "champion": asdict(champion)}
    judged = [r for r in rows if r["judged"]]
    worse = [r for r in judged if r["p_worse"] >= settings.confidence]
    if worse:
        why = "; ".join(f"{r['metric']}: P(canary worse) = {r['p_worse']:.3f}" for r in worse)
        return Decision(ROLLBACK, f"canary is worse with confidence {settings.confidence}: {why}", evidence)
    if judged and all(r["p_at_least_as_good"] >= settings.confidence for r in judged):
        why = "; ".join(f"{r['metric']}: P(at least as good) = {r['p_at_least_as_good']:.3f}" for r in judged)
        return Decision(PROMOTE, f"canary is at least as good (margin {settings.margin}) with confidence "
                        f"{settings.confidence}: {why}", evidence)
    if not judged:
        counts = ", ".join(f"{r['metric']} {r.get('canary', {}).get('n', r.get('canary_wins', 0) + r.get('champion_wins', 0))}"
                           for r in rows)
        return Decision(WAIT, f"too few samples: each metric needs {settings.min_samples} on both sides ({counts} on the canary)", evidence)
    undecided = "; ".join(f"{r['metric']}: P(worse) {r['p_worse']:.3f}, P(at least as good) {r['p_at_least_as_good']:.3f}"
                          for r in judged)
    return Decision(WAIT, f"not yet conclusive at confidence {settings.confidence}: {undecided}", evidence)
