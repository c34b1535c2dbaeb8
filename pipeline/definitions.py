"""The code location: every asset, check, job and resource, with resources chosen by deployment.

PIPELINE_DEPLOYMENT picks the resource set: `local` (default, the embedded laptop setup) or `prod`
(S3 bucket and a remote MLflow server, both read from the environment when the run starts).
"""

from __future__ import annotations

import os

import dagster as dg

from assets import curation, deployment, evaluation, model, registry, sources, split, training
from assets.automation import build_automation
from assets.feedback import build_feedback_assets, feedback_partitions
from pipeline.paths import resolve, store_root
from pipeline.recipe import FeedbackRecipe, Recipe
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


def feedback_settings() -> FeedbackRecipe:
    """The recipe's feedback section, read when the code location loads: partitions and mappings are part of the graph."""
    return Recipe.from_yaml(resolve(os.environ.get("PIPELINE_RECIPE", "recipes/default.yaml"))).feedback


def feedback_graph(feedback: FeedbackRecipe) -> tuple[list, dict]:
    """The feedback assets and every trigger (jobs, sensor, schedule) built from one feedback section."""
    assets = build_feedback_assets(feedback)
    return assets, build_automation(feedback, feedback_partitions(feedback), assets, retrain_tags={GPU_RUN_TAG: "true"})


feedback_assets, automation = feedback_graph(feedback_settings())
all_assets = [*dg.load_assets_from_modules(STAGE_MODULES), *feedback_assets]
all_checks = dg.load_asset_checks_from_modules(STAGE_MODULES)

finetune_job = dg.define_asset_job(
    "finetune",
    selection=dg.AssetSelection.all() - dg.AssetSelection.groups("feedback"),
    description="Raw examples to a gated, registered model: the whole graph on the seed data (plus the last feedback "
    "window, if one was built; the retraining job builds it).",
    tags={GPU_RUN_TAG: "true"},  # deploy/dagster.yaml limits how many of these run at once
)


def build_definitions(deployment: str | None = None) -> dg.Definitions:
    deployment = deployment or os.environ.get("PIPELINE_DEPLOYMENT", "local")
    if deployment not in RESOURCES_BY_DEPLOYMENT:
        raise ValueError(f"PIPELINE_DEPLOYMENT={deployment!r}; expected one of {sorted(RESOURCES_BY_DEPLOYMENT)}")
    return dg.Definitions(
        assets=all_assets,
        asset_checks=all_checks,
        jobs=[finetune_job, *automation["jobs"]],
        sensors=automation["sensors"],
        schedules=automation["schedules"],
        resources=RESOURCES_BY_DEPLOYMENT[deployment](),
    )


def definitions_with(feedback: FeedbackRecipe, resources: dict) -> dg.Definitions:
    """The same graph with another feedback section and resources (tests, the feedback demo)."""
    assets, triggers = feedback_graph(feedback)
    return dg.Definitions(assets=[*dg.load_assets_from_modules(STAGE_MODULES), *assets], asset_checks=all_checks,
                          jobs=[finetune_job, *triggers["jobs"]], sensors=triggers["sensors"],
                          schedules=triggers["schedules"], resources=resources)


defs = build_definitions()
