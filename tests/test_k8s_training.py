"""The Kubernetes training path: the pod PipesK8sClient creates, checked field by field and against the Kubernetes
schema, and run for real as a local process (tests/local_kubelet.py) against moto's S3 server: a trained model and
Pipes messages come back, and a retry after a killed pod resumes from the checkpoints in S3."""

import json
import sys
from pathlib import Path

import dagster as dg
import pytest

from pipeline.k8s.pod import SPEC_ENV, WORKLOAD_ENV
from pipeline.k8s.validate import ManifestInvalid, validate_manifest
from resources.launcher import TrainingLauncher
from tests.conftest import tiny_recipe
from tests.local_kubelet import LocalKubelet
from tests.test_training import canonical_train_file

S3_KEYS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}


@pytest.fixture
def moto_s3(monkeypatch):
    """moto's S3 server on a free localhost port; this process reaches it through the AWS environment, a pod
    through the launcher's `env` (endpoint) and `s3_secret` (keys)."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    for key, value in {"AWS_ENDPOINT_URL": endpoint, "AWS_DEFAULT_REGION": "us-east-1", **S3_KEYS}.items():
        monkeypatch.setenv(key, value)
    boto3.client("s3").create_bucket(Bucket="models")
    yield endpoint
    server.stop()


def launcher(**overrides) -> TrainingLauncher:
    values = dict(mode="kubernetes", image="registry.example.com/llm-pipeline:1.0", namespace="ml",
                  service_account="trainer", gpus=0, cpu="2", memory="4Gi", s3_secret="pipeline-s3",
                  env_from_secrets=["pipeline-mlflow"], poll_interval=0.1)
    return TrainingLauncher(**{**values, **overrides})


def pod_body(trainer: TrainingLauncher, spec: dict, sharded: bool = False) -> dict:
    """The pod exactly as PipesK8sClient sends it: our manifest through dagster-k8s's own build_pod_body."""
    import kubernetes
    from dagster_k8s.pipes import build_pod_body

    from pipeline.k8s.pod import training_pod

    pod = training_pod(trainer.pod_settings(), json.dumps(spec), "sft", "0123abcd-run", sharded)
    body = build_pod_body(pod_name="dagster-0123abcd-sft-1", image=None, command=None,
                          env_vars={"DAGSTER_PIPES_CONTEXT": "ctx", "DAGSTER_PIPES_MESSAGES": "msg"},
                          base_pod_meta={k: v for k, v in pod["metadata"].items() if k != "namespace"},
                          base_pod_spec=pod["spec"])
    return {"apiVersion": "v1", "kind": "Pod", **kubernetes.client.ApiClient().sanitize_for_serialization(body)}


def test_training_pod_spec_field_by_field():
    trainer = launcher(gpus=4, cpu="32", memory="256Gi", shm_size="64Gi", scratch_size="500Gi",
                       node_selector={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
                       tolerations=[{"key": "dedicated", "operator": "Equal", "value": "training", "effect": "NoSchedule"}],
                       affinity={"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100,
                                 "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname", "labelSelector": {
                                     "matchLabels": {"app.kubernetes.io/component": "training"}}}}]}},
                       env={"AWS_ENDPOINT_URL": "https://s3.internal"}, image_pull_secrets=["regcred"])
    spec = {"train_path": "s3://b/in/train.jsonl", "output_dir": "/scratch/sft"}
    pod = pod_body(trainer, spec)
    validate_manifest(pod)
    meta, podspec = pod["metadata"], pod["spec"]
    assert meta["name"] == "dagster-0123abcd-sft-1"
    assert meta["labels"]["app.kubernetes.io/component"] == "training" and meta["labels"]["pipeline/stage"] == "sft"
    assert meta["labels"]["dagster/run-id"] == "0123abcd-run"
    assert podspec["restartPolicy"] == "Never"
    assert podspec["serviceAccountName"] == "trainer"
    assert podspec["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert podspec["tolerations"] == [{"key": "dedicated", "operator": "Equal", "value": "training", "effect": "NoSchedule"}]
    assert podspec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]["weight"] == 100
    assert podspec["imagePullSecrets"] == [{"name": "regcred"}]
    assert podspec["securityContext"] == {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000}
    assert podspec["volumes"] == [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "64Gi"}},
                                  {"name": "scratch", "emptyDir": {"sizeLimit": "500Gi"}}]
    [container] = podspec["containers"]
    assert container["name"] == "training" and container["image"] == "registry.example.com/llm-pipeline:1.0"
    assert container["command"] == ["python", "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4",
                                    "-m", "pipeline.training", "--spec-env", SPEC_ENV]
    limits = {"cpu": "32", "memory": "256Gi", "nvidia.com/gpu": "4"}
    assert container["resources"] == {"requests": limits, "limits": limits}
    assert container["volumeMounts"] == [{"name": "dshm", "mountPath": "/dev/shm"}, {"name": "scratch", "mountPath": "/scratch"}]
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    assert container["envFrom"] == [{"secretRef": {"name": "pipeline-mlflow"}}]
    env = {e["name"]: e for e in container["env"]}
    assert json.loads(env[SPEC_ENV]["value"]) == spec  # the spec travels in the pod, no shared disk
    assert env["AWS_ENDPOINT_URL"]["value"] == "https://s3.internal"
    for key in S3_KEYS:  # keys by reference only: the manifest never holds a secret
        assert env[key] == {"name": key, "valueFrom": {"secretKeyRef": {"name": "pipeline-s3", "key": key}}}
    assert all(env[k]["value"] == v for k, v in WORKLOAD_ENV.items())
    assert env["DAGSTER_PIPES_CONTEXT"]["value"] == "ctx"  # PipesK8sClient's bootstrap variables reach it
    # one GPU, not sharded: a single process; a CPU pod asks for no GPU and keeps the role-based credentials
    one = pod_body(launcher(gpus=1), spec)["spec"]["containers"][0]
    assert one["command"] == ["python", "-m", "pipeline.training", "--spec-env", SPEC_ENV]
    assert one["resources"]["limits"]["nvidia.com/gpu"] == "1"
    cpu = pod_body(launcher(gpus=0, s3_secret=None), spec)["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in cpu["resources"]["limits"]
    assert not any(e["name"].startswith("AWS_") for e in cpu["env"])
    sharded = pod_body(launcher(gpus=1), spec, sharded=True)["spec"]["containers"][0]
    assert "--nproc-per-node=1" in sharded["command"]  # ZeRO/FSDP shard only under a distributed launcher


def test_a_broken_pod_is_refused_by_the_schema():
    pod = pod_body(launcher(), {"a": 1})
    pod["spec"]["containers"][0]["resources"]["limits"]["cpu"] = ["2"]
    with pytest.raises(ManifestInvalid, match="resources"):
        validate_manifest(pod)
    pod = pod_body(launcher(), {"a": 1})
    pod["spec"]["restartPolcy"] = "Never"
    with pytest.raises(ManifestInvalid, match="restartPolcy"):
        validate_manifest(pod)


def test_kubernetes_mode_needs_an_image_and_an_s3_bucket(tmp_path):
    with pytest.raises(dg.Failure, match="needs `image`"):
        TrainingLauncher(mode="kubernetes").pod_settings()
    with pytest.raises(dg.Failure, match="through S3"):
        launcher()._launch_on_kubernetes(None, {"training": {}}, tmp_path, str(tmp_path))


def test_training_pod_trains_against_s3_reports_through_pipes_and_resumes_after_a_kill(tiny_model_dir, tmp_path,
                                                                                       moto_s3, monkeypatch):
    from dagster_k8s import PipesK8sClient
    from dagster_k8s.client import DagsterKubernetesClient

    from pipeline.training.checkpoint_mirror import remote_checkpoints

    prefix = "s3://models/runs/run-1/sft"
    checkpoints = f"{prefix}/checkpoints"
    max_steps = 24

    def first_checkpoint_in_s3(pod) -> bool:
        remote = remote_checkpoints(checkpoints)
        return any("checkpoint_complete.json" in objects for objects in remote.values())

    kubelet = LocalKubelet(secrets={"pipeline-s3": S3_KEYS, "pipeline-mlflow": {"MLFLOW_TRACKING_TOKEN": "t0ken"}},
                           kill_when=first_checkpoint_in_s3)
    monkeypatch.setattr(DagsterKubernetesClient, "production_client", staticmethod(kubelet))
    monkeypatch.setattr(PipesK8sClient, "_load_k8s_config", lambda self: None)
    for key in S3_KEYS:  # the pod gets its keys from the Secret, not from this process
        monkeypatch.delenv(key)
    trainer = launcher(env={"AWS_ENDPOINT_URL": moto_s3, "AWS_DEFAULT_REGION": "us-east-1"},
                       work_dir=str(tmp_path / "pod-scratch"), container_python=sys.executable)
    spec = {"train_path": str(canonical_train_file(tmp_path, 32)), "base_path": str(tiny_model_dir),
            "output_dir": str(tmp_path / "unused-local-output"), "checkpoint_uri": checkpoints,
            "training": tiny_recipe(tiny_model_dir, training={"max_steps": max_steps, "save_steps": 4, "batch_size": 2,
                                                               "logging_steps": 4, "save_total_limit": 2,
                                                               "max_length": 128, "merge_adapter": False,
                                                               "eval_examples": 0}).training.model_dump()}
    step_dir = tmp_path / "dagster-step"

    @dg.asset(retry_policy=dg.RetryPolicy(max_retries=1))
    def sft(context: dg.AssetExecutionContext, launcher: TrainingLauncher) -> dg.Output:
        for key in S3_KEYS:  # the Dagster step uploads inputs and downloads outputs with its own credentials
            monkeypatch.setenv(key, S3_KEYS[key])
        return dg.Output(launcher.launch(context, dict(spec), step_dir, remote_prefix=prefix))

    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize([sft], resources={"launcher": trainer}, instance=instance)
    assert result.success
    first, second = kubelet.pods.values()
    assert kubelet.killed == [next(iter(kubelet.pods))], "the first pod finished before it could be killed"
    assert first.command == second.command == [sys.executable, "-m", "pipeline.training", "--spec-env", SPEC_ENV]
    assert second.env["AWS_ACCESS_KEY_ID"] == "test" and "MLFLOW_TRACKING_TOKEN" in second.env
    delivered = json.loads(second.env[SPEC_ENV])
    assert delivered["train_path"] == f"{prefix}/inputs/train.jsonl" and delivered["base_path"] == f"{prefix}/inputs/base"
    assert delivered["output_dir"] == str(tmp_path / "pod-scratch" / "sft") and delivered["output_uri"] == prefix

    trained = result.output_for_node("sft")
    assert trained["global_step"] == max_steps
    assert trained["resumed_from"] and 0 < int(trained["resumed_from"].split("-")[1]) < max_steps
    assert trained["adapter_uri"] == f"{prefix}/adapter" and trained["model_path"] is None
    adapter = Path(trained["adapter_path"])
    assert adapter.parent == step_dir and (adapter / "adapter_model.safetensors").exists()
    from pipeline.models.base_model import file_sha256

    assert file_sha256(adapter / "adapter_model.safetensors") == trained["adapter_sha256"]
    # Pipes messages from the pod's log reached the run: progress lines and the resume, as Dagster log entries
    logs = [e.user_message for e in instance.all_logs(result.run_id)]
    assert any("resuming from checkpoint-" in m for m in logs)
    assert any(f"step {max_steps}/{max_steps}" in m for m in logs)
    assert any(f"published the weights under {prefix}" in m for m in logs)
    assert "t0ken" not in json.dumps(logs)


def test_remote_spec_uploads_local_inputs_once_and_reuses_published_ones(tmp_path, moto_s3):
    from pipeline.training.remote import encode_spec, remote_spec, stage_inputs

    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "config.json").write_text("{}")
    (tmp_path / "pairs.jsonl").write_text('{"prompt": "p"}\n')
    uploaded = []

    def upload(path, uri):
        from pipeline.training.remote import upload_path

        uploaded.append(uri)
        return upload_path(path, uri)

    sft = {"adapter_path": "/dagster/step/adapter", "adapter_uri": "s3://models/runs/r/sft/adapter",
           "model_path": "/dagster/step/merged", "model_uri": "s3://models/runs/r/sft/merged"}
    spec = {"stage": "dpo", "train_path": str(tmp_path / "pairs.jsonl"), "base_path": str(tmp_path / "base"),
            "base_uri": None, "output_dir": "/local", "sft_result": sft}
    pod = remote_spec(spec, "s3://models/runs/r/dpo", "/scratch/dpo")
    assert pod["train_path"] == "s3://models/runs/r/dpo/inputs/pairs.jsonl"
    assert pod["base_path"] == "s3://models/runs/r/dpo/inputs/base"
    assert pod["sft_result"]["adapter_path"] == sft["adapter_uri"]  # published by the SFT pod, not re-uploaded
    assert pod["output_dir"] == "/scratch/dpo" and pod["output_uri"] == "s3://models/runs/r/dpo"
    assert "base_uri" not in pod and spec["sft_result"]["adapter_path"] == "/dagster/step/adapter"  # input untouched
    with_base = remote_spec({**spec, "base_uri": "s3://models/models/base/tiny"}, "s3://models/runs/r/dpo", "/s",
                            upload=upload)
    assert with_base["base_path"] == "s3://models/models/base/tiny"
    assert uploaded == ["s3://models/runs/r/dpo/inputs/pairs.jsonl"]  # the base model is not copied per run
    # the pod side: URIs back to files on its own disk (the SFT adapter is not in the store here, so only inputs)
    staged = stage_inputs({**pod, "output_dir": str(tmp_path / "pod"), "sft_result": None})
    assert Path(staged["train_path"]).read_text() == '{"prompt": "p"}\n'
    assert (Path(staged["base_path"]) / "config.json").exists()
    with pytest.raises(ValueError, match="s3://"):
        remote_spec(spec, str(tmp_path), "/scratch")
    with pytest.raises(ValueError, match="bytes"):
        encode_spec({"train_path": "x" * 200_000})
    with pytest.raises(FileNotFoundError, match="no such object"):
        stage_inputs({**pod, "output_dir": str(tmp_path / "pod2"), "train_path": "s3://models/missing.jsonl",
                      "sft_result": None})
