"""Live feedback per served model version, from parsed events: what a canary decision compares."""

from __future__ import annotations

from collections import defaultdict


def _empty() -> dict[str, int]:
    return {"interactions": 0, "ratings_up": 0, "ratings_down": 0, "corrections": 0,
            "comparison_wins": 0, "comparison_losses": 0, "comparison_ties": 0}


def feedback_by_model_version(events: list[dict]) -> dict[str, dict[str, int]]:
    """Counts per model version: interactions served, ratings up/down and corrections of its answers, and
    comparisons won, lost or tied. Feedback whose interaction is not among `events` is not attributed."""
    stats: dict[str, dict[str, int]] = defaultdict(_empty)
    served = {e["id"]: str(e["model"]["version"]) for e in events if e.get("kind") == "interaction"}
    for e in events:
        kind = e.get("kind")
        if kind == "interaction":
            stats[served[e["id"]]]["interactions"] += 1
        elif kind == "feedback" and e.get("interaction_id") in served:
            row = stats[served[e["interaction_id"]]]
            if e.get("rating") == 1:
                row["ratings_up"] += 1
            elif e.get("rating") == -1:
                row["ratings_down"] += 1
            if (e.get("correction") or "").strip():
                row["corrections"] += 1
        elif kind == "comparison":
            a, b = str(e["a"]["model"]["version"]), str(e["b"]["model"]["version"])
            if e["winner"] == "tie" or a == b:
                stats[a]["comparison_ties"] += 1
                if b != a:
                    stats[b]["comparison_ties"] += 1
                continue
            winner, loser = (a, b) if e["winner"] == "a" else (b, a)
            stats[winner]["comparison_wins"] += 1
            stats[loser]["comparison_losses"] += 1
    return dict(stats)
