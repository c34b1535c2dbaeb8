"""Source assets: raw example files read, normalised and quarantined."""


import json
from collections import Counter

import dagster as dg

from assets.metadata import counts_table, preview, table
from pipeline.curation.records import dataset_version
from pipeline.curation.steps import read_sources
from resources import Bucket, RecipeResource

QUARANTINE_KEY = "quarantine/seed_examples.jsonl"


@dg.asset(
    group_name="sources",
    kinds={"python", "jsonl"},
    description="Raw examples from the recipe's sources (alpaca, sharegpt, chatml), normalised to chat records "
    "with a stable id, group and origin. Malformed lines go to the quarantine file with their reason.",
)
def seed_examples(context: dg.AssetExecutionContext, recipe: RecipeResource, bucket: Bucket) -> dg.Output[list]:
    data = recipe.load().data
    result = read_sources(data)
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
