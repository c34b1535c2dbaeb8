"""The code location: every asset, check, job and resource, with resources chosen by deployment.

PIPELINE_DEPLOYMENT picks the resource set: `local` (default, the embedded laptop setup) or `prod`
(S3 bucket and a remote MLflow server, both read from the environment when the run starts).
"""

from __future__ import annotations

import os

import dagster as dg

from assets import curation, deployment, evaluation, model, registry, sources, split, training
from assets.canary import canary_decision_sensor
from pipeline.paths import store_root
from resources import Bucket, BucketJsonIOManager, ModelRegistry, RecipeResource, TrainingLauncher

GPU_RUN_TAG = "pipeline/gpu"  # runs that train; the QueuedRunCoordinator's tag limit counts them
STAGE_MODULES = [sources, curation, split, model, training, evaluation, registry, deployment]


def local_resources() -> dict:
    root = store_root()
    bucket = Bucket(root=root)
    return {
        "bucket": bucket,
        "io_manager": BucketJsonIOManager(bucket=bucket),
        "recipe": RecipeResource(path=os.environ.get("PIPELINE_RECIPE", "recipes/default.yaml")),
        "registry": ModelRegistry(tracking_uri=f"sqlite:///{root}/mlflow/mlflow.db", artifact_root=f"{root}/mlflow/artifacts",
                                  ui_url=os.environ.get("MLFLOW_UI_URL")),
        "launcher": TrainingLauncher(),
    }


def prod_resources() -> dict:
    bucket = Bucket(root=dg.EnvVar("PIPELINE_BUCKET"), endpoint_url=os.environ.get("AWS_ENDPOINT_URL"))
    return {
        "bucket": bucket,
        "io_manager": BucketJsonIOManager(bucket=bucket),
        "recipe": RecipeResource(path=os.environ.get("PIPELINE_RECIPE", "recipes/default.yaml")),
        "registry": ModelRegistry(tracking_uri=dg.EnvVar("MLFLOW_TRACKING_URI"), artifact_root=dg.EnvVar("MLFLOW_ARTIFACT_ROOT"),
                                  ui_url=os.environ.get("MLFLOW_UI_URL")),
        "launcher": TrainingLauncher.from_env(),  # PIPELINE_LAUNCHER: GPU pods / TrainJobs on Kubernetes
    }


RESOURCES_BY_DEPLOYMENT = {"local": local_resources, "prod": prod_resources}

all_assets = dg.load_assets_from_modules(STAGE_MODULES)
all_checks = dg.load_asset_checks_from_modules(STAGE_MODULES)

finetune_job = dg.define_asset_job(
    "finetune",
    selection=dg.AssetSelection.all(),
    description="Raw examples to a gated, registered model: the whole graph.",
    tags={GPU_RUN_TAG: "true"},  # deploy/dagster.yaml limits how many of these run at once
)


def build_definitions(deployment: str | None = None) -> dg.Definitions:
    deployment = deployment or os.environ.get("PIPELINE_DEPLOYMENT", "local")
    if deployment not in RESOURCES_BY_DEPLOYMENT:
        raise ValueError(f"PIPELINE_DEPLOYMENT={deployment!r}; expected one of {sorted(RESOURCES_BY_DEPLOYMENT)}")
    return dg.Definitions(
        assets=all_assets,
        asset_checks=all_checks,
        jobs=[finetune_job],
        sensors=[canary_decision_sensor],
        resources=RESOURCES_BY_DEPLOYMENT[deployment](),
    )


defs = build_definitions()
