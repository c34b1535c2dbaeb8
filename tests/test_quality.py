"""Quality filters drop what they should and name the rule that dropped it."""

from pipeline.curation.quality import drop_garbage, drop_prompt_echoes, drop_repetitive
from pipeline.recipe import QualityRecipe

DESCRIPTION = ("This library parses configuration files written in a small declarative language and exposes "
               "the settings to programs through a typed interface, with validation and helpful error messages "
               "for every mistake it finds in the input, including the line and column where it happened.")


def _record(prompt: str, answer: str, rid: str = "r") -> dict:
    return {"id": rid, "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}],
            "group": rid, "source": "t", "origin": {}, "meta": {}}


def test_a_turn_repeating_its_lines_is_dropped_with_the_gopher_rule_named():
    spam = "\n".join(["Buy the best library now, it is the best library."] * 12)
    kept, dropped = drop_repetitive([_record(DESCRIPTION, "Config parser"), _record(spam, "x", "spam")], QualityRecipe())
    assert [r["id"] for r in kept] == ["r"]
    assert [(r["id"], reason.split(":")[0]) for r, reason in dropped] == [("spam", "repetition")]
    assert dropped[0][1] != "repetition:gopher"  # the specific rule is named


def test_control_and_replacement_characters_over_the_limit_are_dropped():
    noisy = DESCRIPTION[:100] + "\x00\x01\x02\ufffd\ufffd" * 3
    kept, dropped = drop_garbage([_record(DESCRIPTION, "ok"), _record(noisy, "ok", "noisy")], QualityRecipe())
    assert [r["id"] for r in kept] == ["r"]
    assert [reason for _, reason in dropped] == ["garbage_characters"]


def test_an_answer_that_only_repeats_the_prompt_is_dropped_but_a_quoted_phrase_is_not():
    records = [_record(DESCRIPTION, DESCRIPTION.upper(), "echo"),
               _record(DESCRIPTION, "Parser for a small declarative configuration language", "fine")]
    kept, dropped = drop_prompt_echoes(records, QualityRecipe())
    assert [r["id"] for r in kept] == ["fine"]
    assert [(r["id"], reason) for r, reason in dropped] == [("echo", "echoes_prompt")]


def test_token_length_bounds_drop_both_ends_and_name_the_side():
    from pipeline.curation.quality import drop_by_token_length

    records = [_record("hi", "yo", "short"), _record(DESCRIPTION, "Config parser", "ok"), _record(DESCRIPTION * 5, "x", "long")]
    count = lambda rec: sum(len(m["content"].split()) for m in rec["messages"])  # noqa: E731 - a stand-in tokenizer
    kept, dropped = drop_by_token_length(records, count, QualityRecipe(min_tokens=5, max_tokens=100))
    assert [r["id"] for r in kept] == ["ok"]
    assert [(r["id"], reason) for r, reason in dropped] == [("short", "too_few_tokens"), ("long", "too_many_tokens")]
