"""A file of hostile input goes through the whole curation stage: nothing crashes, every bad line is
quarantined with its reason and where it came from, and the good records come through unchanged."""

import json
from collections import Counter
from pathlib import Path

import dagster as dg
import pytest

from pipeline.curation.steps import curation_steps, read_sources, run_steps
from pipeline.recipe import DataRecipe, SourceSpec

GOOD = [
    {"instruction": "Summarise this package.", "input": "A tool that renders maps from tiles in the terminal.",
     "output": "terminal map renderer"},
    {"conversations": [{"from": "human", "value": "What does libfoo-dev contain?"},
                       {"from": "gpt", "value": "The headers and static library of libfoo."}]},
    {"messages": [{"role": "system", "content": "You are terse."},
                  {"role": "user", "content": "Name the package that provides the ls command."},
                  {"role": "assistant", "content": "coreutils"},
                  {"role": "user", "content": "And the one that provides grep?"},
                  {"role": "assistant", "content": "grep"}]},
]
BAD = [  # (raw line bytes, expected reason)
    (b'{"instruction": "unterminated', "invalid_json"),
    (b'{"instruction": "caf\xe9", "output": "x"}', "invalid_utf8"),
    (b'[1, 2, 3]', "not_an_object"),
    (b'{"instruction": 42, "output": "x"}', "wrong_type"),
    (b'{"messages": "not a list"}', "wrong_type"),
    (b'{"messages": [{"role": "user", "content": "only a question"}]}', "missing_turn"),
    (b'{"instruction": "Summarise", "output": "   "}', "empty_assistant"),
    (b'{"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}]}', "role_order"),
    (b'{"conversations": [{"from": "alien", "value": "hi"}, {"from": "gpt", "value": "yo"}]}', "unknown_role"),
    (b'{"text": "no known shape"}', "unknown_format"),
    (json.dumps({"instruction": "x" * 30_000, "output": "too long"}).encode(), "oversize"),
    (json.dumps({"instruction": "y" * (2 << 20), "output": "huge line"}).encode(), "oversize"),
    (b'{"prompt": "Summarise zlib", "chosen": "compression library"}', "missing_turn"),
    (b'{"prompt": "Summarise zlib", "chosen": "compression library", "rejected": ""}', "rejected_empty_assistant"),
]
PAIR = {"prompt": "Summarise the package that ships the bash shell.", "chosen": "GNU Bourne Again SHell",
        "rejected": "a text editor"}


def test_hostile_file_is_quarantined_line_by_line_and_good_records_pass_unchanged(tmp_path):
    path = tmp_path / "hostile.jsonl"
    lines = [json.dumps(g).encode() for g in GOOD[:2]] + [raw for raw, _ in BAD] + [json.dumps(GOOD[2]).encode(), json.dumps(PAIR).encode()]
    path.write_bytes(b"\n".join(lines) + b"\n")
    recipe = DataRecipe(sources=[SourceSpec(path=str(path))], max_chars=20_000)

    read = read_sources(recipe)
    kept, reports = run_steps(read.records, curation_steps(recipe))

    assert [(q["line"], q["reason"]) for q in read.quarantined] == [(3 + i, reason) for i, (_, reason) in enumerate(BAD)]
    assert all(q["file"] == "hostile.jsonl" and q["detail"] for q in read.quarantined)
    assert len(read.records) + len(read.quarantined) == len(lines)  # every line written comes out once
    dropped = [rec["id"] for r in reports for rec, _ in r.dropped_records]
    assert sorted([r["id"] for r in kept] + dropped) == sorted(r["id"] for r in read.records)
    assert [r["origin"]["format"] for r in kept] == ["alpaca", "sharegpt", "chatml", "preference"]
    assert kept[3]["messages"][-1]["content"] == PAIR["chosen"]
    assert kept[3]["meta"]["rejected"][-1] == {"role": "assistant", "content": PAIR["rejected"]}
    assert kept[0]["messages"] == [{"role": "user", "content": GOOD[0]["instruction"] + "\n\n" + GOOD[0]["input"]},
                                   {"role": "assistant", "content": GOOD[0]["output"]}]
    assert kept[1]["messages"] == [{"role": "user", "content": "What does libfoo-dev contain?"},
                                   {"role": "assistant", "content": "The headers and static library of libfoo."}]
    assert kept[2]["messages"] == GOOD[2]["messages"]


def test_the_ui_books_balance_from_raw_lines_to_kept_records(tmp_path, tiny_model_dir):
    from assets.curation import deduped_examples
    from assets.feedback import feedback_partitions
    from assets.model import base_model
    from assets.sources import read_seed_sources
    from pipeline.recipe import Recipe
    from resources import Bucket, BucketJsonIOManager, RecipeResource

    path = tmp_path / "hostile.jsonl"
    path.write_bytes(b"\n".join([json.dumps(g).encode() for g in GOOD * 2] + [raw for raw, _ in BAD]) + b"\n")
    recipe = Recipe(data=DataRecipe(sources=[SourceSpec(path=str(path))], max_quarantine_share=1.0, golden_path=None),
                    base_model={"path": str(tiny_model_dir), "name": "tiny-llama"})
    bucket = Bucket(root=str(tmp_path / "store"))
    # no feedback window was ever built: deduped_examples reads its optional input as "seed data only"
    window = dg.AssetSpec("feedback_window", partitions_def=feedback_partitions(recipe.feedback))
    result = dg.materialize([read_seed_sources, base_model, deduped_examples, window], instance=dg.DagsterInstance.ephemeral(),
                            resources={"recipe": RecipeResource.of(recipe), "bucket": bucket,
                                       "io_manager": BucketJsonIOManager(bucket=bucket)})
    rows = [r.data for r in result.asset_materializations_for_node("deduped_examples")[0].metadata["steps"].value.records]
    steps = rows[:-1]
    # each step starts from what the one before kept: the table is one chain, not independent rows
    assert [row["in"] for row in steps[1:]] == [row["kept"] for row in steps[:-1]]
    assert "token_length_filter" in [row["step"] for row in rows]
    assert sum(row["dropped"] for row in steps) == rows[-1]["dropped"] == 6 - 3  # GOOD twice: three exact duplicates
    total = rows[-1]
    assert (total["step"], total["in"], total["quarantined"], total["kept"]) == ("total", 6 + len(BAD), len(BAD), 3)


def _read_hostile(tmp_path: Path, max_quarantine_share: float) -> tuple[dg.ExecuteInProcessResult, Path]:
    """Materialize the two source assets from one file of good and hostile lines (lines 1-2 good, then BAD)."""
    from assets.sources import read_seed_sources
    from pipeline.recipe import Recipe
    from resources import Bucket, BucketJsonIOManager, RecipeResource

    path = tmp_path / "hostile.jsonl"
    path.write_bytes(b"\n".join([json.dumps(g).encode() for g in GOOD[:2]] + [raw for raw, _ in BAD]) + b"\n")
    recipe = Recipe(data=DataRecipe(sources=[SourceSpec(path=str(path))], max_quarantine_share=max_quarantine_share))
    store = tmp_path / "store"
    bucket = Bucket(root=str(store))
    result = dg.materialize([read_seed_sources], instance=dg.DagsterInstance.ephemeral(), raise_on_error=False,
                            resources={"recipe": RecipeResource.of(recipe), "bucket": bucket,
                                       "io_manager": BucketJsonIOManager(bucket=bucket)})
    return result, store


def test_quarantine_asset_holds_every_malformed_line_with_reason_origin_and_counts(tmp_path):
    result, store = _read_hostile(tmp_path, max_quarantine_share=1.0)

    assert result.success
    rows = result.asset_value("quarantined_examples")
    assert [(q["file"], q["line"], q["reason"]) for q in rows] == [("hostile.jsonl", 3 + i, reason) for i, (_, reason) in enumerate(BAD)]
    assert all(q["detail"] for q in rows)
    stored = [json.loads(line) for line in (store / "assets/quarantined_examples.jsonl").read_text().splitlines()]
    assert stored == rows  # readable JSONL through the IO manager, not pickle
    meta = result.asset_materializations_for_node("read_seed_sources")
    meta = {m.asset_key.to_user_string(): m.metadata for m in meta}["quarantined_examples"]
    by_reason = {r.data["reason"]: r.data["count"] for r in meta["by_reason"].value.records}
    assert by_reason == Counter(reason for _, reason in BAD)
    assert [r.data for r in meta["by_file"].value.records] == [
        {"file": "hostile.jsonl", "lines": 2 + len(BAD), "quarantined": len(BAD), "share": round(len(BAD) / (2 + len(BAD)), 4)}]
    assert [(r.data["line"], r.data["reason"]) for r in meta["first_rows"].value.records] == [(3 + i, reason) for i, (_, reason) in enumerate(BAD)]
    assert len(result.asset_value("seed_examples")) == 2


def test_rejected_share_over_the_ceiling_fails_naming_reasons_after_writing_the_quarantine(tmp_path):
    result, store = _read_hostile(tmp_path, max_quarantine_share=0.5)

    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure).step_failure_data.user_failure_data
    assert "above data.max_quarantine_share=50.0%" in failure.description
    assert "invalid_json=1" in failure.description and "oversize=2" in failure.description
    materialized = {m.asset_key.to_user_string() for m in result.asset_materializations_for_node("read_seed_sources")}
    assert materialized == {"quarantined_examples"}
    assert len((store / "assets/quarantined_examples.jsonl").read_text().splitlines()) == len(BAD)
    assert not (store / "assets/seed_examples.jsonl").exists()
