"""Print the cluster-wide Kubeflow Trainer runtime for the launcher settings, validated:

    python -m pipeline.k8s deploy/k8s/cluster.yaml         # PIPELINE_LAUNCHER from the pipeline-env ConfigMap there
    PIPELINE_LAUNCHER='{"image": "registry/llm-pipeline:1.0"}' python -m pipeline.k8s
"""

import json
import os
import sys
from pathlib import Path

import yaml

from pipeline.k8s.pod import PodSettings
from pipeline.k8s.trainjob import DEFAULT_RUNTIME, cluster_training_runtime
from pipeline.k8s.validate import load_manifests, validate_manifest


def runtime_from_launcher_json(text: str) -> dict:
    """The ClusterTrainingRuntime for a TrainingLauncher's JSON fields (the pod ones; the rest are ignored)."""
    fields = json.loads(text)
    settings = PodSettings(**{k: v for k, v in fields.items() if k in PodSettings.model_fields and k != "python"})
    manifest = cluster_training_runtime(settings, fields.get("runtime", DEFAULT_RUNTIME))
    validate_manifest(manifest)
    return manifest


def launcher_json_from_file(path: Path) -> str:
    """PIPELINE_LAUNCHER from the first ConfigMap in `path` that sets it."""
    for manifest in load_manifests(path):
        if manifest.get("kind") == "ConfigMap" and "PIPELINE_LAUNCHER" in manifest.get("data", {}):
            return manifest["data"]["PIPELINE_LAUNCHER"]
    raise SystemExit(f"{path}: no ConfigMap with a PIPELINE_LAUNCHER key")


if __name__ == "__main__":
    text = launcher_json_from_file(Path(sys.argv[1])) if len(sys.argv) > 1 else os.environ.get("PIPELINE_LAUNCHER")
    if not text:
        sys.exit("usage: python -m pipeline.k8s deploy/k8s/cluster.yaml (or set PIPELINE_LAUNCHER to the launcher's JSON)")
    sys.stdout.write(yaml.safe_dump(runtime_from_launcher_json(text), sort_keys=False))
