"""Source assets: raw example files read and normalised, and the quarantine of lines that could not be."""


from collections import Counter
from collections.abc import Iterator

import dagster as dg

from assets.metadata import counts_table, preview, table
from pipeline.curation.records import dataset_version
from pipeline.curation.readers import READABLE_SUFFIXES
from pipeline.curation.steps import ReadResult, read_sources
from pipeline.recipe import DataRecipe
from resources import Bucket, RecipeResource


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


SAMPLE_ROWS = 20  # quarantined rows shown in the UI; the asset itself holds all of them


def _by_file(result: ReadResult) -> list[dict]:
    """Lines read and quarantined per source file."""
    kept = Counter(r["origin"]["file"] for r in result.records)
    bad = Counter(q["file"] for q in result.quarantined)
    files = [*kept, *(f for f in bad if f not in kept)]
    return [{"file": f, "lines": kept[f] + bad[f], "quarantined": bad[f],
             "share": round(bad[f] / (kept[f] + bad[f]), 4)} for f in files]


@dg.multi_asset(
    group_name="sources",
    outs={
        "seed_examples": dg.AssetOut(
            kinds={"python", "jsonl"},
            description="Raw examples from the recipe's sources (alpaca, sharegpt, chatml, preference pairs), "
            "normalised to chat records with a stable id, group and origin."),
        "quarantined_examples": dg.AssetOut(
            kinds={"python", "jsonl"},
            description="Every source line that could not be read or normalised, with its file, line, reason, "
            "detail and the raw value when it parsed. Written even when the rejected share fails the run."),
    },
)
def read_seed_sources(context: dg.AssetExecutionContext, recipe: RecipeResource, bucket: Bucket) -> Iterator[dg.Output]:
    """One read of the sources gives both assets, so kept + quarantined always adds up to the lines read."""
    data = recipe.load().data
    result = read_sources(stage_remote_sources(data, bucket))
    quarantined = result.quarantined
    reasons = Counter(q["reason"] for q in quarantined)
    for q in quarantined:
        context.log.warning(f"quarantined {q['file']}:{q['line']} ({q['reason']}): {q['detail']}")
    # Yielded before the ceiling check: a run that fails on it still leaves the quarantine to inspect.
    yield dg.Output(
        quarantined,
        output_name="quarantined_examples",
        data_version=dg.DataVersion(dataset_version(quarantined)),
        metadata={
            "quarantined": len(quarantined),
            "lines_read": result.lines_read,
            "quarantine_share": round(result.quarantine_share, 4),
            "max_quarantine_share": data.max_quarantine_share,
            "by_reason": counts_table(reasons),
            "by_file": table(_by_file(result)),
            "first_rows": table([{k: q[k] for k in ("file", "line", "reason", "detail")} for q in quarantined[:SAMPLE_ROWS]]),
        },
    )
    if result.quarantine_share > data.max_quarantine_share:
        raise dg.Failure(
            description=f"{len(quarantined)} of {result.lines_read} lines ({result.quarantine_share:.1%}) are malformed, "
            f"above data.max_quarantine_share={data.max_quarantine_share:.1%}. Reasons: "
            + ", ".join(f"{reason}={n}" for reason, n in reasons.most_common())
            + ". Every rejected line, with file, line and detail, is in the quarantined_examples asset of this run.",
            metadata={"by_reason": counts_table(reasons)},
        )
    records = result.records
    yield dg.Output(
        records,
        output_name="seed_examples",
        data_version=dg.DataVersion(dataset_version(records)),
        metadata={
            "lines_read": result.lines_read,
            "records": len(records),
            "quarantined": len(quarantined),
            "quarantine_share": round(result.quarantine_share, 4),
            "by_format": counts_table(Counter(r["origin"]["format"] for r in records), key="format"),
            "by_source": counts_table(Counter(r["source"] for r in records), key="source"),
            "groups": len({r["group"] for r in records}),
            "preview": preview(records),
        },
    )
