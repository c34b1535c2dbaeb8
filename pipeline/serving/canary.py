"""The canary decision and the on-call moves, over the registry (duck-typed: move_alias, remove_alias,
version_by_alias, alias_history) and the feedback bucket (list_keys, read_bytes). Every move is recorded by
the registry with who, why, the evidence and the time."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Callable, Iterable

from pipeline.recipe import CanaryRecipe
from pipeline.serving.canary_stats import PROMOTE, ROLLBACK, WAIT, Decision, decide, feedback_by_version, read_events
from pipeline.serving.events import parse_ts

CHAMPION, CANARY = "champion", "canary"


def canary_started(registry: Any, name: str, version: str) -> datetime | None:
    """When `canary` was last set to `version` (from the recorded alias moves)."""
    moves = [m for m in registry.alias_history(name) if m["alias"] == CANARY and m["action"] == "set" and m["version"] == version]
    return parse_ts(moves[-1]["at"]) if moves else None


def live_versions(registry: Any, name: str) -> dict[str, str]:
    found = {}
    for alias in (CHAMPION, CANARY):
        holder = registry.version_by_alias(name, alias)
        if holder is not None:
            found[alias] = str(holder.version)
    return found


def evaluate_canary(registry: Any, name: str, list_keys: Callable[[str], Iterable[str]],
                    read_bytes: Callable[[str], bytes], settings: CanaryRecipe) -> Decision | None:
    """The decision on the live canary from the feedback since it started; None when no canary is live."""
    live = live_versions(registry, name)
    if CANARY not in live or CHAMPION not in live:
        return None
    canary, champion = live[CANARY], live[CHAMPION]
    since = canary_started(registry, name, canary)
    if since is None:
        return Decision(WAIT, f"no recorded move made v{canary} canary; its start is unknown", {"canary": canary})
    events, malformed = read_events(list_keys, read_bytes, since)
    counts = feedback_by_version(events, [canary, champion])
    decision = decide(counts[champion], counts[canary], settings)
    decision.evidence.update({"canary_version": canary, "champion_version": champion, "since": since.isoformat(),
                              "events_read": len(events), "malformed_lines": malformed})
    return decision


def apply(registry: Any, name: str, decision: Decision, actor: str) -> list[dict[str, Any]]:
    """Carry out a promote or rollback decision; returns the recorded moves (none for wait)."""
    if decision.action == WAIT:
        return []
    canary = decision.evidence["canary_version"]
    evidence = {k: v for k, v in decision.evidence.items() if k != "metrics"} | {"metrics": decision.evidence["metrics"]}
    if decision.action == PROMOTE:
        moves = [registry.move_alias(name, CHAMPION, canary, actor=actor, reason=decision.reason, evidence=evidence)]
        moves.append(registry.remove_alias(name, CANARY, actor=actor, reason=f"v{canary} promoted to champion"))
        return moves
    assert decision.action == ROLLBACK
    return [registry.remove_alias(name, CANARY, actor=actor, reason=decision.reason, evidence=evidence)]


def previous_champion(registry: Any, name: str) -> str | None:
    """The version that held `champion` before the current holder (from the recorded moves)."""
    sets = [m for m in registry.alias_history(name) if m["alias"] == CHAMPION and m["action"] == "set"]
    current = live_versions(registry, name).get(CHAMPION)
    for move in reversed(sets):
        if move["version"] == current and move.get("previous") and move["previous"] != current:
            return move["previous"]
    return None


def rollback(registry: Any, name: str, actor: str, reason: str, champion_too: bool = False) -> list[dict[str, Any]]:
    """Remove the canary; restore the previous champion when no canary was live (or `champion_too`)."""
    moves = []
    had_canary = registry.version_by_alias(name, CANARY) is not None
    if had_canary:
        moves.append(registry.remove_alias(name, CANARY, actor=actor, reason=reason))
    if champion_too or not had_canary:
        previous = previous_champion(registry, name)
        if previous is None:
            if not had_canary:
                raise ValueError(f"{name}: no canary is live and no previous champion is recorded; nothing to roll back")
        else:
            moves.append(registry.move_alias(name, CHAMPION, previous, actor=actor, reason=f"rollback: {reason}"))
    return moves


def promote(registry: Any, name: str, version: str, to: str, actor: str, reason: str) -> list[dict[str, Any]]:
    """Point `to` (champion or canary) at `version`; a canary promoted to champion stops being canary."""
    moves = [registry.move_alias(name, to, version, actor=actor, reason=reason)]
    canary = registry.version_by_alias(name, CANARY)
    if to == CHAMPION and canary is not None and str(canary.version) == version:
        moves.append(registry.remove_alias(name, CANARY, actor=actor, reason=f"v{version} promoted to champion"))
    return moves
