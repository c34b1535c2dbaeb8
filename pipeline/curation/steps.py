"""Curation blocks. Each takes records and returns the kept ones plus the dropped ones with a reason.

A step is added by writing one block; `run_steps` chains them and keeps the books, so that
records in = kept + dropped per reason holds for every step.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.curation.formats import MalformedRecord, normalise, rejected_of
from pipeline.curation.near_dup import drop_near_duplicates
from pipeline.curation.pii import scrub_text
from pipeline.curation.quality import drop_by_token_length, drop_garbage, drop_prompt_echoes, drop_repetitive
from pipeline.curation.readers import read_any
from pipeline.curation.records import Record, content_key, record_id
from pipeline.recipe import DataRecipe, SourceSpec
from pipeline.paths import resolve

Dropped = tuple[Record, str]
Step = Callable[[list[Record]], tuple[list[Record], list[Dropped]]]


@dataclass
class StepReport:
    name: str
    records_in: int
    kept: int
    dropped: Counter = field(default_factory=Counter)
    examples: list[dict] = field(default_factory=list)  # a few dropped records, to show in the UI
    dropped_records: list[Dropped] = field(default_factory=list, repr=False)
    seconds: float = 0.0

    def balanced(self) -> bool:
        return self.records_in == self.kept + sum(self.dropped.values())


def run_steps(records: list[Record], steps: Iterable[tuple[str, Step]], examples_per_step: int = 3) -> tuple[list[Record], list[StepReport]]:
    reports = []
    for name, step in steps:
        start = time.perf_counter()
        kept, dropped = step(records)
        report = StepReport(name, len(records), len(kept), Counter(reason for _, reason in dropped), dropped_records=dropped,
                            seconds=time.perf_counter() - start)
        report.examples = [{"id": rec.get("id"), "reason": reason, "detail": _detail(rec)} for rec, reason in dropped[:examples_per_step]]
        if not report.balanced():
            raise AssertionError(f"step {name} lost records: {report}")
        reports.append(report)
        records = kept
    return records, reports


def _detail(rec: Record) -> str:
    meta = rec.get("meta", {})
    return f"near-duplicate of {meta['near_duplicate_of']}" if "near_duplicate_of" in meta else ""


# --- reading and normalising -------------------------------------------------------------------

@dataclass
class ReadResult:
    records: list[Record]
    quarantined: list[dict]  # {"file", "line", "reason", "detail", "raw"}
    lines_read: int

    @property
    def quarantine_share(self) -> float:
        return len(self.quarantined) / self.lines_read if self.lines_read else 0.0


RAW_CONTENT_KEYS = ("instruction", "input", "output", "system", "conversations", "messages", "prompt", "chosen", "rejected")


def read_sources(recipe: DataRecipe) -> ReadResult:
    """Read and normalise every configured source; malformed lines are quarantined with file, line and reason."""
    records, quarantined, lines = [], [], 0
    names = Counter(Path(s.path.rstrip("/")).name for s in recipe.sources)
    for source in recipe.sources:
        path = resolve(source.path)
        # two sources of one name (a/train.jsonl, b/train.jsonl) are told apart by their configured paths
        label = Path(source.path.rstrip("/")).name if names[Path(source.path.rstrip("/")).name] == 1 else source.path.rstrip("/")
        for raw in read_any(path, label):
            lines += 1
            where = {"file": raw.file, "line": raw.line}
            if raw.error:
                quarantined.append({**where, "reason": raw.error, "detail": raw.detail, "raw": None})
                continue
            try:
                shape, messages = normalise(raw.value, source.format)
                rejected = rejected_of(raw.value) if shape == "preference" else None
                size = sum(len(m["content"]) for m in messages)
                if size > recipe.max_chars:
                    raise MalformedRecord("oversize", f"{size} characters > max_chars {recipe.max_chars}")
            except MalformedRecord as e:
                quarantined.append({**where, "reason": e.reason, "detail": e.detail, "raw": raw.value})
                continue
            meta = {k: v for k, v in raw.value.items() if k not in RAW_CONTENT_KEYS}
            if rejected is not None:
                meta["rejected"] = rejected
            rid = record_id(messages)
            group = meta.get(recipe.group_key)
            records.append({
                "id": rid,
                "messages": messages,
                "group": str(group) if group not in (None, "") else rid,
                "source": str(Path(source.path).name),
                "origin": {**where, "format": shape},
                "meta": meta,
            })
    return ReadResult(records, quarantined, lines)


def read_golden(recipe: DataRecipe) -> list[Record]:
    """The frozen golden eval set as canonical records (empty when none is configured); it never enters train."""
    if not recipe.golden_path:
        return []
    return read_sources(recipe.model_copy(update={"sources": [SourceSpec(path=recipe.golden_path)]})).records


# --- cleaning blocks -------------------------------------------------------------------------

def scrub_pii(records: list[Record]) -> tuple[list[Record], list[Dropped]]:
    """Replace PII and secrets with typed placeholders (<EMAIL>, <AWS_ACCESS_KEY>, ...); nothing is dropped,
    counts per type go to `meta["scrubbed"]`."""
    out = []
    for rec in records:
        messages, found = scrub_messages(rec["messages"])
        out.append({**rec, "messages": messages, "meta": {**rec["meta"], "scrubbed": dict(found)}} if found else rec)
    return out, []


def scrub_messages(messages: list[dict[str, str]]) -> tuple[list[dict[str, str]], Counter]:
    """Each turn with its PII and secrets replaced, and the replacements per type."""
    found: Counter = Counter()
    scrubbed = []
    for m in messages:
        text, counts = scrub_text(m["content"])
        found += counts
        scrubbed.append({**m, "content": text})
    return scrubbed, found


def keep_first_by_key(records: list[Record], key: Callable[[Record], str],
                      seen: set[str] | None = None) -> tuple[list[Record], list[Dropped]]:
    """Keep the first record of each key (input order is deterministic); `seen` holds keys kept earlier."""
    seen = set() if seen is None else seen
    kept, dropped = [], []
    for rec in records:
        k = key(rec)
        if k in seen:
            dropped.append((rec, "exact_duplicate"))
        else:
            seen.add(k)
            kept.append(rec)
    return kept, dropped


def drop_exact_duplicates(records: list[Record]) -> tuple[list[Record], list[Dropped]]:
    """Keep the first record of each normalised-text hash."""
    return keep_first_by_key(records, lambda rec: content_key(rec["messages"]))


def curation_steps(recipe: DataRecipe, count_tokens: Callable[[Record], int] | None = None) -> list[tuple[str, Step]]:
    """The cleaning blocks in order; near-duplicates last, so cheap exact matches never reach MinHash.
    With `count_tokens` (the base model's tokenizer), token-length bounds apply too."""
    def near_dedup(records: list[Record]) -> tuple[list[Record], list[Dropped]]:
        if recipe.near_dup.engine == "datatrove":
            from pipeline.curation.datatrove_minhash import drop_near_duplicates_with_datatrove

            result = drop_near_duplicates_with_datatrove(records, recipe.near_dup)
        else:
            result = drop_near_duplicates(records, recipe.near_dup)
        return result.kept, result.dropped

    return [
        ("scrub_pii", scrub_pii),
        ("garbage_filter", lambda records: drop_garbage(records, recipe.quality)),
        ("repetition_filter", lambda records: drop_repetitive(records, recipe.quality)),
        ("prompt_echo_filter", lambda records: drop_prompt_echoes(records, recipe.quality)),
        *([("token_length_filter", lambda records: drop_by_token_length(records, count_tokens, recipe.quality))]
          if count_tokens else []),
        ("exact_dedup", drop_exact_duplicates),
        ("near_dedup", near_dedup),
    ]


DEFAULT_STEPS: list[tuple[str, Step]] = curation_steps(DataRecipe())
