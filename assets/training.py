"""Training assets: the job runs in its own process through the launcher, and reports back via Pipes."""


import base64
import json
from pathlib import Path

import dagster as dg

from assets.feedback import FEEDBACK_WINDOW
from assets.metadata import table
from pipeline.curation.steps import read_golden
from pipeline.feedback.window import feedback_dpo_rows
from pipeline.curation.records import dataset_version
from pipeline.paths import resolve
from pipeline.training.monitoring import loss_curve_png
from resources import Bucket, ModelRegistry, RecipeResource, TrainingLauncher


def training_metadata(result: dict, registry: ModelRegistry) -> dict:
    """The run's numbers, loss curve (table and plot), weights and MLflow link as Dagster metadata."""
    history = result.pop("log_history")
    tokens_per_s = result["tokens_seen"] / result["train_runtime_s"] if result["train_runtime_s"] else 0.0
    metadata = {
        "method": result["method"],
        "global_step": result["global_step"],
        "resumed_from": result["resumed_from"] or "(fresh start)",
        "train_runtime_s": result["train_runtime_s"],
        "train_examples": result["train_examples"],
        "tokens_seen": result["tokens_seen"],
        "tokens_per_second": round(tokens_per_s, 1),
        "peak_memory_mb": result["peak_memory_mb"],
        "weights_sha256": result["weights_sha256"],
        "mlflow_run_id": result.get("mlflow_run_id", ""),
        "loss_curve": table([{"step": h.get("step", 0), "loss": h["loss"], "learning_rate": h.get("learning_rate"),
                              "grad_norm": h.get("grad_norm")} for h in history if "loss" in h]),
    }
    evals = [{"step": h.get("step", 0), "eval_loss": h["eval_loss"]} for h in history if "eval_loss" in h]
    if evals:
        metadata["eval_loss_curve"] = table(evals)
    for key in ("adapter_path", "model_path"):
        if result[key]:
            metadata[key] = dg.MetadataValue.path(result[key])
    png = loss_curve_png(history)
    if png:
        metadata["loss_plot"] = dg.MetadataValue.md(f"![loss curve](data:image/png;base64,{base64.b64encode(png).decode()})")
    if result["train_loss"] is not None:
        metadata["train_loss"] = result["train_loss"]
    if result.get("phases"):  # seconds per phase and the compile decision: what the run waited for, and why
        metadata["phases"] = dg.MetadataValue.json(result["phases"])
    link = registry.run_link(result["mlflow_run_id"]) if result.get("mlflow_run_id") else None
    if link:
        metadata["mlflow_run"] = dg.MetadataValue.url(link)
    return metadata


def preference_file(settings, feedback_window: dict | None, heldout_split: list, workdir: Path) -> tuple[Path, dict]:
    """The seed preference pairs, plus the feedback window's curated pairs (decontaminated against held-out and
    golden examples, copies of seed pairs dropped) when a window was built; returns the file and its books."""
    seed_path = resolve(settings.dpo.preferences_path)
    if not feedback_window:
        return seed_path, {"feedback_pairs": 0}
    seed_rows = [json.loads(line) for line in seed_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows, dropped = feedback_dpo_rows(feedback_window["pairs"], seed_rows, heldout_split, read_golden(settings.data),
                                      settings.data.near_dup)
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "preferences.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in seed_rows + rows), encoding="utf-8")
    return path, {"seed_pairs": len(seed_rows), "feedback_pairs_in": len(feedback_window["pairs"]),
                  "feedback_pairs": len(rows), "feedback_pairs_dropped": table([{"reason": k, "count": v} for k, v in dropped.items()])}


def _launch(context: dg.AssetExecutionContext, stage: str, spec: dict, workdir: Path, bucket: Bucket,
            launcher: TrainingLauncher) -> dict:
    """Run one training stage; with a remote store, mirror checkpoints there and upload the weights it made."""
    prefix = f"runs/{context.run_id}/{stage}"
    # compiled kernels are shared by every run on the same torch, GPU and model shape (pipeline.training.compile_cache)
    spec.setdefault("compile_cache_uri", bucket.uri("compile-cache"))
    if bucket.is_remote:  # checkpoints mirrored to the store, so a retry on another machine resumes
        spec["checkpoint_uri"] = bucket.uri(f"{prefix}/checkpoints")
        spec["base_uri"] = bucket.uri(f"models/base/{Path(spec['base_path']).name}")  # where base_model put it
    # with a remote store a pod (kubernetes mode) exchanges its inputs and weights under the stage's prefix
    remote = {"remote_prefix": bucket.uri(prefix)} if bucket.is_remote else {}
    result = launcher.launch(context, spec, workdir, **remote)
    if bucket.is_remote:
        for key in ("adapter_path", "model_path"):
            uri_key = key.replace("_path", "_uri")
            if result[key] and not result.get(uri_key):  # a pod has already published its weights
                result[uri_key] = bucket.upload_dir(Path(result[key]), f"{prefix}/{Path(result[key]).name}")
    return result


@dg.asset(
    group_name="training",
    kinds={"pytorch", "mlflow"},
    description="A LoRA/QLoRA adapter (and the merged model) or a fully fine-tuned model, trained with TRL's "
    "SFTTrainer on train_split (loss on the answer turn only) in a separate process (`python -m pipeline.training`) "
    "launched through the TrainingLauncher. Checkpoints go to runs/<run_id>/sft/checkpoints, so a retry of the "
    "same run resumes from the latest complete one.",
    retry_policy=dg.RetryPolicy(max_retries=1, delay=5),
)
def sft_checkpoint(
    context: dg.AssetExecutionContext,
    train_split: list,
    base_model: dict,
    recipe: RecipeResource,
    bucket: Bucket,
    launcher: TrainingLauncher,
    registry: ModelRegistry,
) -> dg.Output[dict]:
    settings = recipe.load()
    # keyed by the run, not the attempt: a retry finds the checkpoints the killed attempt left
    workdir = bucket.local_path(f"runs/{context.run_id}/sft")
    workdir.mkdir(parents=True, exist_ok=True)
    train_path = workdir / "train.jsonl"
    train_path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in train_split))
    train_version = dataset_version(train_split)
    registry.experiment_id(settings.registry.experiment)
    spec = {
        "train_path": str(train_path),
        "base_path": base_model["path"],
        "output_dir": str(workdir),
        "training": settings.training.model_dump(),
        "mlflow": {
            "tracking_uri": registry.uri,
            "experiment": settings.registry.experiment,
            "run_name": f"sft-{context.run_id[:8]}",
            "tags": {"dagster.run_id": context.run_id, "dagster.asset": "sft_checkpoint",
                     "data.train_split": train_version, "base_model.sha256": base_model["sha256"],
                     "recipe.fingerprint": settings.fingerprint()},
        },
    }
    result = _launch(context, "sft", spec, workdir, bucket, launcher)
    result["train_split_version"] = train_version
    metadata = training_metadata(result, registry)
    return dg.Output(result, data_version=dg.DataVersion(result["weights_sha256"]), metadata=metadata)


@dg.asset(
    group_name="training",
    kinds={"pytorch", "mlflow"},
    description="The final candidate. With `dpo.enabled`, DPO (TRL's DPOTrainer) on preference pairs from families "
    "outside the held-out split, starting from the SFT model with the SFT model as reference; otherwise the SFT "
    "checkpoint itself, passed through with `dpo_skipped` in its metadata.",
    retry_policy=dg.RetryPolicy(max_retries=1, delay=5),
    ins={"feedback_window": FEEDBACK_WINDOW},
)
def dpo_checkpoint(
    context: dg.AssetExecutionContext,
    sft_checkpoint: dict,
    heldout_split: list,
    base_model: dict,
    recipe: RecipeResource,
    bucket: Bucket,
    launcher: TrainingLauncher,
    registry: ModelRegistry,
    feedback_window: dict | None,
) -> dg.Output[dict]:
    settings = recipe.load()
    if not settings.dpo.enabled:
        return dg.Output({**sft_checkpoint, "dpo_skipped": True}, data_version=dg.DataVersion(sft_checkpoint["weights_sha256"]),
                         metadata={"dpo_skipped": True, "stage": "sft (dpo.enabled is false)",
                                   "weights_sha256": sft_checkpoint["weights_sha256"]})
    workdir = bucket.local_path(f"runs/{context.run_id}/dpo")
    preferences, feedback_books = preference_file(settings, feedback_window, heldout_split, workdir)
    spec = {
        "stage": "dpo",
        "train_path": str(preferences),
        "base_path": base_model["path"],
        "output_dir": str(workdir),
        "training": settings.training.model_dump(),
        "dpo": settings.dpo.model_dump(),
        "sft_result": sft_checkpoint,
        "exclude_groups": sorted({r["group"] for r in heldout_split}),  # held-out families never reach training
        "mlflow": {
            "tracking_uri": registry.uri,
            "experiment": settings.registry.experiment,
            "run_name": f"dpo-{context.run_id[:8]}",
            "tags": {"dagster.run_id": context.run_id, "dagster.asset": "dpo_checkpoint",
                     "sft.weights_sha256": sft_checkpoint["weights_sha256"], "base_model.sha256": base_model["sha256"],
                     "recipe.fingerprint": settings.fingerprint()},
        },
    }
    result = _launch(context, "dpo", spec, workdir, bucket, launcher)
    result.update(dpo_skipped=False, train_split_version=sft_checkpoint["train_split_version"],
                  sft_weights_sha256=sft_checkpoint["weights_sha256"])
    metadata = {"stage": "dpo", "dpo_skipped": False, **feedback_books, **training_metadata(result, registry)}
    return dg.Output(result, data_version=dg.DataVersion(result["weights_sha256"]), metadata=metadata)
