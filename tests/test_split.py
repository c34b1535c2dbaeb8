"""The split is seeded, grouped and clean."""

from pipeline.curation.split import grouped_split, overlap
from pipeline.curation.steps import DEFAULT_STEPS, read_sources, run_steps
from pipeline.recipe import DataRecipe


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
