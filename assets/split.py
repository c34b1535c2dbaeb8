"""The split: grouped, seeded and decontaminated, with a content hash as each side's data version."""


import dagster as dg

from assets.metadata import preview
from pipeline.curation.records import dataset_version
from pipeline.curation.split import grouped_split
from resources import RecipeResource


@dg.multi_asset(
    group_name="split",
    outs={
        "train_split": dg.AssetOut(kinds={"python", "jsonl"}, description="Training examples: whole groups only, "
                                   "minus any example whose prompt also appears in held-out."),
        "heldout_split": dg.AssetOut(kinds={"python", "jsonl"}, description="Held-out examples for the evaluation "
                                     "gate: whole groups chosen in seeded hash order."),
    },
)
def splits(context: dg.AssetExecutionContext, deduped_examples: list, recipe: RecipeResource):
    data = recipe.load().data
    split = grouped_split(deduped_examples, data.heldout_fraction, data.heldout_max_examples, data.seed)
    context.log.info(f"split {len(deduped_examples)} examples: {len(split.train)} train, {len(split.heldout)} held-out, "
                     f"{len(split.decontaminated)} removed from train as prompt duplicates of held-out")
    yield dg.Output(
        split.train,
        output_name="train_split",
        data_version=dg.DataVersion(dataset_version(split.train)),
        metadata={"examples": len(split.train), "groups": split.train_groups,
                  "decontaminated": len(split.decontaminated), "group_key": data.group_key,
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
