"""Curation assets: cleaning blocks applied in order, every drop counted with its reason."""


from collections import Counter, defaultdict

import dagster as dg

from assets.feedback import FEEDBACK_WINDOW
from assets.metadata import counts_table, preview, table
from pipeline.curation.pii_audit import audit_text
from pipeline.curation.records import dataset_version
from pipeline.curation.steps import curation_steps, run_steps
from pipeline.curation.token_stats import token_counter
from resources import RecipeResource


@dg.asset(
    group_name="curation",
    kinds={"python", "jsonl"},
    ins={"feedback_window": FEEDBACK_WINDOW},
    description="Seed examples with PII and secrets replaced by typed placeholders (<EMAIL>, <AWS_ACCESS_KEY>, ...), "
    "quality filters (repetition, garbage characters, prompt echoes, token-length bounds in the base model's tokenizer), "
    "exact duplicates (case- and whitespace-insensitive) and MinHash near-duplicates removed, first occurrence kept.",
)
def deduped_examples(context: dg.AssetExecutionContext, seed_examples: list, quarantined_examples: list,
                     base_model: dict, recipe: RecipeResource, feedback_window: dict | None) -> dg.Output[list]:
    from transformers import AutoTokenizer

    data = recipe.load().data
    count_tokens = token_counter(AutoTokenizer.from_pretrained(base_model["path"]))
    feedback = feedback_window["sft"] if feedback_window else []  # after the seeds: a copy of a seed is the one dropped
    records, reports = run_steps(seed_examples + feedback, curation_steps(data, count_tokens))
    # the books start at the raw lines: what the read quarantined is the first row
    quarantined = Counter(q["reason"] for q in quarantined_examples)
    steps = [{"step": "read_and_normalise", "in": len(seed_examples) + len(feedback) + sum(quarantined.values()),
              "kept": len(seed_examples) + len(feedback),
              "quarantined": sum(quarantined.values()), "dropped": 0, "seconds": 0.0,
              "reasons": ", ".join(f"{k}={v}" for k, v in quarantined.most_common()) or "-"}]
    steps += [{"step": r.name, "in": r.records_in, "kept": r.kept, "quarantined": 0, "dropped": sum(r.dropped.values()),
               "seconds": round(r.seconds, 3), "reasons": ", ".join(f"{k}={v}" for k, v in r.dropped.items()) or "-"}
              for r in reports]
    steps.append({"step": "total", "in": steps[0]["in"], "kept": len(records), "quarantined": steps[0]["quarantined"],
                  "dropped": sum(s["dropped"] for s in steps), "seconds": round(sum(r.seconds for r in reports), 3),
                  "reasons": "in = kept + quarantined + dropped"})
    scrubbed = sum((Counter(r["meta"].get("scrubbed", {})) for r in records), Counter())
    clusters: dict[str, list[str]] = defaultdict(list)
    for r in reports:
        for rec, _ in r.dropped_records:
            if "near_duplicate_of" in rec["meta"]:
                clusters[rec["meta"]["near_duplicate_of"]].append(rec["id"])
    for r in reports:
        context.log.info(f"{r.name}: {r.records_in} in, {r.kept} kept, dropped {dict(r.dropped)}")
    return dg.Output(
        records,
        data_version=dg.DataVersion(dataset_version(records)),
        metadata={
            "records_in": len(seed_examples) + len(feedback),
            "records": len(records),
            "dropped": len(seed_examples) + len(feedback) - len(records),
            "feedback_in": len(feedback),
            "feedback_kept": sum(1 for r in records if r["source"] == "feedback"),
            "feedback_window": (f"{feedback_window['days'][0]}..{feedback_window['end']} ({feedback_window['version'][:12]})"
                                if feedback_window else "none built: seed data only"),
            "steps": table(steps),
            "scrubbed_by_type": counts_table(scrubbed, key="type"),
            "records_scrubbed": sum(1 for r in records if r["meta"].get("scrubbed")),
            "near_duplicate_clusters": len(clusters),
            "near_duplicate_cluster_sample": table([{"kept": k, "dropped": ", ".join(v), "size": len(v) + 1}
                                                    for k, v in sorted(clusters.items())[:10]]),
            "near_dup_settings": dg.MetadataValue.json(data.near_dup.model_dump()),
            "dropped_examples": table([dict(e, step=r.name) for r in reports for e in r.examples]),
            "preview": preview(records),
        },
    )


@dg.asset_check(asset=deduped_examples, blocking=True,
                description="An independent detector (detect-secrets' plugins, phonenumbers, token validators; not the "
                "scrubber) finds no e-mail, phone, IP, card number or credential left in any turn.")
def no_pii_or_secrets_left(deduped_examples: list) -> dg.AssetCheckResult:
    found: Counter = Counter()
    hits = []
    for rec in deduped_examples:
        counts = sum((audit_text(m["content"]) for m in rec["messages"]), Counter())
        if counts:
            found += counts
            hits.append({"id": rec["id"], "types": ", ".join(sorted(counts))})
    return dg.AssetCheckResult(
        passed=not found,
        description=f"{sum(found.values())} PII/secret matches in {len(hits)} of {len(deduped_examples)} records",
        metadata={"matches": sum(found.values()), "by_type": counts_table(found, key="type"), "examples": table(hits[:20])},
    )
