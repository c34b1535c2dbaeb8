"""deploy/: the production dagster.yaml against a real PostgreSQL (and moto's S3 for compute logs), the Dockerfile
through hadolint, the Helm values and the cluster manifests through the Kubernetes schema."""

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml

from pipeline.k8s.validate import load_manifests, validate_manifest
from pipeline.paths import PROJECT_ROOT
from tests.postgres_server import postgres_server
from tests.test_k8s_training import moto_s3  # noqa: F401  (the fixture)

DEPLOY = PROJECT_ROOT / "deploy"


@pytest.fixture
def production_instance(tmp_path, monkeypatch, moto_s3):  # noqa: F811
    import boto3

    boto3.client("s3").create_bucket(Bucket="dagster-logs")
    with postgres_server() as pg:
        env = {"DAGSTER_PG_HOST": pg["host"], "DAGSTER_PG_PORT": pg["port"], "DAGSTER_PG_DB": pg["db"],
               "DAGSTER_PG_USERNAME": pg["user"], "DAGSTER_PG_PASSWORD": "unused-with-trust-auth",
               "DAGSTER_COMPUTE_LOG_BUCKET": "dagster-logs", "DAGSTER_INSTANCE_CONFIG_MAP": "dagster-instance",
               "DAGSTER_RUN_SERVICE_ACCOUNT": "dagster", "DAGSTER_RUN_NAMESPACE": "ml"}
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        home = tmp_path / "dagster_home"
        home.mkdir()
        shutil.copy(DEPLOY / "dagster.yaml", home / "dagster.yaml")
        instance = dg.DagsterInstance.from_config(str(home))
        try:
            yield instance, pg
        finally:
            instance.dispose()


def test_production_instance_stores_runs_materializations_and_sensor_ticks_in_postgres(production_instance):
    from dagster._core.scheduler.instigation import InstigatorType, TickData, TickStatus
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage

    instance, pg = production_instance
    assert isinstance(instance.run_storage, PostgresRunStorage)
    assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
    assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
    limits = instance.run_coordinator.get_run_queue_config().tag_concurrency_limits
    assert {"key": "pipeline/gpu", "value": "true", "limit": 2} in limits

    @dg.asset
    def numbers(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        print("counting to three")  # a step log line, for the S3 compute log manager
        return dg.MaterializeResult(metadata={"count": 3})

    @dg.sensor(target=[numbers], minimum_interval_seconds=30)
    def new_numbers(context: dg.SensorEvaluationContext):
        return dg.RunRequest(run_key="batch-1")

    result = dg.materialize([numbers], instance=instance)
    assert result.success
    # a sensor evaluated against this instance, and its tick recorded as the daemon records one
    evaluation = new_numbers.evaluate_tick(dg.build_sensor_context(instance=instance))
    origin_id, selector_id = "pipeline-location:new_numbers", "selector-new_numbers"
    instance.create_tick(TickData(instigator_origin_id=origin_id, instigator_name="new_numbers",
                                  instigator_type=InstigatorType.SENSOR, status=TickStatus.SUCCESS,
                                  timestamp=time.time(), selector_id=selector_id,
                                  run_keys=[r.run_key for r in evaluation.run_requests],
                                  run_ids=[result.run_id]))

    # read back through a second instance (a webserver or daemon process sees the same database)
    again = dg.DagsterInstance.from_config(instance.root_directory)
    try:
        event = again.get_latest_materialization_event(dg.AssetKey("numbers"))
        assert event.run_id == result.run_id
        assert event.asset_materialization.metadata["count"].value == 3
        assert again.get_run_by_id(result.run_id).is_success
        [tick] = again.get_ticks(origin_id, selector_id)
        assert tick.status == TickStatus.SUCCESS and tick.tick_data.run_keys == ["batch-1"]
    finally:
        again.dispose()
    # and the rows are really in PostgreSQL
    import psycopg2

    with psycopg2.connect(host=pg["host"], port=pg["port"], user=pg["user"], dbname=pg["db"]) as conn, conn.cursor() as cur:
        cur.execute("select count(*) from runs where run_id = %s", (result.run_id,))
        assert cur.fetchone()[0] == 1
        cur.execute("select count(*) from job_ticks where selector_id = %s", (selector_id,))
        assert cur.fetchone()[0] == 1
    # the step's output went to the compute log bucket
    import boto3

    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket="dagster-logs").get("Contents", [])]
    assert any(k.startswith("dagster/compute-logs/") for k in keys), keys


def test_dockerfile_passes_hadolint_and_matches_the_pod_settings():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    done = subprocess.run([hadolint, "--failure-threshold", "info", "--format", "json", str(DEPLOY / "Dockerfile")],
                          capture_output=True, text=True)
    assert done.returncode == 0 and json.loads(done.stdout or "[]") == [], done.stdout + done.stderr
    text = (DEPLOY / "Dockerfile").read_text()
    from pipeline.k8s.pod import PodSettings

    uid = PodSettings.model_fields["run_as_user"].default
    assert f"--uid {uid}" in text and f"USER {uid}:{uid}" in text  # the pods' runAsUser is the image's user
    assert '".[gpu,k8s]"' in text  # GPU extras and the Kubernetes integrations
    assert "FROM ${BASE_IMAGE}" in text and "cuda" in text.split("ARG BASE_IMAGE=")[1].splitlines()[0]


def test_hadolint_fails_a_bad_dockerfile(tmp_path):
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    (tmp_path / "Dockerfile").write_text("FROM ubuntu:latest\nRUN apt-get install curl\n")
    done = subprocess.run([hadolint, "--failure-threshold", "info", str(tmp_path / "Dockerfile")], capture_output=True)
    assert done.returncode != 0


def test_cluster_manifests_validate_and_hold_the_runtime_the_code_renders():
    from pipeline.k8s.__main__ import runtime_from_launcher_json
    from resources.launcher import TrainingLauncher

    manifests = load_manifests(DEPLOY / "k8s" / "cluster.yaml")
    by_kind = {m["kind"]: m for m in manifests}
    assert {"ServiceAccount", "Role", "RoleBinding", "ConfigMap", "ClusterTrainingRuntime"} <= set(by_kind)
    for manifest in manifests:
        validate_manifest(manifest)
    launcher_json = by_kind["ConfigMap"]["data"]["PIPELINE_LAUNCHER"]
    assert by_kind["ClusterTrainingRuntime"] == runtime_from_launcher_json(launcher_json)
    printed = subprocess.run([sys.executable, "-m", "pipeline.k8s", str(DEPLOY / "k8s" / "cluster.yaml")],
                             cwd=PROJECT_ROOT, capture_output=True, text=True, check=True).stdout
    assert yaml.safe_load(printed) == by_kind["ClusterTrainingRuntime"]  # the README's re-render command
    launcher = TrainingLauncher(**json.loads(launcher_json))  # the ConfigMap's launcher is a valid resource
    assert launcher.mode == "kubernetes" and launcher.pod_settings().gpus == 8
    rules = {r["apiGroups"][0]: set(r["verbs"]) for r in by_kind["Role"]["rules"] if r["resources"] != ["pods/log"]}
    assert {"create", "get", "delete"} <= rules[""] and {"create", "get", "delete"} <= rules["trainer.kubeflow.org"]


def test_prod_definitions_take_the_launcher_from_the_environment(monkeypatch):
    from pipeline.definitions import GPU_RUN_TAG, build_definitions

    launcher_json = [m for m in load_manifests(DEPLOY / "k8s" / "cluster.yaml")
                     if m["kind"] == "ConfigMap"][0]["data"]["PIPELINE_LAUNCHER"]
    monkeypatch.setenv("PIPELINE_LAUNCHER", launcher_json)
    defs = build_definitions("prod")
    launcher = defs.resources["launcher"]
    assert launcher.mode == "kubernetes" and launcher.image == "registry.example.com/llm-pipeline:1.0.0"
    assert defs.get_job_def("finetune").tags[GPU_RUN_TAG] == "true"
    monkeypatch.setenv("PIPELINE_LAUNCHER", '{"mode": "kubernetes", "gpu": 8}')
    with pytest.raises(ValueError, match="PIPELINE_LAUNCHER"):
        build_definitions("prod")


def test_helm_values_reference_secrets_and_agree_with_the_production_instance():
    values = yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text())
    [deployment] = values["dagster-user-deployments"]["deployments"]
    assert deployment["dagsterApiGrpcArgs"] == ["--module-name", "pipeline.definitions"]
    assert values["runLauncher"]["type"] == "K8sRunLauncher" and values["dagsterDaemon"]["enabled"] is True
    coordinator = values["dagsterDaemon"]["runCoordinator"]
    instance = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())
    assert coordinator["type"] == "QueuedRunCoordinator"
    assert coordinator["config"]["queuedRunCoordinator"]["tagConcurrencyLimits"] == \
        instance["run_coordinator"]["config"]["tag_concurrency_limits"]  # the chart and the file agree
    assert values["computeLogManager"]["type"] == "S3ComputeLogManager"
    assert values["postgresql"]["enabled"] is False and values["generatePostgresqlPasswordSecret"] is False
    assert "password" not in json.dumps(values["postgresql"]).lower()  # secrets by reference only
    run_sa = values["runLauncher"]["config"]["k8sRunLauncher"]["runK8sConfig"]["podSpecConfig"]["serviceAccountName"]
    assert run_sa in {m["metadata"]["name"] for m in load_manifests(DEPLOY / "k8s" / "cluster.yaml")
                      if m["kind"] == "ServiceAccount"}
    # the user-code pod the chart renders from these values, in Kubernetes' own shape, validates
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "llm-pipeline"}, "spec": {
        "securityContext": deployment["podSecurityContext"], "containers": [{
            "name": "llm-pipeline", "image": f"{deployment['image']['repository']}:{deployment['image']['tag']}",
            "args": ["dagster", "api", "grpc", *deployment["dagsterApiGrpcArgs"]],
            "env": deployment["env"],
            "envFrom": [{"secretRef": s} for s in deployment["envSecrets"]]
            + [{"configMapRef": c} for c in deployment["envConfigMaps"]],
            "resources": deployment["resources"], "securityContext": deployment["securityContext"]}]}}
    validate_manifest(pod)
