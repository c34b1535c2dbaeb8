"""Deterministic, grouped train/held-out split; train is decontaminated against held-out and the golden set.

A train example goes when its normalised prompt equals a held-out one, or when it is a MinHash
near-duplicate (whole conversation) of any held-out or golden example.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from pipeline.curation.near_dup import near_duplicates_of
from pipeline.curation.records import Record, prompt_key
from pipeline.recipe import NearDupRecipe


@dataclass
class Split:
    train: list[Record]
    heldout: list[Record]
    decontaminated: list[Record]  # train examples removed as contaminated; meta["contaminated_by"] says by what
    heldout_groups: int
    train_groups: int


def _rank(seed: int, group: str) -> str:
    return hashlib.sha256(f"{seed}:{group}".encode()).hexdigest()


def grouped_split(records: list[Record], fraction: float, max_heldout: int, seed: int,
                  near_dup: NearDupRecipe | None = None, golden: list[Record] = ()) -> Split:
    """Whole groups go to held-out in seeded hash order until `fraction` (capped at `max_heldout`) is reached.

    Hash order, not a shuffled list, so adding a record to one group never moves another group.
    With `near_dup`, train examples near-duplicate to a held-out or `golden` example are removed too.
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
    candidates = [r for r in records if r["group"] not in heldout_groups]
    near = near_duplicates_of(candidates, heldout + list(golden), near_dup) if near_dup else {}
    train, decontaminated = [], []
    for i, rec in enumerate(candidates):
        if prompt_key(rec["messages"]) in heldout_prompts:
            decontaminated.append({**rec, "meta": {**rec.get("meta", {}), "contaminated_by": "heldout_prompt"}})
        elif i in near:
            other, similarity = near[i]
            decontaminated.append({**rec, "meta": {**rec.get("meta", {}), "contaminated_by": f"near_duplicate:{other}",
                                                   "contamination_similarity": round(similarity, 3)}})
        else:
            train.append(rec)
    return Split(train, heldout, decontaminated, len(heldout_groups), len(groups) - len(heldout_groups))


def time_split(records: list[Record], time_key: str, heldout_from: str, near_dup: NearDupRecipe | None = None,
               golden: list[Record] = ()) -> Split:
    """Feedback data: examples whose `meta[time_key]` (ISO-8601 text, compared as text) is at or after
    `heldout_from` are held out, so evaluation runs on what came after everything trained on. Examples
    without a timestamp stay in train. Train is decontaminated like in `grouped_split`."""
    later = {r["group"] for r in records if str(r.get("meta", {}).get(time_key) or "") >= heldout_from}
    # a group with any held-out example goes whole, so families never straddle the split
    heldout = [r for r in records if r["group"] in later]
    rest = [r for r in records if r["group"] not in later]
    heldout_prompts = {prompt_key(r["messages"]) for r in heldout}
    near = near_duplicates_of(rest, heldout + list(golden), near_dup) if near_dup else {}
    train, decontaminated = [], []
    for i, rec in enumerate(rest):
        if prompt_key(rec["messages"]) in heldout_prompts or i in near:
            by = "heldout_prompt" if i not in near else f"near_duplicate:{near[i][0]}"
            decontaminated.append({**rec, "meta": {**rec.get("meta", {}), "contaminated_by": by}})
        else:
            train.append(rec)
    return Split(train, heldout, decontaminated, len(later), len({r["group"] for r in rest}))


def leaked_heldout(train: list[Record], reference: list[Record], near_dup: NearDupRecipe) -> list[dict]:
    """Every train example that is a near-duplicate of a held-out (or golden) example; empty means clean."""
    hits = near_duplicates_of(train, reference, near_dup)
    return [{"train_id": train[i]["id"], "heldout_id": other, "similarity": round(sim, 3)} for i, (other, sim) in sorted(hits.items())]


def overlap(train: list[Record], heldout: list[Record]) -> dict[str, int]:
    """Ways train and held-out touch: shared ids, groups or normalised prompts. All zero means clean."""
    def keys(rs, fn):
        return {fn(r) for r in rs}

    return {
        "shared_ids": len(keys(train, lambda r: r["id"]) & keys(heldout, lambda r: r["id"])),
        "shared_groups": len(keys(train, lambda r: r["group"]) & keys(heldout, lambda r: r["group"])),
        "shared_prompts": len(keys(train, lambda r: prompt_key(r["messages"])) & keys(heldout, lambda r: prompt_key(r["messages"]))),
    }
