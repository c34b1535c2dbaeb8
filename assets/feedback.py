"""Feedback assets, partitioned by day: the bucket's events, the examples they give, and the retraining window.

Built from the recipe's `feedback` section when the code location loads (partitions and mappings are part of
the asset graph, so changing them needs a reload, unlike the rest of the recipe).
"""


from collections.abc import Iterator

import dagster as dg

from assets.metadata import counts_table, table
from pipeline.feedback.curate import curate_day
from pipeline.feedback.events import counts, read_day
from pipeline.feedback.examples import day_examples
from pipeline.feedback.layout import day_of_key, day_prefix, shift_day
from pipeline.feedback.window import assemble_window, events_version, examples_version
from pipeline.recipe import FeedbackRecipe
from resources import Bucket, RecipeResource

SAMPLE_ROWS = 20
GROUP = "feedback"

# How the unpartitioned retraining assets read feedback: the last window partition, when one was built (the
# retraining job builds it first); in a seed-only run it is absent and they get None.
FEEDBACK_WINDOW = dg.AssetIn("feedback_window", partition_mapping=dg.LastPartitionMapping(), metadata={"optional": True})


def feedback_partitions(feedback: FeedbackRecipe) -> dg.DailyPartitionsDefinition:
    """Daily partitions from `start_date`; the last one is today (so a day can be read while it fills) or `end_date`."""
    if feedback.end_date:
        return dg.DailyPartitionsDefinition(start_date=feedback.start_date, end_date=shift_day(feedback.end_date, 1),
                                            timezone=feedback.timezone)
    return dg.DailyPartitionsDefinition(start_date=feedback.start_date, timezone=feedback.timezone, end_offset=1)


def _steps_table(reports) -> dg.MetadataValue:
    return table([{"step": r.name, "in": r.records_in, "kept": r.kept, "dropped": sum(r.dropped.values()),
                   "reasons": ", ".join(f"{k}={v}" for k, v in r.dropped.items()) or "-"} for r in reports])


def build_feedback_assets(feedback: FeedbackRecipe) -> list[dg.AssetsDefinition]:
    partitions = feedback_partitions(feedback)

    @dg.asset(
        partitions_def=partitions, group_name=GROUP, kinds={"s3", "jsonl"},
        retry_policy=dg.RetryPolicy(max_retries=2, delay=10, backoff=dg.Backoff.EXPONENTIAL),
        description="One UTC day of the feedback bucket (`feedback/dt=<day>/*.jsonl.gz`, FEEDBACK.md) read through the "
        "bucket resource: validated events (interaction, feedback, comparison), every malformed line or damaged "
        "object quarantined with key, line and reason, event ids seen twice counted. Lines = events + quarantined + duplicates.",
    )
    def feedback_events(context: dg.AssetExecutionContext, bucket: Bucket, recipe: RecipeResource) -> Iterator[dg.Output]:
        day = context.partition_key
        listing = [(k, tag) for k, tag in bucket.list_objects(day_prefix(day)) if day_of_key(k) == day]
        read = read_day(day, [(k, tag, bucket.read_bytes(k)) for k, tag in listing])
        if not read.balanced():
            raise dg.Failure(f"books of {day} do not close: {read.lines} lines, {len(read.events)} events, "
                             f"{len(read.quarantined)} quarantined, {read.duplicates} duplicates")
        c = counts(read)
        for q in read.quarantined[:SAMPLE_ROWS]:
            context.log.warning(f"quarantined {q['key']}:{q['line']} ({q['reason']}): {q['detail']}")
        share = len(read.quarantined) / read.lines if read.lines else 0.0
        value = {"day": day, "events": read.events, "quarantined": read.quarantined, "objects": read.objects,
                 "duplicates": read.duplicates}
        yield dg.Output(value, data_version=dg.DataVersion(events_version(read.events)), metadata={
            "objects": len(read.objects), "lines": read.lines, "events": len(read.events),
            "quarantined": len(read.quarantined), "duplicate_events": read.duplicates, "quarantine_share": round(share, 4),
            "events_by_kind": counts_table(c["kinds"], key="kind"),
            "interactions_by_model_version": counts_table(c["model_versions"], key="version"),
            "ratings": counts_table(c["ratings"], key="rating"), "corrections": sum(c["corrections"].values()),
            "comparison_winners": counts_table(c["winners"], key="winner"),
            "rejects_by_reason": counts_table(c["rejects"]),
            "by_object": table([{k: o[k] for k in ("key", "lines", "events", "quarantined", "duplicates")} for o in read.objects]),
            "quarantine_sample": table([{k: q[k] for k in ("key", "line", "reason", "detail")} for q in read.quarantined[:SAMPLE_ROWS]]),
        })
        limit = recipe.load().feedback.max_quarantine_share
        if share > limit:
            raise dg.Failure(f"{day}: {len(read.quarantined)} of {read.lines} lines ({share:.1%}) quarantined, above "
                             f"feedback.max_quarantine_share={limit:.1%}: " + ", ".join(f"{k}={v}" for k, v in c["rejects"].most_common())
                             + ". The quarantine, with key, line and reason, is in this partition's value.")

    @dg.asset(
        partitions_def=partitions, group_name=GROUP, kinds={"python", "jsonl"},
        ins={"feedback_events": dg.AssetIn(
            partition_mapping=dg.TimeWindowPartitionMapping(start_offset=-feedback.join_lookback_days,
                                                            allow_nonexistent_upstream_partitions=True),
            metadata={"by_partition": True})},
        description="A day's feedback as training data: corrections as SFT examples, corrections over the served "
        "response and comparison winners as preference pairs, through the seed data's curation blocks (PII and "
        "secret scrubbing, quality filters, exact and near-duplicates). Feedback finds its interaction in the day "
        "or the `join_lookback_days` before it. Every event gets one outcome; scrubbing counted by type.",
    )
    def feedback_examples(context: dg.AssetExecutionContext, feedback_events: dict, recipe: RecipeResource) -> dg.Output[dict]:
        day = context.partition_key
        if day not in feedback_events:
            raise dg.Failure(f"feedback_events[{day}] is not materialized; materialize it first (the feedback_ingest job does both)")
        settings = recipe.load()
        earlier = {e["id"]: e for d, v in sorted(feedback_events.items()) if d != day for e in v["events"] if e["kind"] == "interaction"}
        events = feedback_events[day]["events"]
        made = day_examples(day, events, earlier)
        curated = curate_day(made, settings.data, settings.feedback)
        value = {"day": day, "sft": curated.sft, "pairs": curated.pairs, "outcomes": dict(made.outcomes),
                 "scrubbed": dict(curated.scrubbed),
                 "events_versions": {d: events_version(v["events"]) for d, v in sorted(feedback_events.items())}}
        if sum(made.outcomes.values()) != len(events):
            raise dg.Failure(f"{day}: {len(events)} events but {sum(made.outcomes.values())} outcomes")
        context.log.info(f"{day}: {len(events)} events -> {len(made.sft)} SFT candidates, {len(made.pairs)} pairs -> "
                         f"{len(curated.sft)} + {len(curated.pairs)} curated; scrubbed {dict(curated.scrubbed)}")
        return dg.Output(value, data_version=dg.DataVersion(examples_version(value)), metadata={
            "events": len(events), "outcomes": counts_table(made.outcomes, key="outcome"),
            "sft_candidates": len(made.sft), "sft_examples": len(curated.sft),
            "pair_candidates": len(made.pairs), "preference_pairs": len(curated.pairs),
            "curated": len(curated.sft) + len(curated.pairs),
            "sft_steps": _steps_table(curated.sft_reports), "pair_steps": _steps_table(curated.pair_reports),
            "scrubbed_by_type": counts_table(curated.scrubbed, key="type"),
            "scrubbed_total": sum(curated.scrubbed.values()),
            "events_read": table([{"day": d, "data_version": v} for d, v in value["events_versions"].items()]),
        })

    @dg.asset(
        partitions_def=partitions, group_name=GROUP, kinds={"python"},
        ins={"feedback_examples": dg.AssetIn(
            partition_mapping=dg.TimeWindowPartitionMapping(start_offset=1 - feedback.window_days,
                                                            allow_nonexistent_upstream_partitions=True),
            metadata={"by_partition": True})},
        description="The retraining window ending at this day: the `window_days` partitions of feedback_examples "
        "(the partition mapping shows which), each named with the data version read, the days with no partition, "
        "SFT examples and preference pairs across days. Retraining reads the last partition.",
    )
    def feedback_window(context: dg.AssetExecutionContext, feedback_examples: dict) -> dg.Output[dict]:
        end = context.partition_key
        last = partitions.get_last_partition_key()
        if context.job_name == "retraining" and end != last:
            # the retraining graph reads the last window partition; training on another would name the wrong days
            raise dg.Failure(f"retraining trains on the window ending at the last partition ({last}); run it for {last}, "
                             f"not {end}")
        days = sorted(context.asset_partition_keys_for_input("feedback_examples"))
        value = assemble_window(end, days, feedback_examples)
        if value["missing"]:
            context.log.warning(f"window {days[0]}..{end}: no feedback_examples for {', '.join(value['missing'])}")
        return dg.Output(value, data_version=dg.DataVersion(value["version"]), metadata={
            "window": f"{days[0]}..{end}", "days_read": len(value["partitions"]), "days_missing": len(value["missing"]),
            "sft_examples": len(value["sft"]), "preference_pairs": len(value["pairs"]),
            "pairs_dropped_across_days": value["pairs_dropped_across_days"],
            "partitions": table([{"day": d, **{k: p[k] for k in ("examples_version", "sft", "pairs")}}
                                 for d, p in value["partitions"].items()]),
            "missing": ", ".join(value["missing"]) or "-",
        })

    return [feedback_events, feedback_examples, feedback_window]

