"""The registry entry: an MLflow model version with the adapter, lineage tags and aliases."""


import json
from pathlib import Path

import dagster as dg

from assets.evaluation import log_evaluation_artifacts
from assets.gate import gate_decision
from pipeline.evaluation.gate import PromotionRefused
from assets.feedback import FEEDBACK_WINDOW
from pipeline.lineage import code_version, data_lineage_tags
from resources import ModelRegistry, RecipeResource
from resources.mlflow_registry import CANARY, CHALLENGER, CHAMPION


@dg.asset(
    group_name="registry",
    kinds={"mlflow"},
    description="A new MLflow model version of the adapter (with the merged model next to it) or of the full "
    "fine-tuned model, with its tokenizer and lineage tags: base and hash, "
    "data versions, recipe, code version, Dagster run, eval scores. Alias `challenger` always; `champion` for the "
    "first model ever, otherwise `canary`: it goes live beside the champion and the canary decision sensor promotes "
    "or rolls it back on live feedback. Refuses, in any run, a candidate whose blocking "
    "eval_report checks did not all pass on the very eval_report it is handed.",
    ins={"feedback_window": FEEDBACK_WINDOW},
)
def registry_entry(
    context: dg.AssetExecutionContext,
    eval_report: dict,
    dpo_checkpoint: dict,
    base_model: dict,
    recipe: RecipeResource,
    registry: ModelRegistry,
    seed_examples: list,
    quarantined_examples: list,
    deduped_examples: list,
    feedback_window: dict | None,
) -> dg.Output[dict]:
    settings = recipe.load()
    decision = gate_decision(context, eval_report)
    try:
        decision.refuse_unless_passed("registration")
    except PromotionRefused as refusal:
        raise dg.Failure(str(refusal), metadata={"failed_checks": dg.MetadataValue.md(
            "\n".join(f"- {f}" for f in decision.failures))}) from None
    candidate = dpo_checkpoint  # the final candidate: the DPO model, or the SFT model when DPO is off
    models = eval_report["models"]
    tags = {
        **decision.tags(),
        "base_model.name": base_model["name"],
        "base_model.source": base_model["source"],
        "base_model.source_sha256": base_model["source_sha256"],
        "base_model.sha256": base_model["sha256"],
        **data_lineage_tags({"seed_examples": seed_examples, "quarantined_examples": quarantined_examples,
                             "deduped_examples": deduped_examples}, feedback_window),
        "data.train_split": candidate["train_split_version"],
        "data.heldout_split": eval_report["heldout_split_version"],
        "data.sources": ",".join(s.path for s in settings.data.sources),
        "recipe.name": settings.name,
        "recipe.fingerprint": settings.fingerprint(),
        "recipe.values": json.dumps(settings.model_dump(), sort_keys=True, separators=(",", ":")),
        "code.version": code_version(),
        "dagster.run_id": context.run_id,
        "dagster.job": context.job_name,
        "mlflow.run_id": candidate.get("mlflow_run_id", ""),
        "training.dpo": "skipped" if candidate.get("dpo_skipped", True) else "done",
        "training.method": candidate["method"],
        "adapter.sha256": candidate["adapter_sha256"] or "",
        "model.sha256": candidate["model_sha256"] or "",
        "weights.sha256": candidate["weights_sha256"],
        "eval.base_rouge_l": str(models["base"]["rouge_l"]),
        "eval.candidate_rouge_l": str(models["candidate"]["rouge_l"]),
        "eval.rouge_l_gain": str(eval_report["rouge_l_gain_vs_base"]),
        "eval.base_loss": str(models["base"]["loss"]),
        "eval.candidate_loss": str(models["candidate"]["loss"]),
        "eval.win_rate_vs_base": str(eval_report["win_rate_vs_base"]),
        "eval.examples": str(eval_report["examples"]),
    }
    name = settings.registry.model_name
    description = f"{settings.name} on {base_model['name']}, Dagster run {context.run_id}"
    if candidate["adapter_path"]:
        merged = {"merged": Path(candidate["model_path"])} if candidate["model_path"] else {}
        version = registry.register(name, candidate["mlflow_run_id"], Path(candidate["adapter_path"]), tags,
                                    description=description, extra_dirs=merged)
    else:  # full fine-tuning: the version is the whole model
        version = registry.register(name, candidate["mlflow_run_id"], Path(candidate["model_path"]), tags,
                                    description=description, artifact_path="model")
    registry.set_run_tags(candidate["mlflow_run_id"], {"registered_version": version})
    log_evaluation_artifacts(registry, candidate["mlflow_run_id"], eval_report)  # HTML report, model card, GGUF
    actor = f"dagster run {context.run_id}"
    evidence = {"eval_report": decision.eval_report_version, "rouge_l_gain_vs_base": eval_report["rouge_l_gain_vs_base"]}
    registry.move_alias(name, CHALLENGER, version, actor=actor, reason="passed the evaluation gate", evidence=evidence)
    aliases = [CHALLENGER]
    champion = registry.version_by_alias(name, CHAMPION)
    if champion is None:  # the first model ever: nothing to compare it with live
        registry.move_alias(name, CHAMPION, version, actor=actor, reason="first model: no champion yet", evidence=evidence)
        aliases.append(CHAMPION)
    else:  # live feedback decides (canary decision sensor); the offline comparison is kept as evidence
        offline = {k: eval_report.get(k) for k in ("rouge_l_gain_vs_champion", "win_rate_vs_champion")}
        registry.move_alias(name, CANARY, version, actor=actor, evidence={**evidence, **offline, "champion": str(champion.version)},
                            reason=f"passed the evaluation gate; goes live as canary beside champion v{champion.version}")
        aliases.append(CANARY)
    context.log.info(f"registered {name} v{version} with aliases {aliases}")
    metadata = {
        "model_name": name,
        "version": version,
        "aliases": ", ".join(aliases),
        "tracking_uri": registry.uri,
        "candidate_rouge_l": models["candidate"]["rouge_l"],
    }
    link = registry.run_link(candidate["mlflow_run_id"])
    if link:
        metadata["mlflow_run"] = dg.MetadataValue.url(link)
    return dg.Output({"model_name": name, "version": version, "aliases": aliases, "tags": tags}, metadata=metadata)
