"""The seed data's curation applied to a day of feedback, and to the preference pairs the seeds' blocks don't cover.

SFT examples go through `curation_steps` itself (scrubbing, quality filters, exact and near-duplicates); the
tokenizer's length bounds, deduplication against the seeds and decontamination follow in the retraining run,
where the seeds and the held-out split are at hand. Pairs get the same blocks, with the rejected answer
scrubbed too and duplicates judged on prompt, chosen and rejected together.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from pipeline.curation.quality import drop_garbage, drop_prompt_echoes, drop_repetitive
from pipeline.curation.records import Record, sha256_json, normalize_text
from pipeline.curation.steps import (Dropped, Step, StepReport, curation_steps, keep_first_by_key, run_steps,
                                     scrub_messages)
from pipeline.feedback.examples import DayExamples, pair_prompt_turns
from pipeline.recipe import DataRecipe, FeedbackRecipe


@dataclass
class CuratedDay:
    sft: list[Record]
    pairs: list[Record]
    sft_reports: list[StepReport]
    pair_reports: list[StepReport]
    scrubbed: Counter  # replacements per type over the day's SFT examples and pairs


def scrub_pairs(records: list[Record]) -> tuple[list[Record], list[Dropped]]:
    """Scrub both conversations of a pair (the chosen one in messages, the rejected one in meta)."""
    out = []
    for rec in records:
        chosen, found_chosen = scrub_messages(rec["messages"])
        rejected, found_rejected = scrub_messages(rec["meta"]["rejected"])
        found = found_chosen + found_rejected
        meta = {**rec["meta"], "rejected": rejected, **({"scrubbed": dict(found)} if found else {})}
        out.append({**rec, "messages": chosen, "meta": meta})
    return out, []


def pair_key(rec: Record) -> str:
    return sha256_json([normalize_text(m["content"]) for m in rec["messages"] + rec["meta"]["rejected"][-1:]])


def drop_duplicate_pairs(records: list[Record], seen: set[str] | None = None) -> tuple[list[Record], list[Dropped]]:
    """Keep the first pair of each (prompt, chosen, rejected) up to case and spacing; `seen` holds earlier keys."""
    return keep_first_by_key(records, pair_key, seen)


def pair_steps(data: DataRecipe, feedback: FeedbackRecipe) -> list[tuple[str, Step]]:
    def prompt_turns(records: list[Record]) -> tuple[list[Record], list[Dropped]]:
        kept = [r for r in records if pair_prompt_turns(r) <= feedback.max_pair_turns]
        return kept, [(r, "too_many_turns") for r in records if pair_prompt_turns(r) > feedback.max_pair_turns]

    def rejected_quality(records: list[Record]) -> tuple[list[Record], list[Dropped]]:
        as_rejected = [{**r, "messages": r["meta"]["rejected"]} for r in records]
        kept_ids = {id(r) for r in drop_garbage(as_rejected, data.quality)[0]}
        kept = [r for r, a in zip(records, as_rejected) if id(a) in kept_ids]
        return kept, [(r, "rejected_garbage") for r, a in zip(records, as_rejected) if id(a) not in kept_ids]

    return [
        ("scrub_pii", scrub_pairs),
        ("prompt_turns", prompt_turns),
        ("garbage_filter", lambda records: drop_garbage(records, data.quality)),
        ("rejected_garbage_filter", rejected_quality),
        ("repetition_filter", lambda records: drop_repetitive(records, data.quality)),
        ("prompt_echo_filter", lambda records: drop_prompt_echoes(records, data.quality)),
        ("exact_dedup", drop_duplicate_pairs),
    ]


def curate_day(examples: DayExamples, data: DataRecipe, feedback: FeedbackRecipe) -> CuratedDay:
    sft, sft_reports = run_steps(examples.sft, curation_steps(data))
    pairs, pair_reports = run_steps(examples.pairs, pair_steps(data, feedback))
    scrubbed = sum((Counter(r["meta"].get("scrubbed", {})) for r in sft + pairs), Counter())
    # what scrubbing replaced in examples a later block dropped still counts as text scrubbed that day
    for report in sft_reports + pair_reports:
        if report.name != "scrub_pii":
            scrubbed += sum((Counter(r["meta"].get("scrubbed", {})) for r, _ in report.dropped_records), Counter())
    return CuratedDay(sft, pairs, sft_reports, pair_reports, scrubbed)
