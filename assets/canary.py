"""The canary decision sensor: compares the live canary with the champion on the feedback since the canary started
and promotes it, rolls it back, or waits (pipeline/serving/canary_stats.py states the test). Every move is recorded
on the registry version (who, why, evidence, time) and as an observation of the `deployment` asset."""


import json

import dagster as dg

from pipeline.serving.canary import apply, evaluate_canary
from pipeline.serving.canary_stats import WAIT
from resources import Bucket, ModelRegistry, RecipeResource

SENSOR_NAME = "canary_decision"
ACTOR = f"dagster sensor {SENSOR_NAME}"


def list_keys(bucket: Bucket):
    """Keys under a prefix of the bucket (S3 listing, or the local folder)."""
    return lambda prefix: [key for key, _ in bucket.list_objects(prefix)]


def decision_events(model_name: str, action: str, reason: str, moves: list[dict], evidence: dict) -> list[dg.AssetObservation]:
    return [dg.AssetObservation(asset_key="deployment", metadata={
        "action": action, "model_name": model_name, "reason": reason, "by": ACTOR,
        "moves": dg.MetadataValue.json(moves), "evidence": dg.MetadataValue.json(json.loads(json.dumps(evidence, default=str))),
    })]


@dg.sensor(name=SENSOR_NAME, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Promotes the canary to champion when live feedback shows it at least as good as the champion "
           "with the configured confidence, rolls it back when worse, waits otherwise (serving.canary in the recipe).")
def canary_decision_sensor(context: dg.SensorEvaluationContext, bucket: Bucket, registry: ModelRegistry,
                           recipe: RecipeResource) -> dg.SensorResult:
    settings = recipe.load()
    name = settings.registry.model_name
    decision = evaluate_canary(registry, name, list_keys(bucket), bucket.read_bytes, settings.serving.canary)
    if decision is None:
        return dg.SensorResult(skip_reason=f"{name}: no canary is live")
    if decision.action == WAIT:
        context.log.info(decision.reason)
        return dg.SensorResult(skip_reason=decision.reason)
    moves = apply(registry, name, decision, actor=ACTOR)
    context.log.info(f"{decision.action} v{decision.evidence['canary_version']}: {decision.reason}")
    return dg.SensorResult(asset_events=decision_events(name, decision.action, decision.reason, moves, decision.evidence))
