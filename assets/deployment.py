"""What is live, and the Kubernetes manifests that serve it with vLLM (multi-LoRA over one base)."""


import hashlib
import json

import dagster as dg
import yaml

from pipeline.serving.k8s import LiveVersion, render
from resources import Bucket, ModelRegistry, RecipeResource

LIVE_ALIASES = ("champion", "canary")


def live_versions(registry: ModelRegistry, name: str) -> list[LiveVersion]:
    """The champion and canary versions the registry holds now, with their weights' URIs."""
    live = []
    for alias in LIVE_ALIASES:
        version = registry.version_by_alias(name, alias)
        if version is not None:
            full = version.tags.get("training.method") == "full" or version.source.rstrip("/").endswith("/model")
            live.append(LiveVersion(alias, str(version.version), version.source, is_adapter=not full))
    return live


@dg.asset(
    group_name="deployment",
    deps=["registry_entry"],
    kinds={"kubernetes", "vllm"},
    description="What is live (the registry's champion and canary) and the Kubernetes manifests that serve the same "
    "weights with vLLM's OpenAI-compatible server: adapters as LoRA modules over one base, a fully fine-tuned version "
    "as its own Deployment, an init step that downloads them. Written to deploy/<model>/manifests.yaml in the bucket. "
    "Locally, `python -m pipeline serve` serves the same versions.",
)
def deployment(context: dg.AssetExecutionContext, recipe: RecipeResource, registry: ModelRegistry,
               bucket: Bucket) -> dg.Output[dict]:
    settings = recipe.load()
    name = settings.registry.model_name
    live = live_versions(registry, name)
    if not any(v.alias == "champion" for v in live):  # nothing registered yet, or the gate stopped the first model
        context.log.warning(f"{name} has no champion in the registry: nothing is live, no manifests rendered")
        return dg.Output({"model_name": name, "live": [], "traffic_share": {}, "manifests": None, "objects": []},
                         data_version=dg.DataVersion("nothing-live"), metadata={"live": "nothing is live"})
    deploy = settings.serving.deployment
    objects = render(name, live, deploy.base_model_uri, deploy)
    text = yaml.safe_dump_all(objects, sort_keys=False)
    key = f"deploy/{name}/manifests.yaml"
    uri = bucket.write_bytes(key, text.encode())
    digest = hashlib.sha256(text.encode()).hexdigest()
    shares = {"champion": 1 - settings.serving.canary_share, "canary": settings.serving.canary_share}
    if not any(v.alias == "canary" for v in live):
        shares = {"champion": 1.0}
    value = {"model_name": name, "live": [v.__dict__ for v in live], "traffic_share": shares, "manifests": uri,
             "kubernetes_version": deploy.kubernetes_version, "objects": [f"{o['kind']}/{o['metadata']['name']}" for o in objects]}
    rows = "\n".join(f"| {v.alias} | {v.version} | {'adapter' if v.is_adapter else 'full model'} | {shares.get(v.alias, 0):.0%} |"
                     for v in live)
    return dg.Output(value, data_version=dg.DataVersion(digest), metadata={
        "live": dg.MetadataValue.md("| alias | version | weights | traffic |\n|---|---|---|---|\n" + rows),
        "manifests": dg.MetadataValue.path(uri),
        "objects": dg.MetadataValue.json(value["objects"]),
        "canary_share": settings.serving.canary_share,
    })
