"""Several nodes: the TrainJob and its runtime validate against Kubeflow Trainer's CRDs, and the TrainJob's exact
command and environment, launched by the TrainingLauncher, train across two "nodes" (two local torchruns, each with its
own disk, configured only by the PET_* variables Kubeflow Trainer injects; tests/local_kubelet.py), rank 0 reporting
through Pipes and every node uploading its own part of each checkpoint to S3."""

import sys
from pathlib import Path

import pytest

from pipeline.k8s.pod import PodSettings
from pipeline.k8s.trainjob import (cluster_training_runtime, job_outcome, rank_zero_selector, train_job)
from pipeline.k8s.validate import ManifestInvalid, validate_manifest
from pipeline.training.remote import SPEC_ENV
from tests.conftest import tiny_recipe
from tests.test_k8s_training import S3_KEYS, moto_s3  # noqa: F401  (the fixture)
from tests.test_training import canonical_train_file

SETTINGS = dict(image="registry.example.com/llm-pipeline:1.0", namespace="ml", service_account="trainer", nodes=4,
                gpus=8, s3_secret="pipeline-s3", env_from_secrets=["pipeline-mlflow"],
                node_selector={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"})


def test_trainjob_and_runtime_validate_against_the_kubeflow_trainer_crds():
    settings = PodSettings(**SETTINGS)
    runtime = cluster_training_runtime(settings)
    job = train_job(settings, '{"stage": "sft"}', "sft", "0123abcd-5678", "sft-0123abcd-5678-a0",
                    extra_env={"DAGSTER_PIPES_CONTEXT": "ctx"})
    validate_manifest(runtime)
    validate_manifest(job)
    trainer = job["spec"]["trainer"]
    assert trainer["numNodes"] == 4 and trainer["numProcPerNode"] == 8
    assert trainer["command"] == ["python", "-m", "torch.distributed.run", "-m", "pipeline.training", "--spec-env", SPEC_ENV]
    assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "8"
    env = {e["name"]: e for e in trainer["env"]}
    assert env[SPEC_ENV]["value"] == '{"stage": "sft"}' and env["DAGSTER_PIPES_CONTEXT"]["value"] == "ctx"
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "pipeline-s3", "key": "AWS_SECRET_ACCESS_KEY"}
    assert job["spec"]["runtimeRef"] == {"apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime",
                                         "name": runtime["metadata"]["name"]}
    patch = job["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
    assert patch["name"] == "node"
    assert patch["template"]["spec"]["template"]["spec"] == {
        "serviceAccountName": "trainer", "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]}
    node = runtime["spec"]["template"]["spec"]["replicatedJobs"][0]
    pod = node["template"]["spec"]["template"]["spec"]
    assert node["name"] == "node" and pod["restartPolicy"] == "Never" and node["template"]["spec"]["backoffLimit"] == 0
    assert pod["containers"][0]["volumeMounts"][0] == {"name": "dshm", "mountPath": "/dev/shm"}
    assert pod["volumes"][0]["emptyDir"]["medium"] == "Memory"
    assert rank_zero_selector("sft-x") == ("jobset.sigs.k8s.io/jobset-name=sft-x,jobset.sigs.k8s.io/replicatedjob-name=node,"
                                           "batch.kubernetes.io/job-completion-index=0")
    assert job_outcome({"conditions": [{"type": "Created", "status": "True"}]}) is None
    assert job_outcome({"conditions": [{"type": "Failed", "status": "True"}]}) == "Failed"


def test_a_trainjob_the_crd_rejects_fails_validation():
    job = train_job(PodSettings(**SETTINGS), "{}", "sft", "r", "sft-r")
    job["spec"]["trainer"]["numProcPerNode"] = "8"
    with pytest.raises(ManifestInvalid, match="numProcPerNode"):
        validate_manifest(job)
    job = train_job(PodSettings(**SETTINGS), "{}", "sft", "r", "sft-r")
    del job["spec"]["runtimeRef"]
    with pytest.raises(ManifestInvalid, match="runtimeRef"):
        validate_manifest(job)
    job = train_job(PodSettings(**SETTINGS), "{}", "sft", "r", "sft-r")
    job["metadata"]["name"] = "Sft_R"
    with pytest.raises(ManifestInvalid, match="RFC 1035"):
        validate_manifest(job)


def test_launcher_runs_a_two_node_trainjob_rank_zero_reports_and_every_node_uploads_its_part(tiny_model_dir, tmp_path,
                                                                                          moto_s3, monkeypatch):  # noqa: F811
    import dagster as dg
    import kubernetes
    from dagster_k8s import PipesK8sClient
    from dagster_k8s.client import DagsterKubernetesClient

    from pipeline.training.checkpoint_mirror import remote_checkpoints, restore_latest
    from pipeline.training.checkpoints import is_complete
    from resources.launcher import TrainingLauncher
    from tests.local_kubelet import LocalKubeflow

    prefix = "s3://models/runs/run-2/sft"
    kubeflow = LocalKubeflow(secrets={"pipeline-s3": S3_KEYS}, pod_work_dir="/scratch",
                             disk=lambda rank: tmp_path / f"node-{rank}")
    monkeypatch.setattr(DagsterKubernetesClient, "production_client", staticmethod(kubeflow))
    monkeypatch.setattr(PipesK8sClient, "_load_k8s_config", lambda self: None)
    monkeypatch.setattr(kubernetes.client, "CustomObjectsApi", kubeflow)
    trainer = TrainingLauncher(mode="kubernetes", image="registry.example.com/llm-pipeline:1.0", namespace="ml",
                               nodes=2, gpus=1, s3_secret="pipeline-s3", container_python=sys.executable,
                               env={"AWS_ENDPOINT_URL": moto_s3, "AWS_DEFAULT_REGION": "us-east-1",
                                    "CUDA_VISIBLE_DEVICES": ""}, poll_interval=0.1)
    spec = {"train_path": str(canonical_train_file(tmp_path, 16)), "base_path": str(tiny_model_dir),
            "output_dir": "unused", "checkpoint_uri": f"{prefix}/checkpoints",
            "training": tiny_recipe(tiny_model_dir, training={"max_steps": 2, "save_steps": 2, "batch_size": 2,
                                                               "logging_steps": 1,
                                                               "merge_adapter": False}).training.model_dump()}

    @dg.asset
    def sft(context: dg.AssetExecutionContext, launcher: TrainingLauncher) -> dg.Output:
        return dg.Output(launcher.launch(context, dict(spec), tmp_path / "dagster-step", remote_prefix=prefix))

    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize([sft], resources={"launcher": trainer}, instance=instance)
    assert result.success
    [(name, job)] = kubeflow.jobs.items()
    assert job["spec"]["trainer"]["numNodes"] == 2 and kubeflow.deleted == [name]
    logs = [node.text() for node in kubeflow.nodes[name]]
    assert "step 2/2" in logs[0] and "step 2/2" not in logs[1]  # rank 0 alone reports
    trained = result.output_for_node("sft")  # rank 0's Pipes message, read from its pod log
    assert trained["global_step"] == 2 and trained["adapter_uri"] == f"{prefix}/adapter"
    assert (Path(trained["adapter_path"]) / "adapter_model.safetensors").exists()
    messages = [e.user_message for e in instance.all_logs(result.run_id)]
    assert any("step 2/2" in m for m in messages)
    # with no shared disk, node 1's part of the checkpoint exists only on node 1, and still reaches S3
    assert {p.name for p in (tmp_path / "node-1/sft/checkpoints/checkpoint-2").iterdir()} == {"rng_state_1.pth"}
    objects = remote_checkpoints(f"{prefix}/checkpoints")["checkpoint-2"]
    assert {"rng_state_0.pth", "rng_state_1.pth", "trainer_state.json", "checkpoint_complete.json"} <= objects
    restored = restore_latest(f"{prefix}/checkpoints", tmp_path / "fresh-node")  # a retry on a new machine
    assert restored is not None and is_complete(restored) and (restored / "rng_state_1.pth").exists()
