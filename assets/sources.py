"""Source assets: raw example files read, normalised and quarantined."""


import json
from collections import Counter

import dagster as dg

from assets.metadata import counts_table, preview, table
from pipeline.curation.records import dataset_version
from pipeline.curation.readers import READABLE_SUFFIXES
from pipeline.curation.steps import read_sources
from pipeline.recipe import DataRecipe
from resources import Bucket, RecipeResource

QUARANTINE_KEY = "quarantine/seed_examples.jsonl"


def stage_remote_sources(data: DataRecipe, bucket: Bucket) -> DataRecipe:
    """Copy `s3://` sources (one object, or every object under a prefix) into the bucket's local cache, through
    the bucket resource's client and credentials; local sources are left as they are."""
    staged = []
    for source in data.sources:
        if not source.path.startswith("s3://"):
            staged.append(source)
            continue
        name, _, key = source.path[len("s3://"):].partition("/")
        store = Bucket(root=f"s3://{name}", endpoint_url=bucket.endpoint_url, cache_dir=bucket.cache_dir)
        if key.endswith(READABLE_SUFFIXES):
            local = store.local_path(key)
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_bytes(store.read_bytes(key))
        else:
            local = store.download_dir(key.rstrip("/"))
        staged.append(source.model_copy(update={"path": str(local)}))
    return data.model_copy(update={"sources": staged})


@dg.asset(
    group_name="sources",
    kinds={"python", "jsonl"},
    description="Raw examples from the recipe's sources (alpaca, sharegpt, chatml), normalised to chat records "
    "with a stable id, group and origin. Malformed lines go to the quarantine file with their reason.",
)
def seed_examples(context: dg.AssetExecutionContext, recipe: RecipeResource, bucket: Bucket) -> dg.Output[list]:
    data = recipe.load().data
    result = read_sources(stage_remote_sources(data, bucket))
    quarantine_uri = bucket.write_bytes(
        QUARANTINE_KEY, "".join(json.dumps(q, ensure_ascii=False, sort_keys=True) + "\n" for q in result.quarantined).encode()
    )
    reasons = Counter(q["reason"] for q in result.quarantined)
    if result.quarantine_share > data.max_quarantine_share:
        raise dg.Failure(
            description=f"{len(result.quarantined)} of {result.lines_read} lines ({result.quarantine_share:.1%}) are malformed, "
            f"above data.max_quarantine_share={data.max_quarantine_share:.1%}. Reasons: {dict(reasons)}. "
            f"See {quarantine_uri}.",
            metadata={"quarantine": dg.MetadataValue.path(quarantine_uri)},
        )
    for q in result.quarantined:
        context.log.warning(f"quarantined {q['file']}:{q['line']} ({q['reason']}): {q['detail']}")
    records = result.records
    return dg.Output(
        records,
        data_version=dg.DataVersion(dataset_version(records)),
        metadata={
            "lines_read": result.lines_read,
            "records": len(records),
            "quarantined": len(result.quarantined),
            "quarantine_share": round(result.quarantine_share, 4),
            "quarantine_reasons": counts_table(reasons),
            "quarantine_file": dg.MetadataValue.path(quarantine_uri),
            "quarantine_examples": table([{k: q[k] for k in ("file", "line", "reason", "detail")} for q in result.quarantined[:20]]),
            "by_format": counts_table(Counter(r["origin"]["format"] for r in records), key="format"),
            "by_source": counts_table(Counter(r["source"] for r in records), key="source"),
            "groups": len({r["group"] for r in records}),
            "preview": preview(records),
        },
    )
