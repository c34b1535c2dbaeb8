"""The evaluation report and the blocking checks that gate promotion."""


import json
from pathlib import Path

import dagster as dg

from assets.gate import report_version
from assets.metadata import table
from pipeline.curation.records import dataset_version
from pipeline.curation.split import overlap
from pipeline.curation.steps import read_golden
from pipeline.evaluation import contamination, general
from pipeline.evaluation.export_gguf import export_gguf, load_gguf, merged_model_dir
from pipeline.evaluation.model_card import model_card
from pipeline.evaluation.report import champion_failures, evaluate, gate_failures, quantized_drop
from pipeline.evaluation.report_html import headline_rows, html_report, markdown_summary
from pipeline.models.base_model import file_sha256
from pipeline.paths import resolve
from pipeline.training.dpo import load_preferences
from resources import Bucket, ModelRegistry, RecipeResource
from resources.mlflow_registry import CHAMPION

UPSTREAM_DATA = ["seed_examples", "deduped_examples", "train_split", "heldout_split"]


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
    kinds={"gguf"},
    description="The candidate merged into its base and written as GGUF (evaluation.quantized.quant_type) for "
    "llama.cpp and Ollama; registered beside the adapter, its quality drop measured in eval_report.",
)
def quantized_model(context: dg.AssetExecutionContext, dpo_checkpoint: dict, base_model: dict, recipe: RecipeResource,
                    bucket: Bucket) -> dg.Output[dict]:
    settings = recipe.load()
    q = settings.evaluation.quantized
    if not q.enabled:
        return dg.Output({"enabled": False}, data_version=dg.DataVersion("disabled"), metadata={"enabled": False})
    folder = bucket.local_path(f"runs/{context.run_id}/export")
    folder.mkdir(parents=True, exist_ok=True)
    candidate = dpo_checkpoint
    source = candidate["model_path"] or str(merged_model_dir(Path(base_model["path"]), Path(candidate["adapter_path"]),
                                                             folder / "merged"))
    target = folder / f"{settings.registry.model_name}-{q.quant_type}.gguf"
    info = export_gguf(Path(source), target, q.quant_type, q.tokenizer_pre, name=settings.registry.model_name)
    info.update(enabled=True, sha256=file_sha256(target), source=source)
    context.log.info(f"GGUF {q.quant_type}: {info['bytes'] / 1e6:.1f} MB, {info['quantized']} tensors quantized")
    return dg.Output(info, data_version=dg.DataVersion(info["sha256"]),
                     metadata={"path": dg.MetadataValue.path(str(target)), "bytes": info["bytes"],
                               "quant_type": q.quant_type, "sha256": info["sha256"],
                               "tensors_quantized": info["quantized"], "tensors_float": info["kept_float"]})


def _training_texts(settings, train_split: list, heldout_split: list, dpo_checkpoint: dict) -> list[str]:
    """The text every training stage actually saw: the train split, plus the preference pairs when DPO ran."""
    texts = [contamination.record_text(r) for r in train_split]
    if not dpo_checkpoint.get("dpo_skipped", True):
        held = {r["group"] for r in heldout_split}
        for pair in load_preferences(resolve(settings.dpo.preferences_path), held):
            texts.append("\n".join(m["content"] for part in ("prompt", "chosen", "rejected") for m in pair[part]))
    return texts


def _latest_data_version(context: dg.AssetExecutionContext, asset: str) -> str:
    event = context.instance.get_latest_materialization_event(dg.AssetKey(asset))
    if event is None or event.asset_materialization is None:
        return "unknown"
    return event.asset_materialization.tags.get("dagster/data_version", "unknown")


@dg.asset(
    group_name="evaluation",
    kinds={"pytorch", "mlflow"},
    description="Base, current champion and candidate scored on the same held-out examples: answer loss and "
    "perplexity, ROUGE-L with bootstrap intervals, pairwise judge in both orders, format compliance, slices, "
    "general-capability regression (lm-eval), contamination report, the GGUF's quality drop, a per-example table; "
    "an HTML report and a model card beside it.",
)
def eval_report(
    context: dg.AssetExecutionContext,
    heldout_split: list,
    train_split: list,
    base_model: dict,
    dpo_checkpoint: dict,
    quantized_model: dict,
    recipe: RecipeResource,
    registry: ModelRegistry,
    bucket: Bucket,
) -> dg.Output[dict]:
    settings = recipe.load()
    ev = settings.evaluation
    candidate = dpo_checkpoint  # the final candidate: the DPO model, or the SFT model when DPO is off
    champion = _champion_weights(context, registry, settings.registry.model_name, base_model["sha256"])
    folder = bucket.local_path(f"runs/{context.run_id}/evaluation")
    items = general.build_items(ev.general) if ev.general.enabled else None
    paths = general.write_items(items, folder / "general") if items else None
    # an adapter over the base, or a full model
    weights = Path(candidate["adapter_path"] or candidate["model_path"])
    report = evaluate(Path(base_model["path"]), weights, heldout_split, ev, champion, paths)
    report["heldout_split_version"] = dataset_version(heldout_split)

    eval_sets = {"heldout": [(r["id"], contamination.record_text(r)) for r in heldout_split],
                 "golden": [(r["id"], contamination.record_text(r)) for r in read_golden(settings.data)]}
    if items:
        eval_sets.update(general.item_texts(items))
        report["general_items_version"] = general.items_version(items)
    grams = contamination.training_ngrams(_training_texts(settings, train_split, heldout_split, candidate), ev.contamination_ngram)
    report["contamination"] = contamination.overlap_report(eval_sets, grams, ev.contamination_ngram,
                                                           settings.gate.max_contamination_overlap)
    if quantized_model.get("enabled"):
        model, tokenizer = load_gguf(Path(quantized_model["path"]))
        report["quantized"] = {**quantized_model, **quantized_drop(model, tokenizer, heldout_split, ev, report)}

    gate = settings.gate
    report["gate"] = {
        "candidate_beats_base": gate_failures(report, gate),
        "candidate_ties_or_beats_champion": champion_failures(report, gate),
        "no_general_capability_regression": general.regression_failures(
            report["general"]["base"], report["general"]["candidate"], gate.max_general_accuracy_drop,
            gate.max_general_perplexity_ratio) if "general" in report else [],
        "no_eval_contamination": contamination.contamination_failures(report["contamination"]),
    }
    report["failures"] = report["gate"]["candidate_beats_base"]

    data_versions = {a: _latest_data_version(context, a) for a in UPSTREAM_DATA}
    data_versions.update(train_split=candidate["train_split_version"], heldout_split=report["heldout_split_version"])
    title = f"{settings.registry.model_name}: {settings.name}, Dagster run {context.run_id}"
    (folder / "report.html").write_text(html_report(report, title), encoding="utf-8")
    (folder / "MODEL_CARD.md").write_text(model_card(report, settings.model_dump(), base_model, candidate, data_versions),
                                          encoding="utf-8")
    (folder / "report.json").write_text(json.dumps(report, indent=1, default=str), encoding="utf-8")
    report["artifacts_dir"] = str(folder)

    models = report["models"]
    for name, scores in models.items():
        context.log.info(f"{name}: " + ", ".join(f"{k}={v}" for k, v in scores.items()))
    run_id = candidate.get("mlflow_run_id")
    if run_id:
        registry.log_metrics(run_id, {f"eval_{m}_{k}": v for m, s in models.items() for k, v in s.items()})
    metadata = {
        "summary": dg.MetadataValue.md(markdown_summary(report)),
        "examples": report["examples"],
        "base_rouge_l": models["base"]["rouge_l"],
        "candidate_rouge_l": models["candidate"]["rouge_l"],
        "rouge_l_gain_vs_base": report["rouge_l_gain_vs_base"],
        "base_loss": models["base"]["loss"],
        "candidate_loss": models["candidate"]["loss"],
        "win_rate_vs_base": report["win_rate_vs_base"],
        "judge_win_rate_vs_base": report["judge"]["base"]["win_rate"],
        "judge_order_agreement_vs_base": report["judge"]["base"]["order_agreement"],
        "scores": table(headline_rows(report)),
        "slices": table(report["slices"]),
        "answers": table(report["table"]),
        "report_html": dg.MetadataValue.path(str(folder / "report.html")),
        "gate": dg.MetadataValue.md("\n".join(f"- {c}: {f}" for c, fs in report["gate"].items() for f in fs) or "passes"),
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


def _gate_result(eval_report: dict, check: str, passed_text: str, metadata: dict) -> dg.AssetCheckResult:
    failures = eval_report["gate"][check]
    return dg.AssetCheckResult(passed=not failures, description="; ".join(failures) or passed_text, metadata=metadata)


@dg.asset_check(asset=eval_report, blocking=True, description="The candidate beats or ties the current champion on "
                "the pairwise judge (both orders, ties half): win rate at least gate.min_win_rate_vs_champion.")
def candidate_ties_or_beats_champion(eval_report: dict, recipe: RecipeResource) -> dg.AssetCheckResult:
    judged = eval_report["judge"].get("champion")
    if judged is None:
        return dg.AssetCheckResult(passed=True, description="no champion on this base yet: nothing to beat",
                                   metadata={"champion": "none"})
    return _gate_result(eval_report, "candidate_ties_or_beats_champion",
                        f"win rate {judged['win_rate']:.3f} against the champion meets the required "
                        f"{recipe.load().gate.min_win_rate_vs_champion:.3f}",
                        {"win_rate_vs_champion": judged["win_rate"], "order_agreement": judged["order_agreement"],
                         "threshold": recipe.load().gate.min_win_rate_vs_champion, "judge": judged["judge"]})


@dg.asset_check(asset=eval_report, blocking=True, description="No catastrophic forgetting: on general English prose "
                "(lm-eval tasks in the repo) the candidate's cloze accuracy and byte perplexity stay within the "
                "recipe's tolerance of the base's.")
def no_general_capability_regression(eval_report: dict, recipe: RecipeResource) -> dg.AssetCheckResult:
    gate = recipe.load().gate
    if "general" not in eval_report:
        return dg.AssetCheckResult(passed=True, description="not measured: evaluation.general.enabled is off",
                                   metadata={"measured": False})
    g = eval_report["general"]
    return _gate_result(eval_report, "no_general_capability_regression",
                        f"within tolerance: cloze accuracy {g['base']['cloze_accuracy']:.3f} -> "
                        f"{g['candidate']['cloze_accuracy']:.3f}, byte perplexity {g['base']['byte_perplexity']:.3f} -> "
                        f"{g['candidate']['byte_perplexity']:.3f}",
                        {"base_cloze_accuracy": g["base"]["cloze_accuracy"],
                         "candidate_cloze_accuracy": g["candidate"]["cloze_accuracy"],
                         "base_byte_perplexity": g["base"]["byte_perplexity"],
                         "candidate_byte_perplexity": g["candidate"]["byte_perplexity"],
                         "max_accuracy_drop": gate.max_general_accuracy_drop,
                         "max_perplexity_ratio": gate.max_general_perplexity_ratio})


@dg.asset_check(asset=eval_report, blocking=True, description="No evaluation example (held-out, golden, general "
                "tasks) shares more than gate.max_contamination_overlap of its n-grams with the training data used.")
def no_eval_contamination(eval_report: dict) -> dg.AssetCheckResult:
    c = eval_report["contamination"]
    return _gate_result(eval_report, "no_eval_contamination",
                        f"no example above {c['max_overlap']:.0%} {c['ngram']}-gram overlap",
                        {f"{name}_max_overlap": s["max_overlap"] for name, s in c["sets"].items()}
                        | {f"{name}_contaminated": s["contaminated"] for name, s in c["sets"].items()})


def log_evaluation_artifacts(registry: ModelRegistry, run_id: str, eval_report: dict) -> None:
    """The HTML report, model card and report JSON under `evaluation/`, and the GGUF under `gguf/`, as artifacts of
    the run the registered version comes from."""
    client = registry.client()
    client.log_artifacts(run_id, eval_report["artifacts_dir"], artifact_path="evaluation")
    quantized = eval_report.get("quantized") or {}
    if quantized.get("path"):
        client.log_artifact(run_id, quantized["path"], artifact_path="gguf")
        client.set_tag(run_id, "gguf.sha256", quantized["sha256"])


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
