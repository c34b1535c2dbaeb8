"""Deterministic, grouped train/held-out split with exact-prompt decontamination of train."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from pipeline.curation.records import Record, prompt_key


@dataclass
class Split:
    train: list[Record]
    heldout: list[Record]
    decontaminated: list[Record]  # train examples removed because their prompt is also held out
    heldout_groups: int
    train_groups: int


def _rank(seed: int, group: str) -> str:
    return hashlib.sha256(f"{seed}:{group}".encode()).hexdigest()


def grouped_split(records: list[Record], fraction: float, max_heldout: int, seed: int) -> Split:
    """Whole groups go to held-out in seeded hash order until `fraction` (capped at `max_heldout`) is reached.

    Hash order, not a shuffled list, so adding a record to one group never moves another group.
    """
    groups: dict[str, list[Record]] = {}
    for rec in records:
        groups.setdefault(rec["group"], []).append(rec)
    target = min(round(fraction * len(records)), max_heldout)
    heldout_groups: set[str] = set()
    size = 0
    for group in sorted(groups, key=lambda g: _rank(seed, g)):
        if size >= target:
            break
        if size + len(groups[group]) > max_heldout:
            continue  # a big family would overshoot the cap; a smaller one further on fits
        heldout_groups.add(group)
        size += len(groups[group])

    heldout = [r for r in records if r["group"] in heldout_groups]
    heldout_prompts = {prompt_key(r["messages"]) for r in heldout}
    train, decontaminated = [], []
    for rec in records:
        if rec["group"] in heldout_groups:
            continue
        (decontaminated if prompt_key(rec["messages"]) in heldout_prompts else train).append(rec)
    return Split(train, heldout, decontaminated, len(heldout_groups), len(groups) - len(heldout_groups))


def overlap(train: list[Record], heldout: list[Record]) -> dict[str, int]:
    """Ways train and held-out touch: shared ids, groups or normalised prompts. All zero means clean."""
    def keys(rs, fn):
        return {fn(r) for r in rs}

    return {
        "shared_ids": len(keys(train, lambda r: r["id"]) & keys(heldout, lambda r: r["id"])),
        "shared_groups": len(keys(train, lambda r: r["group"]) & keys(heldout, lambda r: r["group"])),
        "shared_prompts": len(keys(train, lambda r: prompt_key(r["messages"])) & keys(heldout, lambda r: prompt_key(r["messages"]))),
    }
