"""The deployment asset records what is live and renders vLLM manifests that validate against Kubernetes' schemas."""

from __future__ import annotations

import dagster as dg
import pytest
import yaml

from assets.deployment import deployment
from pipeline.evaluation.gate import GATE_PASSED_TAG
from pipeline.k8s.validate import KUBERNETES_VERSION, ManifestInvalid, validate_core
from pipeline.recipe import DeploymentRecipe
from pipeline.serving.k8s import LiveVersion, render
from resources import Bucket, ModelRegistry, RecipeResource
from tests.conftest import tiny_recipe



def validate_all(objects: list[dict], version: str = KUBERNETES_VERSION) -> None:
    """Each object against the core schemas of that Kubernetes version, strict (the shared helper of pipeline.k8s)."""
    for obj in objects:
        validate_core(obj, version)


def test_adapters_share_one_vllm_deployment_and_a_full_model_gets_its_own():
    live = [LiveVersion("champion", "4", "s3://mlflow/1/abc/artifacts/adapter", True),
            LiveVersion("canary", "5", "s3://mlflow/1/def/artifacts/model", False)]
    objects = render("debian-package-summarizer", live, "s3://models/base", DeploymentRecipe(gpus=1))
    validate_all(objects)
    kinds = [(o["kind"], o["metadata"]["name"]) for o in objects]
    assert kinds == [("Deployment", "debian-package-summarizer-vllm"), ("Service", "debian-package-summarizer-vllm"),
                     ("Deployment", "debian-package-summarizer-vllm-v5"), ("Service", "debian-package-summarizer-vllm-v5")]
    pod = objects[0]["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    assert "--enable-lora" in args and "debian-package-summarizer-champion=/models/adapters/v4" in args
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["initContainers"][0]["command"][-2:] == ["s3://models/base=>/models/base",
                                                         "s3://mlflow/1/abc/artifacts/adapter=>/models/adapters/v4"]


def test_two_adapters_are_two_lora_modules_on_one_base():
    live = [LiveVersion("champion", "1", "file:///a/adapter", True), LiveVersion("canary", "2", "file:///b/adapter", True)]
    objects = render("m", live, "s3://models/base", DeploymentRecipe(gpus=0))
    validate_all(objects)
    assert len(objects) == 2
    args = objects[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--max-loras") + 1] == "2"
    assert {"m-champion=/models/adapters/v1", "m-canary=/models/adapters/v2"} <= set(args)


def test_the_validator_catches_a_broken_manifest():
    (deployment_obj, _) = render("m", [LiveVersion("champion", "1", "u", True)], "b", DeploymentRecipe())
    deployment_obj["spec"]["replicas"] = "two"
    with pytest.raises(ManifestInvalid, match="replicas"):
        validate_all([deployment_obj])


def test_deployment_asset_records_what_is_live_and_writes_valid_manifests(tmp_path, tiny_model_dir):
    registry = ModelRegistry(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", artifact_root=f"{tmp_path}/art")
    client = registry.client()
    recipe = tiny_recipe(tiny_model_dir, serving={"canary_share": 0.2})
    name = recipe.registry.model_name
    client.create_registered_model(name)
    run_id = client.create_run(registry.experiment_id("e")).info.run_id
    for _ in range(2):
        client.create_model_version(name, source=f"file://{tmp_path}/art/adapter", run_id=run_id, tags={GATE_PASSED_TAG: "true"})
    registry.move_alias(name, "champion", "1", actor="test", reason="first")
    registry.move_alias(name, "canary", "2", actor="test", reason="gated")
    bucket = Bucket(root=str(tmp_path / "bucket"))
    result = dg.materialize([deployment], resources={"registry": registry, "bucket": bucket, "recipe": RecipeResource.of(recipe)},
                            instance=dg.DagsterInstance.ephemeral(), selection=[deployment])
    assert result.success
    value = result.output_for_node("deployment")
    assert [(v["alias"], v["version"]) for v in value["live"]] == [("champion", "1"), ("canary", "2")]
    assert value["traffic_share"] == {"champion": 0.8, "canary": 0.2}
    objects = list(yaml.safe_load_all(bucket.read_bytes(f"deploy/{name}/manifests.yaml")))
    validate_all(objects, recipe.serving.deployment.kubernetes_version)
    assert value["objects"] == [f"{o['kind']}/{o['metadata']['name']}" for o in objects]
