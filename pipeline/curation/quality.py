"""Quality filters as curation blocks: repetition (datatrove's Gopher rules), garbage characters, prompt echoes,
and length bounds in tokens of the base model's tokenizer."""

from __future__ import annotations

import unicodedata

import re
from collections.abc import Callable

from datatrove.pipeline.filters.gopher_repetition_filter import (find_all_duplicate, find_duplicates,
                                                                 find_top_duplicate, get_n_grams)

from pipeline.curation.records import Record, normalize_text
from pipeline.recipe import QualityRecipe

Dropped = tuple[Record, str]


_WORD = re.compile(r"\w+")
_LINES = re.compile(r"\n+")


def repetition_rule(text: str, quality: QualityRecipe) -> str | None:
    """The first Gopher repetition rule `text` breaks, or None. datatrove's counting functions, with a regex
    word split instead of spaCy's (the ratios barely move, the cost drops tenfold)."""
    lines = [line for line in _LINES.split(text.strip()) if line.strip()]
    duplicate_lines, _ = find_duplicates(lines)
    if lines and duplicate_lines / len(lines) > quality.max_duplicate_line_share:
        return "dup_line_frac"
    words = _WORD.findall(text)
    for n in (2, 3):
        grams = get_n_grams(words, n)
        if grams and find_top_duplicate(grams) / len(text) > quality.max_top_ngram_char_share:
            return f"top_{n}_gram"
    for n in (5, 6, 7, 8, 9, 10):
        if find_all_duplicate(words, n) / len(text) > quality.max_duplicate_ngram_char_share:
            return f"duplicated_{n}_n_grams"
    return None


def drop_repetitive(records: list[Record], quality: QualityRecipe) -> tuple[list[Record], list[Dropped]]:
    """Drop records with a turn that breaks a Gopher repetition rule; the reason names the rule."""
    kept, dropped = [], []
    for rec in records:
        # short turns are one-liners: repetition ratios on a handful of words are noise
        rules = (repetition_rule(m["content"], quality) for m in rec["messages"]
                 if len(m["content"].split()) >= quality.repetition_min_words)
        rule = next((r for r in rules if r), None)
        (dropped.append((rec, f"repetition:{rule}")) if rule else kept.append(rec))
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


def drop_by_token_length(records: list[Record], count_tokens: Callable[[Record], int],
                         quality: QualityRecipe) -> tuple[list[Record], list[Dropped]]:
    """Drop conversations shorter than min_tokens or longer than max_tokens (rendered with the chat template)."""
    kept, dropped = [], []
    for rec in records:
        n = count_tokens(rec)
        if n < quality.min_tokens:
            dropped.append((rec, "too_few_tokens"))
        elif n > quality.max_tokens:
            dropped.append((rec, "too_many_tokens"))
        else:
            kept.append(rec)
    return kept, dropped
