"""Print the cluster-wide Kubeflow Trainer runtime for the launcher settings in PIPELINE_LAUNCHER, validated:

    PIPELINE_LAUNCHER='{"mode": "kubernetes", "image": "registry/llm-pipeline:1.0"}' python -m pipeline.k8s | kubectl apply -f -
"""

import json
import os
import sys

import yaml

from pipeline.k8s.pod import PodSettings
from pipeline.k8s.trainjob import DEFAULT_RUNTIME, cluster_training_runtime
from pipeline.k8s.validate import validate_manifest


def runtime_from_launcher_json(text: str) -> dict:
    """The ClusterTrainingRuntime for a TrainingLauncher's JSON fields (the pod ones; the rest are ignored)."""
    fields = json.loads(text)
    settings = PodSettings(**{k: v for k, v in fields.items() if k in PodSettings.model_fields and k != "python"})
    manifest = cluster_training_runtime(settings, fields.get("runtime", DEFAULT_RUNTIME))
    validate_manifest(manifest)
    return manifest


if __name__ == "__main__":
    text = os.environ.get("PIPELINE_LAUNCHER")
    if not text:
        sys.exit("set PIPELINE_LAUNCHER to the launcher's JSON (the pipeline-env ConfigMap in deploy/k8s/cluster.yaml)")
    sys.stdout.write(yaml.safe_dump(runtime_from_launcher_json(text), sort_keys=False))
