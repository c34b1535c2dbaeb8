"""Launch the training workload in its own process or pod(s) and talk to it through Dagster Pipes."""


import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Literal

import dagster as dg

from pipeline.k8s.pod import GPU_TOLERATION, PodSettings, k8s_name, training_pod
from pipeline.paths import PROJECT_ROOT
from pipeline.training.distributed import launch_command
from pipeline.training.remote import SPEC_ENV, download, encode_spec, remote_spec

# glibc returns large freed blocks to the OS and faults them back in on the next step; on CPU that was
# a third of the training time here. Keeping them mapped is harmless on a GPU.
ALLOCATOR_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "100000000000"}
POD_FIELDS = set(PodSettings.model_fields) - {"gpus", "python"}


class TrainingLauncher(dg.ConfigurableResource):
    """`subprocess` runs `python -m pipeline.training` on this machine, on its CPU or GPUs: one process, or
    torchrun with one process per GPU when it has several. `kubernetes` runs it in a GPU pod through
    `PipesK8sClient` (torchrun over the pod's GPUs), or across `nodes` > 1 pods as a Kubeflow Trainer TrainJob;
    inputs and outputs travel through the S3 bucket, so no disk is shared with the pod."""

    mode: Literal["subprocess", "kubernetes"] = "subprocess"
    python: str = sys.executable
    env: dict[str, str] = {}
    gpus: int | None = None  # subprocess: None is every GPU this machine shows; kubernetes: GPUs per pod (None: 1)
    # kubernetes mode (see pipeline.k8s.pod.PodSettings for what each does)
    image: str | None = None
    namespace: str | None = None
    service_account: str | None = None
    nodes: int = 1
    cpu: str = "8"
    memory: str = "64Gi"
    shm_size: str = "16Gi"
    scratch_size: str | None = None
    work_dir: str = "/scratch"
    node_selector: dict[str, str] = {}
    tolerations: list[dict[str, Any]] = [GPU_TOLERATION]
    affinity: dict[str, Any] = {}
    s3_secret: str | None = None
    env_from_secrets: list[str] = []
    image_pull_secrets: list[str] = []
    run_as_user: int = 1000
    container_python: str = "python"
    runtime: str = "llm-pipeline-torch"  # the ClusterTrainingRuntime TrainJobs run on
    load_incluster_config: bool | None = None  # None: in-cluster when KUBERNETES_SERVICE_HOST is set
    kubeconfig_file: str | None = None
    poll_interval: float = 10.0

    @classmethod
    def from_env(cls, variable: str = "PIPELINE_LAUNCHER") -> "TrainingLauncher":
        """The launcher described by a JSON object of its fields in `variable` (a ConfigMap key on Kubernetes), e.g.
        {"mode": "kubernetes", "image": "registry/llm-pipeline:1.0", "gpus": 8, "s3_secret": "pipeline-s3"};
        the local subprocess launcher when unset."""
        text = os.environ.get(variable, "").strip()
        if not text:
            return cls()
        try:
            fields = json.loads(text)
            unknown = sorted(set(fields) - set(cls.model_fields))
            if unknown:
                raise ValueError(f"unknown fields {unknown}")
            return cls(**fields)
        except (ValueError, TypeError, AttributeError) as error:
            raise ValueError(f"{variable} must be a JSON object of TrainingLauncher fields: {error}") from None

    def process_count(self) -> int:
        if self.gpus is not None:
            return self.gpus
        import torch

        return torch.cuda.device_count()

    def pod_settings(self) -> PodSettings:
        if not self.image:
            raise dg.Failure("TrainingLauncher(mode='kubernetes') needs `image` (the training image, deploy/Dockerfile)")
        values = {k: getattr(self, k) for k in POD_FIELDS}
        return PodSettings(**values, gpus=1 if self.gpus is None else self.gpus, python=self.container_python)

    def launch(self, context: dg.AssetExecutionContext, spec: dict[str, Any], workdir: Path,
               remote_prefix: str | None = None) -> dict[str, Any]:
        """Run one training job; return the result it reports, or raise with the job's own error. Kubernetes mode
        exchanges inputs and weights through `remote_prefix` (an s3:// prefix of the run's stage)."""
        workdir.mkdir(parents=True, exist_ok=True)
        if self.mode == "kubernetes":
            return self._launch_on_kubernetes(context, spec, workdir, remote_prefix)
        spec_path = workdir / "spec.json"
        spec_path.write_text(json.dumps(spec, indent=2))
        client = dg.PipesSubprocessClient(
            env={**ALLOCATOR_ENV, "TOKENIZERS_PARALLELISM": "false", **self.env},
            cwd=str(PROJECT_ROOT),
        )
        invocation = client.run(
            context=context,
            command=launch_command(self.python, str(spec_path), self.process_count(),
                                   sharded=spec["training"].get("distributed", "none") != "none"),
            extras={"spec_path": str(spec_path)},
        )
        return _last_result(invocation.get_custom_messages(), workdir)

    def _launch_on_kubernetes(self, context, spec: dict[str, Any], workdir: Path, remote_prefix: str | None) -> dict:
        if not remote_prefix or not remote_prefix.startswith("s3://"):
            raise dg.Failure("TrainingLauncher(mode='kubernetes') exchanges files with the pod through S3: set "
                             "PIPELINE_BUCKET=s3://... (the prod deployment)")
        settings = self.pod_settings()
        stage = spec.get("stage", "sft")
        pod_spec = remote_spec(spec, remote_prefix, f"{settings.work_dir}/{stage}")
        (workdir / "pod-spec.json").write_text(json.dumps(pod_spec, indent=2))  # what the pod was given
        spec_json = encode_spec(pod_spec)
        sharded = spec["training"].get("distributed", "none") != "none"
        extras = {"spec_env": SPEC_ENV, "output_uri": remote_prefix}
        if settings.nodes > 1:
            messages = self._run_train_job(context, settings, spec_json, stage, extras)
        else:
            messages = self._run_pod(context, settings, spec_json, stage, sharded, extras)
        return fetch_outputs(_last_result(messages, workdir), workdir)

    def _k8s_client(self):
        from dagster_k8s import PipesK8sClient

        return PipesK8sClient(load_incluster_config=self.load_incluster_config, kubeconfig_file=self.kubeconfig_file,
                              poll_interval=self.poll_interval)

    def _run_pod(self, context, settings: PodSettings, spec_json: str, stage: str, sharded: bool, extras) -> list:
        pod = training_pod(settings, spec_json, stage, context.run_id, sharded)
        meta = {k: v for k, v in pod["metadata"].items() if k != "namespace"}
        invocation = self._k8s_client().run(context=context, namespace=settings.namespace, base_pod_meta=meta,
                                            base_pod_spec=pod["spec"], extras=extras)
        return invocation.get_custom_messages()

    def _run_train_job(self, context, settings: PodSettings, spec_json: str, stage: str, extras) -> list:
        """Create the TrainJob, follow the rank-0 pod's log for Pipes messages, wait for the job's outcome."""
        import kubernetes
        from dagster._core.pipes.client import PipesClientCompletedInvocation
        from dagster_k8s.client import DagsterKubernetesClient
        from dagster_k8s.pipes import PipesK8sPodLogsMessageReader
        from dagster_k8s.utils import detect_current_namespace

        from pipeline.k8s.trainjob import GROUP, VERSION, job_outcome, rank_zero_selector, train_job

        self._k8s_client()._load_k8s_config()
        namespace = settings.namespace or detect_current_namespace(self.kubeconfig_file) or "default"
        core = DagsterKubernetesClient.production_client().core_api
        custom = kubernetes.client.CustomObjectsApi()
        reader = PipesK8sPodLogsMessageReader()
        name = k8s_name(stage, context.run_id[:18], f"a{context.retry_number}")
        with dg.open_pipes_session(context=context, context_injector=dg.PipesEnvContextInjector(),
                                   message_reader=reader, extras=extras) as session:
            manifest = train_job(settings, spec_json, stage, context.run_id, name, self.runtime,
                                 extra_env=session.get_bootstrap_env_vars())
            custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "trainjobs", manifest)
            context.log.info(f"created TrainJob {namespace}/{name}: {settings.nodes} nodes x {settings.gpus} GPUs")
            try:
                pod = self._wait_for_pod(core, namespace, rank_zero_selector(name))
                reader.consume_pod_logs(context=context, core_api=core, pod_name=pod, namespace=namespace)
                outcome = None
                while outcome is None:
                    job = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "trainjobs", name)
                    outcome = job_outcome(job.get("status"))
                    if outcome is None:
                        time.sleep(self.poll_interval)
                if outcome != "Complete":
                    raise dg.Failure(f"TrainJob {namespace}/{name} failed; see `kubectl describe trainjob {name}`")
            finally:
                custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "trainjobs", name,
                                                       propagation_policy="Foreground")
        return PipesClientCompletedInvocation(session).get_custom_messages()

    def _wait_for_pod(self, core, namespace: str, selector: str, timeout_s: float = 1800.0) -> str:
        """The name of the first pod matching `selector` once it runs (or has already finished)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for pod in core.list_namespaced_pod(namespace, label_selector=selector).items:
                if pod.status and pod.status.phase in ("Running", "Succeeded", "Failed"):
                    return pod.metadata.name
            time.sleep(self.poll_interval)
        raise dg.Failure(f"no running pod for {selector} in {namespace} after {timeout_s:.0f}s (GPUs free? quota?)")


def _last_result(messages: list, workdir: Path) -> dict[str, Any]:
    if not messages:
        raise dg.Failure(f"training process finished without reporting a result; see {workdir}")
    return messages[-1]


def fetch_outputs(result: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Download the weights a pod published (`*_uri`) into `workdir`, so later steps find them on disk."""
    local = dict(result)
    for key in ("adapter_path", "model_path"):
        uri = result.get(key.replace("_path", "_uri"))
        if uri:
            local[key] = str(download(uri, workdir / uri.rstrip("/").rsplit("/", 1)[-1]))
    return local
