"""Several nodes: the TrainJob and its runtime validate against Kubeflow Trainer's CRDs, and the TrainJob's exact
command and environment train across two "nodes" (two local torchruns, each with its own disk, configured only by
the PET_* variables Kubeflow Trainer injects), every node uploading its own part of each checkpoint to S3."""

import json
import socket
import subprocess
import sys

import pytest

from pipeline.k8s.pod import PodSettings
from pipeline.k8s.trainjob import (cluster_training_runtime, job_outcome, rank_zero_selector, train_job)
from pipeline.k8s.validate import ManifestInvalid, validate_manifest
from pipeline.paths import PROJECT_ROOT
from pipeline.training.remote import SPEC_ENV, encode_spec, remote_spec
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_run_the_trainjob_command_and_each_uploads_its_part_of_the_checkpoints(tiny_model_dir, tmp_path,
                                                                                        moto_s3):  # noqa: F811
    from pipeline.training.checkpoint_mirror import remote_checkpoints, restore_latest
    from pipeline.training.checkpoints import is_complete

    prefix = "s3://models/runs/run-2/sft"
    settings = PodSettings(image="unused", nodes=2, gpus=1, s3_secret="pipeline-s3", python=sys.executable,
                           env={"AWS_ENDPOINT_URL": moto_s3, "AWS_DEFAULT_REGION": "us-east-1"})
    spec = {"train_path": str(canonical_train_file(tmp_path, 16)), "base_path": str(tiny_model_dir),
            "output_dir": "unused", "checkpoint_uri": f"{prefix}/checkpoints",
            "training": tiny_recipe(tiny_model_dir, training={"max_steps": 2, "save_steps": 2, "batch_size": 2,
                                                               "merge_adapter": False}).training.model_dump()}
    shared = remote_spec(spec, prefix, "unused")
    port = _free_port()
    nodes = []
    for rank in range(2):
        # the same TrainJob on two machines; here each machine's disk is its own folder
        node_spec = encode_spec({**shared, "output_dir": str(tmp_path / f"node-{rank}" / "sft")})
        trainer = train_job(settings, node_spec, "sft", "run-2", "sft-run-2")["spec"]["trainer"]
        env = {k: v for k, v in __import__("os").environ.items() if k in ("PATH", "HOME", "LANG")}
        for var in trainer["env"]:
            env[var["name"]] = (S3_KEYS[var["valueFrom"]["secretKeyRef"]["key"]] if "valueFrom" in var else var["value"])
        # what Kubeflow Trainer's torch plugin sets in each node's container
        env.update(PET_NNODES="2", PET_NPROC_PER_NODE=str(trainer["numProcPerNode"]), PET_NODE_RANK=str(rank),
                   PET_MASTER_ADDR="127.0.0.1", PET_MASTER_PORT=str(port), CUDA_VISIBLE_DEVICES="")
        nodes.append(subprocess.Popen(trainer["command"], cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    logs = [node.communicate(timeout=400)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], logs[0][-2000:] + logs[1][-2000:]
    assert "step 2/2" in logs[0] and "step 2/2" not in logs[1]  # rank 0 alone reports
    result = json.loads((tmp_path / "node-0/sft/result.json").read_text())
    assert result["global_step"] == 2 and result["adapter_uri"] == f"{prefix}/adapter"
    local_files = {p.name for p in (tmp_path / "node-1/sft/checkpoints/checkpoint-2").iterdir()}
    assert local_files == {"rng_state_1.pth"}  # node 1 wrote only its own part, on its own disk
    objects = remote_checkpoints(f"{prefix}/checkpoints")["checkpoint-2"]
    assert {"rng_state_0.pth", "rng_state_1.pth", "trainer_state.json", "checkpoint_complete.json"} <= objects
    restored = restore_latest(f"{prefix}/checkpoints", tmp_path / "fresh-node")  # a retry on a new machine
    assert restored is not None and is_complete(restored) and (restored / "rng_state_1.pth").exists()
