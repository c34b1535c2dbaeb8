"""The split: grouped, seeded and decontaminated, with a content hash as each side's data version."""


from collections import Counter

import dagster as dg

from assets.metadata import counts_table, preview, table
from pipeline.curation.records import dataset_version, sha256_json
from pipeline.curation.split import grouped_split, leaked_heldout, time_split
from pipeline.curation.steps import read_golden
from pipeline.curation.token_stats import histogram_markdown, length_summary, token_lengths
from pipeline.feedback.window import heldout_from_latest, is_feedback, seeds_and_feedback_split
from resources import RecipeResource


@dg.multi_asset(
    group_name="split",
    outs={
        "train_split": dg.AssetOut(kinds={"python", "jsonl"}, description="Training examples: whole groups only, "
                                   "minus any example whose prompt also appears in held-out or that is a MinHash "
                                   "near-duplicate of a held-out or golden-eval example."),
        "heldout_split": dg.AssetOut(kinds={"python", "jsonl"}, description="Held-out examples for the evaluation "
                                     "gate: whole groups chosen in seeded hash order."),
    },
)
def splits(context: dg.AssetExecutionContext, deduped_examples: list, recipe: RecipeResource):
    settings = recipe.load()
    data = settings.data
    golden = read_golden(data)
    if any(is_feedback(r) for r in deduped_examples):  # seeds by group, feedback by time: the latest days held out
        split = seeds_and_feedback_split(deduped_examples, data, heldout_from_latest(deduped_examples, settings.feedback.heldout_days),
                                         golden=golden)
    elif data.split_by == "time":
        split = time_split(deduped_examples, data.time_key, data.heldout_from, near_dup=data.near_dup, golden=golden)
    else:
        split = grouped_split(deduped_examples, data.heldout_fraction, data.heldout_max_examples, data.seed,
                              near_dup=data.near_dup, golden=golden)
    reasons = Counter(r["meta"]["contaminated_by"].split(":")[0] for r in split.decontaminated)
    context.log.info(f"split {len(deduped_examples)} examples: {len(split.train)} train, {len(split.heldout)} held-out, "
                     f"{len(split.decontaminated)} removed from train as contaminated {dict(reasons)}")
    yield dg.Output(
        split.train,
        output_name="train_split",
        data_version=dg.DataVersion(dataset_version(split.train)),
        metadata={"examples": len(split.train), "groups": split.train_groups,
                  "decontaminated": len(split.decontaminated),
                  "decontaminated_by": counts_table(reasons),
                  "decontaminated_examples": table([{"id": r["id"], "by": r["meta"]["contaminated_by"],
                                                     "similarity": r["meta"].get("contamination_similarity", 1.0)}
                                                    for r in split.decontaminated[:20]]),
                  "golden_examples": len(golden), "group_key": data.group_key,
                  "seed": data.seed, "preview": preview(split.train)},
    )
    yield dg.Output(
        split.heldout,
        output_name="heldout_split",
        data_version=dg.DataVersion(dataset_version(split.heldout)),
        metadata={"examples": len(split.heldout), "groups": split.heldout_groups,
                  "fraction": round(len(split.heldout) / max(len(deduped_examples), 1), 4),
                  "seed": data.seed, "preview": preview(split.heldout)},
    )


@dg.asset_check(
    asset="train_split",
    blocking=True,
    additional_ins={"heldout_split": dg.AssetIn()},
    description="No held-out or golden-eval example has a MinHash near-duplicate in train (the recipe's threshold).",
)
def no_heldout_near_duplicate_in_train(train_split: list, heldout_split: list, recipe: RecipeResource) -> dg.AssetCheckResult:
    data = recipe.load().data
    golden = read_golden(data)
    leaks = leaked_heldout(train_split, heldout_split + golden, data.near_dup)
    return dg.AssetCheckResult(
        passed=not leaks,
        description=f"{len(leaks)} train examples are near-duplicates (similarity >= {data.near_dup.threshold}) "
        f"of {len(heldout_split)} held-out and {len(golden)} golden examples",
        metadata={"leaks": len(leaks), "threshold": data.near_dup.threshold, "examples": table(leaks[:20])},
    )


@dg.asset(
    group_name="split",
    kinds={"python"},
    description="Token lengths of the training examples rendered with the base model's chat template: "
    "percentiles, a histogram and how many the training max_length truncates.",
)
def train_token_lengths(train_split: list, base_model: dict, recipe: RecipeResource) -> dg.Output[dict]:
    from transformers import AutoTokenizer

    max_length = recipe.load().training.max_length
    lengths = token_lengths(train_split, AutoTokenizer.from_pretrained(base_model["path"]))
    summary = length_summary(lengths, max_length)
    return dg.Output(
        summary,
        data_version=dg.DataVersion(sha256_json(lengths)),
        metadata={**summary, "histogram": dg.MetadataValue.md(histogram_markdown(lengths, max_length) if lengths else "_(no examples)_")},
    )
