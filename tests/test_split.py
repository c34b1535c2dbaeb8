"""The split is seeded, grouped and clean."""

from pipeline.curation.split import grouped_split, leaked_heldout, overlap
from pipeline.curation.steps import DEFAULT_STEPS, read_sources, run_steps
from pipeline.recipe import DataRecipe, NearDupRecipe


def _demo_records():
    return run_steps(read_sources(DataRecipe()).records, DEFAULT_STEPS)[0]


def test_split_is_deterministic_for_a_seed_and_changes_with_it():
    records = _demo_records()
    a, b = grouped_split(records, 0.15, 80, seed=1), grouped_split(records, 0.15, 80, seed=1)
    c = grouped_split(records, 0.15, 80, seed=2)
    assert [r["id"] for r in a.heldout] == [r["id"] for r in b.heldout]
    assert [r["id"] for r in a.heldout] != [r["id"] for r in c.heldout]


def test_families_never_straddle_the_split():
    split = grouped_split(_demo_records(), 0.15, 80, seed=17)
    assert overlap(split.train, split.heldout) == {"shared_ids": 0, "shared_groups": 0, "shared_prompts": 0}
    assert 0.1 <= len(split.heldout) / (len(split.train) + len(split.heldout)) <= 0.2


def test_heldout_respects_its_cap():
    split = grouped_split(_demo_records(), 0.5, 30, seed=17)
    assert len(split.heldout) <= 30


def test_a_train_example_sharing_a_heldout_prompt_is_removed():
    def rec(i, group, prompt):
        return {"id": str(i), "group": group, "messages": [{"role": "user", "content": prompt},
                                                          {"role": "assistant", "content": f"answer {i}"}]}
    records = [rec(i, f"g{i}", f"prompt {i}") for i in range(20)]
    split = grouped_split(records, 0.1, 5, seed=3)
    held_prompt = split.heldout[0]["messages"][0]["content"]
    records.append(rec(99, "other-family", held_prompt.upper()))
    split = grouped_split(records, 0.1, 5, seed=3)
    assert [r["id"] for r in split.decontaminated] == ["99"]


def _edited(rec: dict, marker: str) -> dict:
    """A light edit: one word appended to the prompt, the answer's case changed."""
    messages = [{"role": "user", "content": rec["messages"][0]["content"] + " " + marker},
                {"role": "assistant", "content": rec["messages"][1]["content"].upper()}]
    return {**rec, "id": rec["id"] + "-edited", "group": "planted-" + rec["id"], "messages": messages}


def test_train_near_duplicates_of_heldout_and_golden_are_removed():
    records = _demo_records()
    clean = grouped_split(records, 0.15, 80, seed=17, near_dup=NearDupRecipe())
    planted = [_edited(r, "indeed") for r in clean.heldout[:3]]
    golden = [{**clean.train[0], "id": "golden-0", "group": "golden"}]
    split = grouped_split(records + planted, 0.15, 80, seed=17, near_dup=NearDupRecipe(), golden=golden)
    removed = {r["id"]: r["meta"]["contaminated_by"] for r in split.decontaminated}
    heldout_ids = {r["id"] for r in split.heldout}
    # planted groups are new, so the held-out draw may move; whichever originals stay held out, their copies go
    copies_of_heldout = {p["id"] for p in planted
                         if p["id"].removesuffix("-edited") in heldout_ids and p["id"] not in heldout_ids}
    assert copies_of_heldout and copies_of_heldout <= set(removed)
    assert all(removed[i].startswith("near_duplicate:") or removed[i] == "heldout_prompt" for i in copies_of_heldout)
    assert removed[clean.train[0]["id"]] == "near_duplicate:golden-0"
    assert leaked_heldout(split.train, split.heldout + golden, NearDupRecipe()) == []


def test_leakage_check_blocks_when_heldout_examples_are_planted_in_train():
    import dagster as dg

    from assets.split import no_heldout_near_duplicate_in_train
    from resources import RecipeResource

    split = grouped_split(_demo_records(), 0.15, 80, seed=17, near_dup=NearDupRecipe())
    recipe = RecipeResource()
    passed = no_heldout_near_duplicate_in_train(train_split=split.train, heldout_split=split.heldout, recipe=recipe)
    assert isinstance(passed, dg.AssetCheckResult) and passed.passed
    leaky = split.train + [_edited(r, "really") for r in split.heldout[:2]]
    failed = no_heldout_near_duplicate_in_train(train_split=leaky, heldout_split=split.heldout, recipe=recipe)
    assert not failed.passed
    assert failed.metadata["leaks"].value == 2


def test_time_split_holds_out_what_came_after_the_cutoff_with_its_whole_family():
    from pipeline.curation.split import time_split

    def rec(i, group, when):
        return {"id": str(i), "group": group, "meta": {"timestamp": when} if when else {},
                "messages": [{"role": "user", "content": f"question number {i} about {group}"},
                             {"role": "assistant", "content": f"answer {i}"}]}

    records = [rec(1, "a", "2026-01-01T10:00"), rec(2, "b", "2026-02-01T10:00"), rec(3, "b", "2026-01-05T00:00"),
               rec(4, "c", None), rec(5, "d", "2026-03-01")]
    split = time_split(records, "timestamp", "2026-02-01")
    assert [r["id"] for r in split.heldout] == ["2", "3", "5"]
    assert [r["id"] for r in split.train] == ["1", "4"]
