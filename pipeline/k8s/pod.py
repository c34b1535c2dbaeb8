"""The training pod: `python -m pipeline.training` on GPU nodes, built from the launcher's settings.

Plain Kubernetes JSON (camelCase), so the same dict is validated in tests, handed to `PipesK8sClient` as its
base pod spec, and reused by the multi-node TrainJob.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from pipeline.training.remote import SPEC_ENV

APP = "llm-finetune-pipeline"
CONTAINER = "training"
# glibc returns large freed blocks to the OS and faults them back in on the next step (a third of CPU training time
# here); nothing is fetched from a model hub at run time; Python's output reaches the pod log line by line
WORKLOAD_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "100000000000", "TOKENIZERS_PARALLELISM": "false",
                "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
S3_SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


class PodSettings(BaseModel):
    """What a platform team sets for training pods (the `TrainingLauncher` resource's kubernetes fields)."""

    model_config = ConfigDict(extra="forbid")

    image: str = Field(description="Training image (deploy/Dockerfile), e.g. registry.example.com/llm-pipeline:1.0")
    namespace: str | None = Field(None, description="Namespace of the pods; None: the run's own namespace")
    service_account: str | None = Field(None, description="Service account; with IRSA/Workload Identity its role "
                                        "gives S3 access and no key Secret is needed")
    gpus: int = Field(1, ge=0, description="nvidia.com/gpu per pod (node); one training process per GPU")
    nodes: int = Field(1, ge=1, description="Pods (nodes); above 1 a Kubeflow Trainer TrainJob runs them")
    cpu: str = Field("8", description="CPU request and limit per pod")
    memory: str = Field("64Gi", description="Memory request and limit per pod (page cache of /dev/shm not included)")
    shm_size: str = Field("16Gi", description="Size of the memory-backed /dev/shm (NCCL and DataLoader workers)")
    scratch_size: str | None = Field(None, description="Size limit of the pod's scratch disk (inputs, checkpoints)")
    work_dir: str = Field("/scratch", description="Where the pod keeps inputs, checkpoints and outputs")
    node_selector: dict[str, str] = Field(default_factory=dict, description="Node labels the pod must match")
    tolerations: list[dict[str, Any]] = Field(default_factory=lambda: [dict(GPU_TOLERATION)],
                                              description="Tolerations (default: the usual GPU node taint)")
    affinity: dict[str, Any] = Field(default_factory=dict, description="Pod affinity/anti-affinity, as in a PodSpec")
    s3_secret: str | None = Field(None, description="Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; None: "
                                  "credentials come from the service account's role")
    env_from_secrets: list[str] = Field(default_factory=list, description="Secrets whose keys all become environment "
                                        "variables (e.g. MLflow credentials)")
    env: dict[str, str] = Field(default_factory=dict, description="Plain environment (AWS_ENDPOINT_URL, AWS_REGION, ...)")
    image_pull_secrets: list[str] = Field(default_factory=list)
    python: str = Field("python", description="The image's Python")
    run_as_user: int = Field(1000, description="The image's non-root user id")


def k8s_name(*parts: str, limit: int = 63) -> str:
    """A DNS-1035 label from free text (run ids, asset names)."""
    text = re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")
    text = re.sub(r"^[^a-z]+", "", text)[:limit].rstrip("-")
    return text or "training"


def workload_command(python: str, gpus: int, sharded: bool, nodes: int = 1) -> list[str]:
    """The container command: one process, or torchrun with one process per GPU. Across nodes torchrun takes its
    node count, rank and rendezvous from the PET_* variables Kubeflow Trainer sets in each node's container."""
    workload = ["-m", "pipeline.training", "--spec-env", SPEC_ENV]
    if nodes > 1:
        return [python, "-m", "torch.distributed.run", *workload]
    if gpus <= 1 and not sharded:
        return [python, *workload]
    return [python, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={max(gpus, 1)}", *workload]


def env_list(settings: PodSettings, extra: dict[str, str]) -> list[dict[str, Any]]:
    """The container's environment: the workload's defaults, the S3 keys by reference, then plain values."""
    values = {**WORKLOAD_ENV, **settings.env, **extra}
    env = [{"name": k, "value": v} for k, v in values.items()]
    if settings.s3_secret:
        env += [{"name": key, "valueFrom": {"secretKeyRef": {"name": settings.s3_secret, "key": key}}}
                for key in S3_SECRET_KEYS if key not in values]
    return env


def resources(settings: PodSettings) -> dict[str, Any]:
    """Requests equal to limits (Guaranteed QoS: the kubelet evicts these pods last)."""
    amounts = {"cpu": settings.cpu, "memory": settings.memory}
    if settings.gpus:
        amounts["nvidia.com/gpu"] = str(settings.gpus)
    return {"requests": dict(amounts), "limits": dict(amounts)}


def volumes(settings: PodSettings) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(volumes, mounts): a memory-backed /dev/shm and a scratch disk at `work_dir`."""
    scratch = {"sizeLimit": settings.scratch_size} if settings.scratch_size else {}
    vols = [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": settings.shm_size}},
            {"name": "scratch", "emptyDir": scratch}]
    mounts = [{"name": "dshm", "mountPath": "/dev/shm"}, {"name": "scratch", "mountPath": settings.work_dir}]
    return vols, mounts


def scheduling(settings: PodSettings) -> dict[str, Any]:
    """Service account, node placement and pull secrets: the pod-level fields a TrainJob may patch too."""
    spec: dict[str, Any] = {}
    if settings.service_account:
        spec["serviceAccountName"] = settings.service_account
    if settings.node_selector:
        spec["nodeSelector"] = dict(settings.node_selector)
    if settings.tolerations:
        spec["tolerations"] = [dict(t) for t in settings.tolerations]
    if settings.affinity:
        spec["affinity"] = dict(settings.affinity)
    if settings.image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": n} for n in settings.image_pull_secrets]
    return spec


def security(settings: PodSettings) -> tuple[dict[str, Any], dict[str, Any]]:
    """(pod, container) security contexts: the image's non-root user, no privilege escalation."""
    pod = {"runAsNonRoot": True, "runAsUser": settings.run_as_user, "runAsGroup": settings.run_as_user,
           "fsGroup": settings.run_as_user}
    container = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    return pod, container


def label_value(text: str) -> str:
    """A valid label value: alphanumerics, `-_.` inside, at most 63 characters."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text)[:63].strip("-_.")


def labels(stage: str, run_id: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": APP, "app.kubernetes.io/component": "training",
            "pipeline/stage": label_value(stage), "dagster/run-id": label_value(run_id)}


def training_pod(settings: PodSettings, spec_json: str, stage: str, run_id: str, sharded: bool) -> dict[str, Any]:
    """A Pod manifest (without a name: PipesK8sClient names it) running one training job with its spec in SPEC_ENV."""
    vols, mounts = volumes(settings)
    pod_security, container_security = security(settings)
    container = {
        "name": CONTAINER,
        "image": settings.image,
        "imagePullPolicy": "IfNotPresent",
        "command": workload_command(settings.python, settings.gpus, sharded),
        "env": env_list(settings, {SPEC_ENV: spec_json}),
        "resources": resources(settings),
        "volumeMounts": mounts,
        "securityContext": container_security,
    }
    if settings.env_from_secrets:
        container["envFrom"] = [{"secretRef": {"name": n}} for n in settings.env_from_secrets]
    spec = {
        "restartPolicy": "Never",  # Dagster's RetryPolicy retries, and the retry resumes from S3
        **scheduling(settings),
        "securityContext": pod_security,
        "containers": [container],
        "volumes": vols,
    }
    metadata = {"labels": labels(stage, run_id)}
    if settings.namespace:
        metadata["namespace"] = settings.namespace
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}
