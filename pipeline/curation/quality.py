"""Quality filters as curation blocks: repetition (datatrove's Gopher rules), garbage characters, prompt echoes."""

from __future__ import annotations

import unicodedata

from datatrove.data import Document
from datatrove.pipeline.filters import GopherRepetitionFilter

from pipeline.curation.records import Record, normalize_text
from pipeline.recipe import QualityRecipe

Dropped = tuple[Record, str]


def drop_repetitive(records: list[Record], quality: QualityRecipe) -> tuple[list[Record], list[Dropped]]:
    """Drop records whose answer or prompt fails a Gopher repetition rule; the reason names the rule."""
    gopher = GopherRepetitionFilter(dup_line_frac=quality.max_duplicate_line_share,
                                    dup_n_grams=tuple((n, quality.max_duplicate_ngram_char_share) for n in (5, 6, 7, 8, 9, 10)),
                                    top_n_grams=((2, quality.max_top_ngram_char_share), (3, quality.max_top_ngram_char_share)))
    kept, dropped = [], []
    for rec in records:
        verdict = True
        for m in rec["messages"]:
            # short turns are one-liners: repetition ratios on a handful of words are noise
            if len(m["content"].split()) < quality.repetition_min_words:
                continue
            verdict = gopher.filter(Document(text=m["content"], id=rec["id"]))
            if verdict is not True:
                break
        if verdict is True:
            kept.append(rec)
        else:
            dropped.append((rec, f"repetition:{verdict[1] if isinstance(verdict, tuple) else 'gopher'}"))
    return kept, dropped


def garbage_share(text: str) -> float:
    """Share of characters that are control, unassigned, private-use or replacement characters."""
    if not text:
        return 0.0
    bad = sum(1 for c in text if c == "\ufffd" or (unicodedata.category(c)[0] == "C" and c not in "\n\t\r"))
    return bad / len(text)


def drop_garbage(records: list[Record], quality: QualityRecipe) -> tuple[list[Record], list[Dropped]]:
    kept, dropped = [], []
    for rec in records:
        worst = max(garbage_share(m["content"]) for m in rec["messages"])
        (dropped.append((rec, "garbage_characters")) if worst > quality.max_garbage_share else kept.append(rec))
    return kept, dropped


def drop_prompt_echoes(records: list[Record], quality: QualityRecipe) -> tuple[list[Record], list[Dropped]]:
    """Drop records whose final answer only repeats the prompt before it (whole prompt, up to case and spacing)."""
    kept, dropped = [], []
    for rec in records:
        answer = normalize_text(rec["messages"][-1]["content"])
        prompt = normalize_text(rec["messages"][-2]["content"]) if len(rec["messages"]) > 1 else ""
        echo = bool(prompt) and (answer == prompt or (len(prompt) >= quality.echo_min_chars and prompt in answer))
        (dropped.append((rec, "echoes_prompt")) if echo else kept.append(rec))
    return kept, dropped
