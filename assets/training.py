"""Training assets: the job runs in its own process through the launcher, and reports back via Pipes."""


import json
from pathlib import Path

import dagster as dg

from assets.metadata import table
from pipeline.curation.records import dataset_version
from resources import Bucket, ModelRegistry, RecipeResource, TrainingLauncher


@dg.asset(
    group_name="training",
    kinds={"pytorch", "mlflow"},
    description="A LoRA adapter trained with TRL's SFTTrainer on train_split (loss on the answer turn only), "
    "in a separate process (`python -m pipeline.training`) launched through the TrainingLauncher.",
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
    result = launcher.launch(context, spec, workdir)
    if bucket.is_remote:
        result["adapter_uri"] = bucket.upload_dir(Path(result["adapter_path"]), f"runs/{context.run_id}/sft/adapter")
    result["train_split_version"] = train_version
    history = result.pop("log_history")
    tokens_per_s = result["tokens_seen"] / result["train_runtime_s"] if result["train_runtime_s"] else 0.0
    metadata = {
        "global_step": result["global_step"],
        "train_runtime_s": result["train_runtime_s"],
        "train_examples": result["train_examples"],
        "tokens_seen": result["tokens_seen"],
        "tokens_per_second": round(tokens_per_s, 1),
        "adapter_sha256": result["adapter_sha256"],
        "adapter_path": dg.MetadataValue.path(result["adapter_path"]),
        "mlflow_run_id": result.get("mlflow_run_id", ""),
        "loss_curve": table([{"step": h.get("step", 0), "loss": h.get("loss"), "learning_rate": h.get("learning_rate")}
                             for h in history if "loss" in h]),
    }
    if result["train_loss"] is not None:
        metadata["train_loss"] = result["train_loss"]
    link = registry.run_link(result["mlflow_run_id"]) if result.get("mlflow_run_id") else None
    if link:
        metadata["mlflow_run"] = dg.MetadataValue.url(link)
    return dg.Output(result, data_version=dg.DataVersion(result["adapter_sha256"]), metadata=metadata)
