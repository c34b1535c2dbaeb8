"""Run one training job from a JSON spec, reporting to Dagster Pipes when launched by Dagster and to MLflow.

    python -m pipeline.training --spec path/to/spec.json
    python -m pipeline.training --spec-env PIPELINE_TRAINING_SPEC   # a pod: the spec JSON in a variable

The spec holds the input paths, the training recipe and the MLflow run to log to (see `TrainingSpec`).
The result comes back to the launching asset as a Pipes custom message and is also written to
`<output_dir>/result.json`, so a run outside Dagster leaves the same record. Inputs given as `s3://` URIs are
fetched first, and with `output_uri` the weights are published there (a pod without a shared disk).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from pipeline.recipe import DpoRecipe, TrainingRecipe


class MlflowTarget(BaseModel):
    tracking_uri: str
    experiment: str
    run_name: str
    tags: dict[str, str] = {}


class TrainingSpec(BaseModel):
    stage: Literal["sft", "dpo"] = "sft"
    train_path: str  # sft: canonical chat records; dpo: preference pairs
    base_path: str
    output_dir: str
    training: TrainingRecipe
    dpo: DpoRecipe | None = None  # dpo stage only
    sft_result: dict[str, Any] | None = None  # dpo stage only: the SFT result it starts from
    exclude_groups: list[str] = []  # dpo stage only: held-out families
    checkpoint_uri: str | None = None  # s3:// prefix that mirrors the checkpoints, so another machine can resume
    output_uri: str | None = None  # s3:// prefix where rank 0 publishes the adapter and model (no shared disk)
    compile_cache_uri: str | None = None  # s3:// prefix or folder of compiled-kernel caches, shared across runs
    mlflow: MlflowTarget | None = None


def _flatten(prefix: str, value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out.update(_flatten(f"{prefix}.{k}" if prefix else k, v))
        return out
    return {prefix: value}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m pipeline.training", description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--spec", type=Path, help="JSON file with a TrainingSpec")
    source.add_argument("--spec-env", metavar="NAME", help="environment variable holding the TrainingSpec JSON")
    args = parser.parse_args(argv)
    from pipeline.training.remote import publish_outputs, spec_from_env, stage_inputs

    text = args.spec.read_text() if args.spec else spec_from_env(args.spec_env)
    spec = TrainingSpec.model_validate_json(text)
    # under torchrun every rank runs this; only rank 0 talks to Dagster and MLflow, so each line is reported once
    rank_zero = int(os.environ.get("RANK", "0")) == 0

    from dagster_pipes import PipesEnvVarParamsLoader, open_dagster_pipes

    from pipeline.training.distributed import die_with_parent
    from pipeline.training.methods import check_method_runs_here

    if "LOCAL_RANK" in os.environ:
        die_with_parent()  # a rank must not outlive its torchrun: a retry would train beside it

    with ExitStack() as stack:
        is_pipes = rank_zero and PipesEnvVarParamsLoader().is_dagster_pipes_process()
        pipes = stack.enter_context(open_dagster_pipes()) if is_pipes else None
        check_method_runs_here(spec.training)  # e.g. QLoRA without a GPU: fail before loading anything
        spec = TrainingSpec.model_validate(stage_inputs(spec.model_dump()))  # s3:// inputs to this machine's disk
        log = pipes.log if pipes else logging.getLogger("pipeline.training")
        if not pipes:
            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

        mlflow = None
        if spec.mlflow and rank_zero:
            import mlflow

            mlflow.set_tracking_uri(spec.mlflow.tracking_uri)
            mlflow.set_experiment(spec.mlflow.experiment)
            run = stack.enter_context(mlflow.start_run(run_name=spec.mlflow.run_name, tags=spec.mlflow.tags))
            mlflow.log_params(_flatten("training", spec.training.model_dump()))

        def report(message: str, metrics: dict[str, Any]) -> None:
            if not rank_zero:
                return
            log.info(message)
            if mlflow and metrics:
                step = int(metrics.get("step", 0))
                mlflow.log_metrics({k: v for k, v in metrics.items() if k != "step"}, step=step)

        if spec.stage == "dpo":
            from pipeline.training.dpo import load_preferences, train_dpo

            pairs = load_preferences(Path(spec.train_path), set(spec.exclude_groups))
            result = train_dpo(pairs, Path(spec.base_path), spec.sft_result, Path(spec.output_dir), spec.training,
                               spec.dpo or DpoRecipe(), report, spec.checkpoint_uri)
        else:
            from pipeline.training.sft import train_sft

            trained = train_sft(Path(spec.train_path), Path(spec.base_path), Path(spec.output_dir), spec.training, report,
                                spec.checkpoint_uri, compile_cache_uri=spec.compile_cache_uri)
            result = trained.to_dict() if trained else {}
        if not rank_zero:
            return result
        if spec.output_uri:
            result = publish_outputs(result, spec.output_uri)
            report(f"published the weights under {spec.output_uri}", {})
        if mlflow:
            result["mlflow_run_id"] = run.info.run_id
            if result["train_loss"] is not None:
                mlflow.log_metric("train_loss_final", result["train_loss"])
        Path(spec.output_dir, "result.json").write_text(json.dumps(result, indent=2))
        if pipes:
            pipes.report_custom_message(result)
    return result


if __name__ == "__main__":
    from pipeline.training.process_start import pause_collector

    pause_collector()  # until the trainer is built (train_sft and train_dpo resume it)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
    from pipeline.training.process_exit import exit_without_teardown

    exit_without_teardown()  # everything is written and closed; the interpreter's teardown would only cost seconds
