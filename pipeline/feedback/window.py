"""The retraining window: the days' curated examples put together, the time split, and the DPO rows they give.

Versions are computed here from the values actually loaded, so lineage names what this run read, not what
the instance says was materialized last.
"""

from __future__ import annotations

from collections import Counter
from itertools import zip_longest

from pipeline.curation.near_dup import near_duplicates_of
from pipeline.curation.records import Record, dataset_version, prompt_key, sha256_json
from pipeline.curation.split import Split, grouped_split
from pipeline.feedback.curate import drop_duplicate_pairs, pair_key
from pipeline.feedback.examples import SOURCE, as_dpo_row
from pipeline.recipe import DataRecipe, NearDupRecipe


def events_version(events: list[dict]) -> str:
    return dataset_version(events)


def examples_version(day_value: dict) -> str:
    """The data version of a `feedback_examples` partition: its curated SFT examples and pairs."""
    return dataset_version(day_value["sft"] + day_value["pairs"])


def assemble_window(end: str, days: list[str], loaded: dict[str, dict]) -> dict:
    """One value for the window ending at `end`: every day read with the versions of what was read, the days
    that had no partition, SFT examples in day order and pairs deduplicated across days."""
    read = [d for d in days if d in loaded]
    partitions = {d: {"examples_version": examples_version(loaded[d]), "events_versions": loaded[d]["events_versions"],
                      "sft": len(loaded[d]["sft"]), "pairs": len(loaded[d]["pairs"])} for d in read}
    sft = [r for d in read for r in loaded[d]["sft"]]
    pairs, dropped = drop_duplicate_pairs([r for d in read for r in loaded[d]["pairs"]])
    value = {
        "end": end,
        "days": days,
        "partitions": partitions,
        "missing": [d for d in days if d not in loaded],
        "sft": sft,
        "pairs": pairs,
        "pairs_dropped_across_days": len(dropped),
    }
    value["version"] = sha256_json({"partitions": partitions, "examples": dataset_version(sft + pairs)})
    return value


def is_feedback(rec: Record) -> bool:
    return rec.get("source") == SOURCE and "feedback_day" in rec.get("meta", {})


def _decontaminate(candidates: list[Record], heldout: list[Record], golden: list[Record],
                   near_dup: NearDupRecipe) -> tuple[list[Record], list[Record]]:
    prompts = {prompt_key(r["messages"]) for r in heldout}
    near = near_duplicates_of(candidates, heldout + list(golden), near_dup)
    train, removed = [], []
    for i, rec in enumerate(candidates):
        if prompt_key(rec["messages"]) in prompts or i in near:
            by = f"near_duplicate:{near[i][0]}" if i in near else "heldout_prompt"
            removed.append({**rec, "meta": {**rec.get("meta", {}), "contaminated_by": by}})
        else:
            train.append(rec)
    return train, removed


def heldout_from_latest(records: list[Record], heldout_days: int) -> str | None:
    """The first held-out day: the latest `heldout_days` days that have feedback examples (None: hold out none)."""
    days = sorted({r["meta"]["feedback_day"] for r in records if is_feedback(r)})
    return days[max(len(days) - heldout_days, 0)] if heldout_days and days else None


def seeds_and_feedback_split(records: list[Record], data: DataRecipe, heldout_from: str | None,
                             golden: list[Record] = ()) -> Split:
    """Seeds split by group as before; feedback held out by time (families with any example on or after
    `heldout_from`); then train, seeds and feedback alike, decontaminated against all held-out and golden examples."""
    seeds = [r for r in records if not is_feedback(r)]
    feedback = [r for r in records if is_feedback(r)]
    seed_split = grouped_split(seeds, data.heldout_fraction, data.heldout_max_examples, data.seed)
    later = {r["group"] for r in feedback if heldout_from and r["meta"]["feedback_day"] >= heldout_from}
    feedback_heldout = [r for r in feedback if r["group"] in later]
    # interleaved, so an evaluation that scores the first `max_examples` sees both kinds
    heldout = [r for pair in zip_longest(seed_split.heldout, feedback_heldout) for r in pair if r is not None]
    candidates = seed_split.train + [r for r in feedback if r["group"] not in later]
    train, removed = _decontaminate(candidates, heldout, list(golden), data.near_dup)
    return Split(train, heldout, removed, seed_split.heldout_groups + len(later),
                 len({r["group"] for r in candidates}))


def feedback_dpo_rows(pairs: list[Record], seed_rows: list[dict], heldout: list[Record], golden: list[Record],
                      near_dup: NearDupRecipe) -> tuple[list[dict], Counter]:
    """The window's pairs as DPO rows, without those of held-out families or prompts, near-duplicates of held-out
    or golden examples, and copies of a seed pair; the counter says how many went for each reason."""
    dropped: Counter = Counter()
    groups = {r["group"] for r in heldout}
    in_family = [p for p in pairs if p["group"] not in groups]
    dropped["heldout_family"] = len(pairs) - len(in_family)
    clean, removed = _decontaminate(in_family, heldout, list(golden), near_dup)
    dropped["contaminated"] = len(removed)
    seed_keys = {sha256_json([" ".join(s.split()).lower() for s in (row["prompt"], row["chosen"], row["rejected"])])
                 for row in seed_rows}
    rows = []
    for pair in clean:
        row = as_dpo_row(pair)
        key = sha256_json([" ".join(s.split()).lower() for s in (row["prompt"], row["chosen"], row["rejected"])])
        if key in seed_keys:
            dropped["duplicate_of_seed_pair"] += 1
        else:
            rows.append(row)
    assert len(rows) + sum(dropped.values()) == len(pairs), "feedback pairs lost in the DPO books"
    return rows, +dropped


__all__ = ["assemble_window", "examples_version", "events_version", "feedback_dpo_rows", "pair_key",
           "seeds_and_feedback_split", "is_feedback"]
