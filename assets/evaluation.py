"""The evaluation report and the blocking checks that gate promotion."""


from pathlib import Path

import dagster as dg

from assets.gate import report_version
from assets.metadata import table
from pipeline.curation.records import dataset_version
from pipeline.curation.split import overlap
from pipeline.evaluation.report import evaluate, gate_failures
from resources import ModelRegistry, RecipeResource
from resources.mlflow_registry import CHAMPION


def _champion_weights(context, registry: ModelRegistry, model_name: str, base_sha: str) -> Path | None:
    """The current champion's adapter or full model, if there is one trained on the same base weights."""
    champion = registry.version_by_alias(model_name, CHAMPION)
    if champion is None:
        return None
    if champion.tags.get("base_model.sha256") != base_sha:
        context.log.info(f"champion v{champion.version} was trained on another base; not compared")
        return None
    return registry.download_adapter(champion)


@dg.asset(
    group_name="evaluation",
    kinds={"pytorch", "mlflow"},
    description="Base, current champion and candidate scored on the same held-out examples: answer loss and "
    "perplexity, ROUGE-L of greedy answers, win rate, and a per-example table.",
)
def eval_report(
    context: dg.AssetExecutionContext,
    heldout_split: list,
    base_model: dict,
    dpo_checkpoint: dict,
    recipe: RecipeResource,
    registry: ModelRegistry,
) -> dg.Output[dict]:
    settings = recipe.load()
    candidate = dpo_checkpoint  # the final candidate: the DPO model, or the SFT model when DPO is off
    champion = _champion_weights(context, registry, settings.registry.model_name, base_model["sha256"])
    # an adapter over the base, or a full model
    weights = Path(candidate["adapter_path"] or candidate["model_path"])
    report = evaluate(Path(base_model["path"]), weights, heldout_split, settings.evaluation, champion)
    report["heldout_split_version"] = dataset_version(heldout_split)
    report["failures"] = gate_failures(report, settings.gate)
    models = report["models"]
    for name, scores in models.items():
        context.log.info(f"{name}: " + ", ".join(f"{k}={v}" for k, v in scores.items()))
    run_id = candidate.get("mlflow_run_id")
    if run_id:
        registry.log_metrics(run_id, {f"eval_{m}_{k}": v for m, s in models.items() for k, v in s.items()})
    metadata = {
        "examples": report["examples"],
        "base_rouge_l": models["base"]["rouge_l"],
        "candidate_rouge_l": models["candidate"]["rouge_l"],
        "rouge_l_gain_vs_base": report["rouge_l_gain_vs_base"],
        "base_loss": models["base"]["loss"],
        "candidate_loss": models["candidate"]["loss"],
        "win_rate_vs_base": report["win_rate_vs_base"],
        "scores": table([{"model": name, **scores} for name, scores in models.items()]),
        "answers": table(report["rows"]),
        "gate": dg.MetadataValue.md("\n".join(f"- {f}" for f in report["failures"]) or "passes"),
    }
    if "champion" in models:
        metadata["rouge_l_gain_vs_champion"] = report["rouge_l_gain_vs_champion"]
    return dg.Output(report, metadata=metadata, data_version=dg.DataVersion(report_version(report)))


@dg.asset_check(asset=eval_report, blocking=True, description="The candidate beats the base by the recipe's margin "
                "on held-out ROUGE-L, without a worse held-out loss than allowed.")
def candidate_beats_base(eval_report: dict) -> dg.AssetCheckResult:
    failures = eval_report["failures"]
    return dg.AssetCheckResult(
        passed=not failures,
        description="; ".join(failures) or "candidate passes the gate",
        metadata={"rouge_l_gain_vs_base": eval_report["rouge_l_gain_vs_base"],
                  "loss_ratio_vs_base": eval_report["loss_ratio_vs_base"] or 0.0},
    )


@dg.asset_check(
    asset=eval_report,
    blocking=True,
    additional_ins={"train_split": dg.AssetIn(), "heldout_split": dg.AssetIn()},
    description="No id, group or normalised prompt is shared between train and held-out, so the scores are honest.",
)
def no_train_heldout_overlap(eval_report: dict, train_split: list, heldout_split: list) -> dg.AssetCheckResult:
    shared = overlap(train_split, heldout_split)
    return dg.AssetCheckResult(
        passed=not any(shared.values()),
        description=", ".join(f"{k}={v}" for k, v in shared.items()),
        metadata=shared,
    )
