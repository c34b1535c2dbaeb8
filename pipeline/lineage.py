"""What a model is made of: the facts recorded as tags on its registry version, and read back on call."""

from __future__ import annotations

import subprocess

from pipeline.paths import PROJECT_ROOT


def code_version() -> str:
    """The git commit of the code that ran, with `-dirty` when the work tree had changes; `unknown` outside git."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT_ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


LINEAGE_ORDER = [
    "base_model.name", "base_model.source", "base_model.source_sha256", "base_model.sha256",
    "data.seed_examples", "data.quarantined_examples", "data.deduped_examples", "data.train_split", "data.heldout_split", "data.sources",
    "recipe.name", "recipe.fingerprint", "code.version", "gate.passed", "gate.checks", "gate.eval_report_version",
    "dagster.run_id", "dagster.job", "mlflow.run_id",
    "eval.base_rouge_l", "eval.candidate_rouge_l", "eval.rouge_l_gain", "eval.base_loss", "eval.candidate_loss", "eval.win_rate_vs_base",
]


FEEDBACK_DAY_KEYS = ("feedback.examples.", "feedback.curated.", "feedback.events.")


def format_feedback(tags: dict[str, str]) -> list[str]:
    """The feedback chain: the window, then each day with its examples' version and count and its events' version."""
    if tags.get("feedback.window", "none") == "none":
        return ["  feedback: none (seed data only)"]
    missing = [d for d in tags.get("feedback.missing", "none").split(",") if d != "none"]
    shown = ", ".join(missing) if len(missing) <= 4 else f"{len(missing)} days, {missing[0]} .. {missing[-1]}"
    lines = [f"  feedback window {tags['feedback.window']}  (version {tags.get('feedback.window_version', '?')[:16]})",
             f"    days without a partition: {shown or 'none'}"]
    days = sorted({k.rsplit(".", 1)[-1] for k in tags if k.startswith(FEEDBACK_DAY_KEYS)})
    for day in days:
        examples = tags.get(f"feedback.examples.{day}")
        part = (f"examples {examples[:16]} ({tags.get(f'feedback.curated.{day}', '?')} curated)" if examples
                else "(interactions only, read for joins)")
        lines.append(f"    feedback/dt={day}/  {part}  <- events {tags.get(f'feedback.events.{day}', '?')[:16]}")
    return lines


def format_lineage(model_name: str, version: str, aliases: list[str], tags: dict[str, str]) -> str:
    """A readable lineage sheet: the known keys in a fixed order, the feedback days, then anything else recorded."""
    lines = [f"{model_name} version {version}" + (f"  (aliases: {', '.join(sorted(aliases))})" if aliases else "")]
    width = max([len(k) for k in tags if not k.startswith(("feedback.", "recipe.values"))] + [10])
    sources = tags.get("data.sources")
    if sources:
        lines.append("  seed files: " + ", ".join(sources.split(",")))
    lines += format_feedback(tags)
    rest = sorted(k for k in tags if k not in LINEAGE_ORDER and k != "recipe.values" and not k.startswith("feedback."))
    for key in LINEAGE_ORDER + rest:
        if key in tags:
            lines.append(f"  {key.ljust(width)}  {tags[key]}")
    if "recipe.values" in tags:
        lines.append(f"  {'recipe.values'.ljust(width)}  {tags['recipe.values']}")
    return "\n".join(lines)


SEED_DATA = ("seed_examples", "quarantined_examples", "deduped_examples")


def data_lineage_tags(values: dict[str, list], feedback_window: dict | None) -> dict[str, str]:
    """Data versions computed from the values this run read (never a look-up of what was materialized last),
    and for feedback the window, each day read with its examples' and events' versions, and the days missing."""
    from pipeline.curation.records import dataset_version

    tags = {f"data.{name}": dataset_version(values[name]) for name in SEED_DATA}
    if not feedback_window:
        tags["feedback.window"] = "none"
        return tags
    days, parts = feedback_window["days"], feedback_window["partitions"]
    tags.update({
        "feedback.window": f"{days[0]}..{feedback_window['end']}",
        "feedback.window_version": feedback_window["version"],
        "feedback.partitions": ",".join(parts) or "none",
        "feedback.missing": ",".join(feedback_window["missing"]) or "none",
    })
    events: dict[str, set[str]] = {}
    for day, part in parts.items():
        tags[f"feedback.examples.{day}"] = part["examples_version"]
        tags[f"feedback.curated.{day}"] = str(part["sft"] + part["pairs"])
        for events_day, version in part["events_versions"].items():
            events.setdefault(events_day, set()).add(version)
    # a day of events read by two example partitions at two versions says so, rather than picking one
    tags.update({f"feedback.events.{day}": "|".join(sorted(v)) for day, v in sorted(events.items())})
    return tags


def trained_feedback(tags: dict[str, str]) -> dict[str, tuple[str, int]]:
    """Day -> (examples version, curated count) of the feedback a registered version was trained on."""
    prefix = "feedback.examples."
    return {k[len(prefix):]: (v, int(tags.get(f"feedback.curated.{k[len(prefix):]}", "0")))
            for k, v in tags.items() if k.startswith(prefix)}
