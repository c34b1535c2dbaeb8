"""Several nodes: a Kubeflow Trainer v2 `TrainJob` on a torch `ClusterTrainingRuntime`, from the same settings as the
single pod (image, resources, placement, /dev/shm, secrets, spec in an environment variable).

The runtime is installed once per cluster (`python -m pipeline k8s-manifests`); each training stage creates one
TrainJob. Kubeflow Trainer starts `nodes` pods of the runtime's `node` job and sets torchrun's PET_* variables in
each, so every node runs the same command; rank 0 alone reports to Dagster through Pipes (its pod log).
"""

from __future__ import annotations

from typing import Any

from pipeline.k8s.pod import APP, PodSettings, env_list, k8s_name, labels, resources, scheduling, security, volumes, \
    workload_command
from pipeline.training.remote import SPEC_ENV

GROUP = "trainer.kubeflow.org"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
NODE = "node"  # the replicated job and container name Kubeflow Trainer's torch plugin configures
DEFAULT_RUNTIME = "llm-pipeline-torch"
# JobSet labels on every pod it starts: which TrainJob, which replicated job, which index (node rank)
JOBSET_NAME_LABEL = "jobset.sigs.k8s.io/jobset-name"
REPLICATED_JOB_LABEL = "jobset.sigs.k8s.io/replicatedjob-name"
JOB_INDEX_LABEL = "batch.kubernetes.io/job-completion-index"


def cluster_training_runtime(settings: PodSettings, name: str = DEFAULT_RUNTIME) -> dict[str, Any]:
    """The torch runtime: one replicated `node` job, pods that never restart in place (Dagster retries the run,
    resuming from S3), /dev/shm in memory and a scratch disk, secrets mounted as environment."""
    vols, mounts = volumes(settings)
    pod_security, container_security = security(settings)
    container: dict[str, Any] = {"name": NODE, "image": settings.image, "volumeMounts": mounts,
                                 "securityContext": container_security}
    if settings.env_from_secrets:
        container["envFrom"] = [{"secretRef": {"name": n}} for n in settings.env_from_secrets]
    return {
        "apiVersion": API_VERSION,
        "kind": "ClusterTrainingRuntime",
        "metadata": {"name": name, "labels": {"trainer.kubeflow.org/framework": "torch", "app.kubernetes.io/name": APP}},
        "spec": {
            "mlPolicy": {"numNodes": 1, "torch": {}},
            "template": {"spec": {
                "failurePolicy": {"maxRestarts": 0},  # a failed node fails the job; the Dagster retry resumes it
                "replicatedJobs": [{
                    "name": NODE,
                    "template": {
                        "metadata": {"labels": {"trainer.kubeflow.org/trainjob-ancestor-step": "trainer"}},
                        "spec": {"backoffLimit": 0, "template": {"spec": {
                            "restartPolicy": "Never",
                            "securityContext": pod_security,
                            "containers": [container],
                            "volumes": vols,
                        }}},
                    },
                }],
            }},
        },
    }


def train_job(settings: PodSettings, spec_json: str, stage: str, run_id: str, name: str,
              runtime: str = DEFAULT_RUNTIME, extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    """A TrainJob of `settings.nodes` nodes x `settings.gpus` processes running the training spec."""
    env = env_list(settings, {**(extra_env or {}), SPEC_ENV: spec_json})
    pod_spec = scheduling(settings)
    manifest = {
        "apiVersion": API_VERSION,
        "kind": "TrainJob",
        "metadata": {"name": k8s_name(name), "labels": labels(stage, run_id)},
        "spec": {
            "runtimeRef": {"apiGroup": GROUP, "kind": "ClusterTrainingRuntime", "name": runtime},
            "trainer": {
                "image": settings.image,
                "command": workload_command(settings.python, settings.gpus, sharded=True, nodes=settings.nodes),
                "env": env,
                "numNodes": settings.nodes,
                "numProcPerNode": max(settings.gpus, 1),
                "resourcesPerNode": resources(settings),
            },
        },
    }
    if pod_spec:  # placement and service account differ per deployment, so they travel with the job
        manifest["spec"]["runtimePatches"] = [{"manager": APP, "trainingRuntimeSpec": {"template": {"spec": {
            "replicatedJobs": [{"name": NODE, "template": {"spec": {"template": {"spec": pod_spec}}}}]}}}}]
    if settings.namespace:
        manifest["metadata"]["namespace"] = settings.namespace
    return manifest


def rank_zero_selector(job_name: str) -> str:
    """Label selector of the pod of node rank 0 (the one that reports through Pipes)."""
    return f"{JOBSET_NAME_LABEL}={job_name},{REPLICATED_JOB_LABEL}={NODE},{JOB_INDEX_LABEL}=0"


def job_outcome(train_job_status: dict[str, Any] | None) -> str | None:
    """'Complete' or 'Failed' once the TrainJob has finished, else None."""
    for condition in (train_job_status or {}).get("conditions", []):
        if condition.get("type") in ("Complete", "Failed") and condition.get("status") == "True":
            return condition["type"]
    return None
