"""Curation assets: cleaning blocks applied in order, every drop counted with its reason."""


import dagster as dg

from assets.metadata import preview, table
from pipeline.curation.records import dataset_version
from pipeline.curation.steps import DEFAULT_STEPS, run_steps


@dg.asset(
    group_name="curation",
    kinds={"python", "jsonl"},
    description="Seed examples with e-mail addresses replaced by <EMAIL> and exact duplicates "
    "(case- and whitespace-insensitive) removed, first occurrence kept.",
)
def deduped_examples(context: dg.AssetExecutionContext, seed_examples: list) -> dg.Output[list]:
    records, reports = run_steps(seed_examples, DEFAULT_STEPS)
    steps = [{"step": r.name, "in": r.records_in, "kept": r.kept, "dropped": sum(r.dropped.values()),
              "reasons": ", ".join(f"{k}={v}" for k, v in r.dropped.items()) or "-"} for r in reports]
    emails = sum(r["meta"].get("scrubbed_emails", 0) for r in records)
    for r in reports:
        context.log.info(f"{r.name}: {r.records_in} in, {r.kept} kept, dropped {dict(r.dropped)}")
    return dg.Output(
        records,
        data_version=dg.DataVersion(dataset_version(records)),
        metadata={
            "records_in": len(seed_examples),
            "records": len(records),
            "dropped": len(seed_examples) - len(records),
            "emails_scrubbed": emails,
            "records_with_emails": sum(1 for r in records if r["meta"].get("scrubbed_emails")),
            "steps": table(steps),
            "dropped_examples": table([dict(e, step=r.name) for r in reports for e in r.examples]),
            "preview": preview(records),
        },
    )
