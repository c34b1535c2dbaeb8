"""Contamination report: word n-gram overlap of each evaluation set with the training data actually used.

Text is lower-cased and split into alphanumeric words, as lm-eval's decontamination does; an example's overlap is
the share of its n-grams that also occur anywhere in the training text.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

from pipeline.curation.records import Record

_WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    w = words(text)
    return {tuple(w[i : i + n]) for i in range(len(w) - n + 1)}


def record_text(record: Record) -> str:
    """Every turn of a chat record, plus a preference pair's rejected answer when it has one."""
    parts = [m["content"] for m in record.get("messages", [])]
    rejected = (record.get("meta") or {}).get("rejected")
    if isinstance(rejected, str):
        parts.append(rejected)
    return "\n".join(parts)


def training_ngrams(texts: Iterable[str], n: int) -> set[tuple[str, ...]]:
    grams: set[tuple[str, ...]] = set()
    for text in texts:
        grams |= ngrams(text, n)
    return grams


def overlap_report(eval_sets: dict[str, list[tuple[str, str]]], train_grams: set[tuple[str, ...]], n: int,
                   max_overlap: float, worst: int = 5) -> dict[str, Any]:
    """Per eval set (name -> [(example id, text)]): examples measured, those too short for one n-gram, mean and
    max overlap, how many exceed `max_overlap`, and the worst examples with their overlap."""
    report = {}
    for name, examples in eval_sets.items():
        rows = []
        for example_id, text in examples:
            grams = ngrams(text, n)
            if not grams:
                continue
            rows.append({"id": example_id, "overlap": len(grams & train_grams) / len(grams), "ngrams": len(grams),
                         "text": text[:240]})
        rows.sort(key=lambda r: -r["overlap"])
        overlaps = [r["overlap"] for r in rows]
        report[name] = {
            "examples": len(examples),
            "too_short": len(examples) - len(rows),
            "mean_overlap": round(sum(overlaps) / len(overlaps), 4) if overlaps else 0.0,
            "max_overlap": round(overlaps[0], 4) if overlaps else 0.0,
            "contaminated": sum(o > max_overlap for o in overlaps),
            "worst": [{**r, "overlap": round(r["overlap"], 4)} for r in rows[:worst]],
        }
    return {"ngram": n, "max_overlap": max_overlap, "sets": report}


def contamination_failures(report: dict[str, Any]) -> list[str]:
    """One reason per eval set with examples above the allowed overlap."""
    failures = []
    for name, s in report["sets"].items():
        if s["contaminated"]:
            top = s["worst"][0]
            failures.append(f"{s['contaminated']} of {s['examples']} {name} examples share more than "
                            f"{report['max_overlap']:.0%} of their {report['ngram']}-grams with the training data "
                            f"(worst {top['id']}: {top['overlap']:.0%})")
    return failures
