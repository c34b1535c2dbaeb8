"""Feedback goes through the seed data's curation: dedup against the seeds, scrubbing of both sides of a pair,
a time split that holds out the latest days, and DPO rows without held-out or seed copies."""

import json

from pipeline.curation.steps import curation_steps, run_steps
from pipeline.feedback.curate import curate_day
from pipeline.feedback.examples import DayExamples, day_examples
from pipeline.feedback.synthetic import load_packages
from pipeline.feedback.window import feedback_dpo_rows, heldout_from_latest, seeds_and_feedback_split
from pipeline.recipe import DataRecipe, FeedbackRecipe

DAYS = ["2026-11-20", "2026-11-21", "2026-11-22"]


def seeds() -> list[dict]:
    from pipeline.curation.steps import read_sources

    return read_sources(DataRecipe()).records


def correction_events(day: str, prompt: str, served: str, correction: str, n: int) -> list[dict]:
    messages = [{"role": "user", "content": prompt}]
    return [{"kind": "interaction", "id": f"i-{day}-{n}", "ts": f"{day}T10:00:00.000Z", "messages": messages,
             "response": served, "model": {"version": "3"}},
            {"kind": "feedback", "id": f"f-{day}-{n}", "ts": f"{day}T10:01:00.000Z", "interaction_id": f"i-{day}-{n}",
             "rating": -1, "correction": correction}]


def feedback_records(seed_records: list[dict]) -> list[dict]:
    """Per day, three fresh prompts, and on the first day one exact copy of a seed example."""
    packages = load_packages()
    records = []
    for d, day in enumerate(DAYS):
        events = []
        for n in range(3):
            pkg = packages[d * 3 + n]
            events += correction_events(day, f"Write the one-line summary of this Debian package from its description.\n\n"
                                        f"{pkg['description']}", pkg["weak_summary"], pkg["summary"], n)
        if d == 0:
            copy = seed_records[0]["messages"]
            events += correction_events(day, copy[-2]["content"], "wrong", copy[-1]["content"], 9)
        records += day_examples(day, events, {}).sft
    return records


def test_a_feedback_copy_of_a_seed_is_the_one_dropped_and_the_latest_day_is_held_out():
    seed_records = seeds()
    feedback = feedback_records(seed_records)
    kept, reports = run_steps(seed_records + feedback, curation_steps(DataRecipe()))
    dedup = {r.name: r for r in reports}["exact_dedup"]
    assert [rec["source"] for rec, _ in dedup.dropped_records if rec["source"] == "feedback"] == ["feedback"]
    assert seed_records[0]["id"] in {r["id"] for r in kept}
    start = heldout_from_latest(kept, FeedbackRecipe(heldout_days=1).heldout_days)
    assert start == DAYS[-1]
    split = seeds_and_feedback_split(kept, DataRecipe(), start)
    held_feedback = [r for r in split.heldout if r["source"] == "feedback"]
    assert {r["meta"]["feedback_day"] for r in held_feedback} == {DAYS[-1]} and len(held_feedback) == 3
    assert all(r["meta"]["feedback_day"] < DAYS[-1] for r in split.train if r["source"] == "feedback")
    assert not {r["group"] for r in split.train} & {r["group"] for r in split.heldout}
    assert split.heldout[1]["source"] == "feedback"  # interleaved, so a capped evaluation scores both kinds


def test_both_sides_of_a_pair_are_scrubbed_and_counted():
    events = correction_events(DAYS[0], "Summarise: mail me at jane.doe@example.org about zlib compression",
                               "call 415-555-0100 now", "zlib compression library, contact jane.doe@example.org", 1)
    made = day_examples(DAYS[0], events, {})
    curated = curate_day(made, DataRecipe(), FeedbackRecipe())
    (pair,) = curated.pairs
    text = json.dumps(pair)
    assert "jane.doe" not in text and "415-555-0100" not in text and "<PHONE>" in pair["meta"]["rejected"][-1]["content"]
    assert curated.scrubbed["EMAIL"] >= 3 and curated.scrubbed["PHONE"] == 1


def test_dpo_rows_leave_out_held_out_families_and_copies_of_seed_pairs():
    pairs, packages = DayExamples(), load_packages()
    for n, day in enumerate(DAYS):
        events = correction_events(day, packages[n]["description"], packages[n]["weak_summary"], packages[n]["summary"], n)
        pairs.pairs += day_examples(day, events, {}).pairs
    heldout = [p for p in pairs.pairs if p["meta"]["feedback_day"] == DAYS[-1]]
    seed_row = {"prompt": packages[0]["description"], "chosen": packages[0]["summary"],
                "rejected": packages[0]["weak_summary"], "source": "x"}
    rows, dropped = feedback_dpo_rows(pairs.pairs, [seed_row], heldout, [], DataRecipe().near_dup)
    assert [r["chosen"] for r in rows] == [packages[1]["summary"]]
    assert dropped == {"heldout_family": 1, "duplicate_of_seed_pair": 1}


def test_the_dpo_stage_reads_the_seed_pairs_plus_the_windows_clean_pairs(tmp_path):
    from assets.training import preference_file
    from pipeline.paths import resolve
    from pipeline.recipe import Recipe

    packages, window_pairs = load_packages(), []
    for n, day in enumerate(DAYS):
        events = correction_events(day, packages[n]["description"], packages[n]["weak_summary"], packages[n]["summary"], n)
        window_pairs += day_examples(day, events, {}).pairs
    heldout = [p for p in window_pairs if p["meta"]["feedback_day"] == DAYS[-1]]
    settings = Recipe()
    path, books = preference_file(settings, {"pairs": window_pairs}, heldout, tmp_path)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    seed_rows = len(resolve(settings.dpo.preferences_path).read_text().splitlines())
    assert len(rows) == seed_rows + 2 and books["feedback_pairs"] == 2 and books["feedback_pairs_in"] == 3
    assert preference_file(settings, None, heldout, tmp_path)[0] == resolve(settings.dpo.preferences_path)  # seeds only
