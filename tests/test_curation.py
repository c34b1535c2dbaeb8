"""Reading the demo sources, quarantine, scrubbing and exact deduplication."""

import gzip
import json

from pipeline.curation.records import content_key
from pipeline.curation.steps import DEFAULT_STEPS, drop_exact_duplicates, read_sources, run_steps, scrub_pii
from pipeline.curation.near_dup import drop_near_duplicates
from pipeline.recipe import DataRecipe, NearDupRecipe, SourceSpec


def _record(text: str, answer: str = "An answer") -> dict:
    messages = [{"role": "user", "content": text}, {"role": "assistant", "content": answer}]
    return {"id": text, "messages": messages, "group": text, "source": "t", "origin": {}, "meta": {}}


def _non_blank_lines(path) -> int:
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def test_demo_sources_read_with_every_malformed_line_quarantined():
    from pipeline.paths import resolve

    recipe = DataRecipe()
    result = read_sources(recipe)
    # counted from the files themselves, not from the reader's own tally
    assert len(result.records) + len(result.quarantined) == sum(_non_blank_lines(resolve(s.path)) for s in recipe.sources)
    reasons = {q["reason"] for q in result.quarantined}
    assert {"invalid_json", "empty_assistant", "wrong_type", "not_an_object", "missing_turn"} <= reasons
    assert all(q["file"] and q["line"] > 0 for q in result.quarantined)
    assert {r["origin"]["format"] for r in result.records} == {"alpaca", "sharegpt", "chatml"}


def test_bad_bytes_and_bad_json_are_quarantined_not_raised(tmp_path):
    path = tmp_path / "mixed.jsonl.gz"
    good = json.dumps({"instruction": "Summarise", "output": "ok"}).encode()
    with gzip.open(path, "wb") as f:
        f.write(good + b"\n\xff\xfe broken\n{not json\n\n" + good + b"\n")
    result = read_sources(DataRecipe(sources=[SourceSpec(path=str(path))]))
    assert [q["reason"] for q in result.quarantined] == ["invalid_utf8", "invalid_json"]
    assert [q["line"] for q in result.quarantined] == [2, 3]
    assert len(result.records) == 2


def test_oversize_records_are_quarantined(tmp_path):
    path = tmp_path / "big.jsonl"
    path.write_text(json.dumps({"instruction": "x" * 500, "output": "ok"}) + "\n")
    result = read_sources(DataRecipe(sources=[SourceSpec(path=str(path))], max_chars=100))
    assert [q["reason"] for q in result.quarantined] == ["oversize"]


def test_emails_are_replaced_by_a_placeholder():
    kept, dropped = scrub_pii([_record("Contact jane.doe@example.org or <bob+x@lists.debian.org>.")])
    assert not dropped
    assert kept[0]["messages"][0]["content"] == "Contact <EMAIL> or <<EMAIL>>."
    assert kept[0]["meta"]["scrubbed"] == {"EMAIL": 2}


def test_exact_duplicates_differing_in_case_and_spacing_are_dropped_once():
    records = [_record("Some  Text"), _record("some text"), _record("other text")]
    kept, dropped = drop_exact_duplicates(records)
    assert [r["id"] for r in kept] == ["Some  Text", "other text"]
    assert [reason for _, reason in dropped] == ["exact_duplicate"]


def test_every_record_is_kept_or_dropped_exactly_once_on_the_demo_data():
    records = read_sources(DataRecipe()).records
    kept, reports = run_steps(records, DEFAULT_STEPS)
    # run_steps checks counts only; the ids say whether the same records came out (none lost, none doubled)
    dropped = [rec["id"] for r in reports for rec, _ in r.dropped_records]
    assert sorted([r["id"] for r in kept] + dropped) == sorted(r["id"] for r in records)
    by_name = {r.name: r for r in reports}
    assert by_name["exact_dedup"].dropped["exact_duplicate"] >= 6  # the sample repeats six examples across shapes on purpose
    assert len({content_key(r["messages"]) for r in kept}) == len(kept)


def _words(n: int, seed: int) -> str:
    import random
    rng = random.Random(seed)
    return " ".join(rng.choice(["alpha", "beta", "gamma", "delta", "omega", "kappa", "sigma", "tau", "rho", "phi",
                                "library", "python", "module", "tool", "data", "file", "server", "client"]) + str(rng.randrange(50))
                    for _ in range(n))


def test_lightly_edited_copies_are_near_duplicates_and_the_first_is_kept():
    text = _words(120, seed=1)
    edited = text.replace(text.split()[10], "changed", 1).replace(text.split()[60], "other", 1) + " extra."
    records = [_record(text), _record(_words(120, seed=2)), _record(edited)]
    result = drop_near_duplicates(records, NearDupRecipe())
    assert [r["id"] for r in result.kept] == [text, records[1]["id"]]
    assert [(r["meta"]["near_duplicate_of"], reason) for r, reason in result.dropped] == [(text, "near_duplicate")]
    assert result.clusters == [[text, edited]]


def _substitute(text: str, positions: range, word: str = "edited") -> str:
    words = text.split()
    for i in positions:
        words[i] = f"{word}{i}"
    return " ".join(words)


def test_a_copy_with_nine_percent_word_edits_is_a_near_duplicate():
    text = _words(100, seed=3)
    words = text.split()
    words[10], words[11] = words[11], words[10]  # a swap: two word edits
    edited = _substitute(" ".join(words), range(40, 47)) + " inserted"  # seven substitutions and an insertion
    result = drop_near_duplicates([_record(text), _record(edited)], NearDupRecipe())
    assert result.clusters == [[text, edited]]


def test_a_copy_below_the_edit_similarity_threshold_is_kept():
    text = _words(100, seed=3)
    edited = _substitute(text, range(0, 100, 4))  # a quarter of the words changed: similarity 0.75
    assert len(drop_near_duplicates([_record(text), _record(edited)], NearDupRecipe()).kept) == 2


def test_a_record_similar_only_to_a_dropped_record_is_kept():
    first = _words(100, seed=4)
    second = _substitute(first, range(0, 30, 2))  # 0.85 to first
    third = _substitute(second, range(1, 31, 2), "again")  # 0.85 to second, 0.70 to first
    result = drop_near_duplicates([_record(first), _record(second), _record(third)], NearDupRecipe())
    assert [r["id"] for r in result.kept] == [first, third]
    assert result.dropped[0][0]["meta"]["near_duplicate_of"] == first


def test_records_sharing_a_long_prompt_but_answering_differently_are_kept():
    prompt = "Write the one-line summary of this Debian package from its description. " + _words(40, seed=5)
    records = [_record(prompt, "Convert number to enum - Rust source code"),
               _record(prompt.replace("alpha", "beta"), "Safe interop between Rust and C++ - Rust source code")]
    assert len(drop_near_duplicates(records, NearDupRecipe()).kept) == 2
    assert len(drop_near_duplicates(records, NearDupRecipe(min_answer_similarity=0)).kept) == 1


def test_jaccard_measure_confirms_candidates_by_estimated_shingle_similarity():
    text = _words(120, seed=1)
    edited = text.replace(text.split()[10], "changed", 1) + " extra."
    config = NearDupRecipe(similarity="jaccard", shingle_size=2, bands=14, rows=8)
    records = [_record(text), _record(_words(120, seed=2)), _record(edited)]
    assert drop_near_duplicates(records, config).clusters == [[text, edited]]


def test_a_boilerplate_family_costs_at_most_max_candidates_checks_per_record(monkeypatch):
    from pipeline.curation.near_dup import MinhashIndex

    calls = []
    similarity = MinhashIndex.similarity
    monkeypatch.setattr(MinhashIndex, "similarity", lambda self, a, b: calls.append((a, b)) or similarity(self, a, b))
    prompt = _words(60, seed=6)
    records = [_record(prompt, f"answer number {i} " + _words(6, seed=100 + i)) for i in range(200)]
    result = drop_near_duplicates(records, NearDupRecipe(max_candidates=5))
    assert len(result.kept) == 200  # same prompt, different answers
    assert len(calls) <= 5 * len(records)


def test_unrelated_texts_sharing_boilerplate_are_kept():
    boiler = "This package contains the source for the Rust {} crate, packaged by debcargo for use with cargo."
    records = [_record(boiler.format(name), answer) for name, answer in
               [("enumn", "Convert number to enum"), ("memmap", "Cross-platform API for memory-mapped file IO")]]
    assert len(drop_near_duplicates(records, NearDupRecipe()).kept) == 2


def test_datatrove_pipeline_engine_finds_the_same_clear_cluster():
    from pipeline.curation.datatrove_minhash import drop_near_duplicates_with_datatrove

    text = _words(120, seed=1)
    edited = text.replace(text.split()[10], "changed", 1) + " extra."
    records = [_record(text), _record(_words(120, seed=2)), _record(edited)]
    # no similarity check in datatrove's pipeline: bands x rows set for the threshold, not for candidates
    config = NearDupRecipe(engine="datatrove", shingle_size=2, bands=14, rows=8)
    result = drop_near_duplicates_with_datatrove(records, config)
    assert [r["id"] for r in result.kept] == [text, records[1]["id"]]
    assert result.clusters == [[text, edited]]
