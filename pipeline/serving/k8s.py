"""Kubernetes manifests that serve the live versions with vLLM's OpenAI-compatible server: the adapters as
vLLM LoRA modules over one base (multi-LoRA), a fully fine-tuned version as its own Deployment; an init step
downloads the weights from the artifact store into the pod's volume."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pipeline.recipe import DeploymentRecipe

PORT = 8000
FETCH = """\
import os, sys
import mlflow
for item in sys.argv[1:]:
    uri, dest = item.split("=>")
    os.makedirs(dest, exist_ok=True)
    mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=dest)
    print("fetched", uri, "to", dest, flush=True)
"""


@dataclass(frozen=True)
class LiveVersion:
    alias: str
    version: str
    uri: str  # where the weights are (MLflow artifact URI)
    is_adapter: bool


def dns_name(text: str) -> str:
    """A DNS-1123 label from any model name."""
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return (name or "model")[:50].rstrip("-")


def _pod(name: str, labels: dict[str, str], fetch: list[str], args: list[str], settings: DeploymentRecipe) -> dict[str, Any]:
    resources = {"requests": {"cpu": "2", "memory": "8Gi"}, "limits": {"memory": "16Gi"}}
    if settings.gpus:
        resources["limits"]["nvidia.com/gpu"] = str(settings.gpus)
        resources["requests"]["nvidia.com/gpu"] = str(settings.gpus)
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": settings.namespace, "labels": labels},
        "spec": {
            "replicas": settings.replicas,
            "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
            "template": {
                "metadata": {"labels": {**labels, "app.kubernetes.io/name": name}},
                "spec": {
                    "initContainers": [{
                        "name": "fetch-weights", "image": settings.fetch_image,
                        "command": ["python", "-c", FETCH, *fetch],
                        "envFrom": [{"secretRef": {"name": settings.tracking_secret}}],
                        "volumeMounts": [{"name": "models", "mountPath": "/models"}],
                    }],
                    "containers": [{
                        "name": "vllm", "image": settings.vllm_image,
                        "command": ["python3", "-m", "vllm.entrypoints.openai.api_server"], "args": args,
                        "ports": [{"name": "http", "containerPort": PORT}],
                        "readinessProbe": {"httpGet": {"path": "/health", "port": PORT}, "periodSeconds": 10},
                        "livenessProbe": {"httpGet": {"path": "/health", "port": PORT}, "initialDelaySeconds": 120,
                                          "periodSeconds": 30},
                        "resources": resources,
                        "volumeMounts": [{"name": "models", "mountPath": "/models", "readOnly": True},
                                         {"name": "shm", "mountPath": "/dev/shm"}],
                    }],
                    "volumes": [{"name": "models", "emptyDir": {}},
                                {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}}],
                },
            },
        },
    }


def _service(name: str, labels: dict[str, str], namespace: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {"selector": {"app.kubernetes.io/name": name},
                     "ports": [{"name": "http", "port": PORT, "targetPort": "http", "protocol": "TCP"}]}}


def render(model_name: str, live: list[LiveVersion], base_uri: str, settings: DeploymentRecipe) -> list[dict[str, Any]]:
    """Deployment + Service for the adapters over the base, and one pair per fully fine-tuned live version.
    vLLM serves each adapter under `<model>-<alias>` (and `<model>-v<version>`), so clients pick the alias."""
    app = dns_name(model_name)
    labels = {"app.kubernetes.io/part-of": app, "app.kubernetes.io/managed-by": "llm-finetune-pipeline"}
    objects: list[dict[str, Any]] = []
    adapters = [v for v in live if v.is_adapter]
    if adapters:
        name = f"{app}-vllm"
        fetch = [f"{base_uri}=>/models/base"] + [f"{v.uri}=>/models/adapters/v{v.version}" for v in adapters]
        modules = []
        for v in adapters:
            modules += [f"{model_name}-{v.alias}=/models/adapters/v{v.version}", f"{model_name}-v{v.version}=/models/adapters/v{v.version}"]
        args = ["--model", "/models/base", "--served-model-name", model_name, "--host", "0.0.0.0", "--port", str(PORT),
                "--enable-lora", "--max-loras", str(len(adapters)), "--max-lora-rank", str(settings.max_lora_rank),
                "--lora-modules", *modules]
        version_labels = {**labels, **{f"llm.pipeline/{v.alias}": v.version for v in adapters}}
        objects += [_pod(name, version_labels, fetch, args, settings), _service(name, labels, settings.namespace)]
    for v in (v for v in live if not v.is_adapter):
        name = f"{app}-vllm-v{v.version}"
        args = ["--model", f"/models/v{v.version}", "--served-model-name", f"{model_name}-{v.alias}", f"{model_name}-v{v.version}",
                "--host", "0.0.0.0", "--port", str(PORT)]
        objects += [_pod(name, {**labels, f"llm.pipeline/{v.alias}": v.version}, [f"{v.uri}=>/models/v{v.version}"], args, settings),
                    _service(name, labels, settings.namespace)]
    return objects
