"""Feedback events into training data: corrections become SFT examples, corrections over the served response and
comparison winners become preference pairs; ratings stay events (for the canary decision, `aggregate.py`).

Every `feedback` and `comparison` event of the day gets exactly one outcome, so the books close:
events = interactions + one outcome per feedback/comparison event.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from pipeline.curation.records import Record, normalize_text, prompt_key, record_id

SOURCE = "feedback"


@dataclass
class DayExamples:
    sft: list[Record] = field(default_factory=list)
    pairs: list[Record] = field(default_factory=list)  # chosen conversation in messages, rejected in meta.rejected
    outcomes: Counter = field(default_factory=Counter)  # one per feedback/comparison event; interactions counted too


def _record(day: str, event: dict, messages: list[dict], answer: str, kind: str, rejected: str | None = None,
            model_version: str | None = None) -> Record:
    conversation = [{"role": m["role"], "content": m["content"]} for m in messages] + [{"role": "assistant", "content": answer}]
    meta = {"timestamp": event["ts"], "event_id": event["id"], "feedback_day": day, "kind": event["kind"]}
    if model_version is not None:
        meta["model_version"] = model_version
    if rejected is not None:
        meta["rejected"] = conversation[:-1] + [{"role": "assistant", "content": rejected}]
    origin = event.get("_origin", {})
    return {
        "id": record_id(conversation),
        "messages": conversation,
        # one prompt is one family: it never straddles the split, whichever days it was asked on
        "group": f"feedback:{prompt_key(conversation)[:16]}",
        "source": SOURCE,
        "origin": {"file": origin.get("key"), "line": origin.get("line"), "format": kind, "partition": day},
        "meta": meta,
    }


def _same(a: str, b: str) -> bool:
    return normalize_text(a) == normalize_text(b)


def day_examples(day: str, events: list[dict], earlier_interactions: dict[str, dict]) -> DayExamples:
    """Training examples from one day's events; `feedback` finds its interaction in the day or in `earlier_interactions`."""
    interactions = {**earlier_interactions, **{e["id"]: e for e in events if e["kind"] == "interaction"}}
    out = DayExamples()
    for event in events:
        kind = event["kind"]
        if kind == "interaction":
            out.outcomes["interaction"] += 1
        elif kind == "feedback":
            served = interactions.get(event["interaction_id"])
            correction = (event.get("correction") or "").strip()
            if served is None:
                out.outcomes["orphan_feedback"] += 1  # its interaction is in no day read: counted, never guessed
            elif not correction:
                out.outcomes["rating_only"] += 1
            else:
                version = str(served["model"]["version"])
                out.sft.append(_record(day, event, served["messages"], correction, "feedback_correction", model_version=version))
                if _same(correction, served["response"]):
                    out.outcomes["correction_equals_response"] += 1
                else:
                    out.pairs.append(_record(day, event, served["messages"], correction, "correction_pair",
                                             rejected=served["response"], model_version=version))
                    out.outcomes["correction_and_pair"] += 1
        else:
            if event["winner"] == "tie":
                out.outcomes["comparison_tie"] += 1
                continue
            win, lose = (event["a"], event["b"]) if event["winner"] == "a" else (event["b"], event["a"])
            if _same(win["response"], lose["response"]):
                out.outcomes["comparison_identical"] += 1
                continue
            out.pairs.append(_record(day, event, event["messages"], win["response"], "comparison_pair",
                                     rejected=lose["response"], model_version=str(win["model"]["version"])))
            out.outcomes["comparison_pair"] += 1
    return out


def pair_prompt_turns(pair: Record) -> int:
    return sum(1 for m in pair["messages"] if m["role"] == "user")


def as_dpo_row(pair: Record) -> dict:
    """A curated pair in the DPO stage's file shape (prompt, chosen, rejected, source family)."""
    return {"prompt": pair["messages"][-2]["content"], "chosen": pair["messages"][-1]["content"],
            "rejected": pair["meta"]["rejected"][-1]["content"], "source": pair["group"], "id": pair["id"]}
