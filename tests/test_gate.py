"""The gate holds across runs: registration and every alias move refuse a candidate whose evaluation failed."""

from pathlib import Path

import dagster as dg
import pytest

from pipeline.definitions import all_assets, all_checks, finetune_job
from pipeline.evaluation.gate import GATE_PASSED_TAG, PromotionRefused
from resources import Bucket, BucketJsonIOManager, ModelRegistry, RecipeResource, TrainingLauncher
from tests.conftest import tiny_recipe


def definitions(store: Path, recipe) -> dg.Definitions:
    bucket = Bucket(root=str(store))
    return dg.Definitions(
        assets=all_assets, asset_checks=all_checks, jobs=[finetune_job],
        resources={"bucket": bucket, "io_manager": BucketJsonIOManager(bucket=bucket), "recipe": RecipeResource.of(recipe),
                   "registry": ModelRegistry(tracking_uri=f"sqlite:///{store}/mlflow.db", artifact_root=f"{store}/mlartifacts"),
                   "launcher": TrainingLauncher()},
    )


def run(defs: dg.Definitions, instance: dg.DagsterInstance, only: list[str] | None = None) -> dg.ExecuteInProcessResult:
    """The whole graph, or only the named assets (what Materialize on one asset in the UI does)."""
    selection = [dg.AssetKey(a) for a in only] if only else None
    return defs.resolve_job_def("finetune").execute_in_process(instance=instance, raise_on_error=False,
                                                               asset_selection=selection)


def everything_before_the_registry(defs: dg.Definitions) -> list[str]:
    """The unpartitioned graph without registry_entry (the feedback assets run in their own jobs)."""
    graph = defs.resolve_asset_graph()
    return [k.to_user_string() for k in graph.get_all_asset_keys()
            if k.path != ["registry_entry"] and not graph.get(k).is_partitioned]


def registered_versions(store: Path) -> list:
    return ModelRegistry(tracking_uri=f"sqlite:///{store}/mlflow.db").client().search_model_versions()


@pytest.fixture(scope="module")
def failed_then_registry_alone(tiny_model_dir, tmp_path_factory):
    """A candidate that did not train fails the gate; then registry_entry is materialized alone in a new run."""
    store = tmp_path_factory.mktemp("store")
    recipe = tiny_recipe(tiny_model_dir, training={"max_steps": 0}, gate={"min_rouge_l_gain": 0.05})
    defs, instance = definitions(store, recipe), dg.DagsterInstance.ephemeral()
    whole = run(defs, instance)
    alone = run(defs, instance, only=["registry_entry"])
    return store, whole, alone


def failed_steps(result: dg.ExecuteInProcessResult) -> set[str]:
    return {e.step_key for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE}


def test_whole_graph_run_fails_at_the_gate_check_and_registers_nothing(failed_then_registry_alone):
    store, whole, _ = failed_then_registry_alone
    assert not whole.success
    checks = {e.check_name: e for e in whole.get_asset_check_evaluations()}
    assert not checks["candidate_beats_base"].passed
    assert "below the required" in checks["candidate_beats_base"].description
    # skipped by the gate, not crashed: the only failed step is the blocking check's, and the registry never ran
    assert failed_steps(whole) == {"eval_report_candidate_beats_base"} or failed_steps(whole) == {"eval_report"}
    materialized = {m.materialization.asset_key.to_user_string() for m in whole.get_asset_materialization_events()}
    assert "eval_report" in materialized and "registry_entry" not in materialized
    assert registered_versions(store) == []


def test_registry_entry_alone_in_a_second_run_refuses_the_failed_candidate(failed_then_registry_alone):
    store, _, alone = failed_then_registry_alone
    assert not alone.success
    assert failed_steps(alone) == {"registry_entry"}
    failure = next(e for e in alone.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE)
    data = failure.step_failure_data
    message = data.user_failure_data.description if data.user_failure_data else data.error.message
    assert "registration refused" in message and "candidate_beats_base failed" in message
    assert registered_versions(store) == []


def test_a_passing_candidate_registers_when_materialized_alone(tiny_model_dir, tmp_path):
    store = tmp_path / "store"
    defs, instance = definitions(store, tiny_recipe(tiny_model_dir)), dg.DagsterInstance.ephemeral()
    assert run(defs, instance, only=everything_before_the_registry(defs)).success
    assert registered_versions(store) == []
    alone = run(defs, instance, only=["registry_entry"])
    assert alone.success
    (version,) = registered_versions(store)
    assert version.tags[GATE_PASSED_TAG] == "true"
    registry = ModelRegistry(tracking_uri=f"sqlite:///{store}/mlflow.db")
    for alias in ["challenger", "champion"]:
        assert registry.version_by_alias(version.name, alias).version == version.version


def test_an_eval_report_changed_after_its_checks_is_refused(tiny_model_dir, tmp_path):
    store = tmp_path / "store"
    defs, instance = definitions(store, tiny_recipe(tiny_model_dir)), dg.DagsterInstance.ephemeral()
    assert run(defs, instance, only=everything_before_the_registry(defs)).success
    report = store / "assets" / "eval_report.json"
    report.write_text(report.read_text().replace('"failures": []', '"failures": [], "edited": true'))
    alone = run(defs, instance, only=["registry_entry"])
    assert not alone.success
    assert registered_versions(store) == []


def test_alias_moves_refuse_an_ungated_version_and_record_who_and_why(tmp_path):
    registry = ModelRegistry(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", artifact_root=f"{tmp_path}/art")
    client = registry.client()
    client.create_registered_model("m")
    run_id = client.create_run(registry.experiment_id("e")).info.run_id
    failed = client.create_model_version("m", source="x", run_id=run_id, tags={GATE_PASSED_TAG: "false",
                                         "gate.checks": '{"candidate_beats_base": "failed"}'}).version
    untagged = client.create_model_version("m", source="x", run_id=run_id).version
    passed = client.create_model_version("m", source="x", run_id=run_id, tags={GATE_PASSED_TAG: "true"}).version
    with pytest.raises(PromotionRefused, match="candidate_beats_base failed"):
        registry.move_alias("m", "champion", failed, actor="test", reason="try")
    with pytest.raises(PromotionRefused, match="no passed evaluation gate"):
        registry.move_alias("m", "canary", untagged, actor="test", reason="try")
    assert registry.version_by_alias("m", "champion") is None
    record = registry.move_alias("m", "champion", passed, actor="on-call alice", reason="manual", evidence={"n": 3})
    assert (record["by"], record["reason"], record["evidence"], record["previous"]) == ("on-call alice", "manual", {"n": 3}, None)
    registry.remove_alias("m", "champion", actor="on-call bob", reason="rollback")
    assert registry.version_by_alias("m", "champion") is None
    assert [(m["action"], m["by"]) for m in registry.alias_history("m")] == [("set", "on-call alice"), ("removed", "on-call bob")]


def test_version_by_alias_raises_when_the_registry_itself_fails(tmp_path):
    registry = ModelRegistry(tracking_uri="http://127.0.0.1:9")  # nothing listens on the discard port
    import os

    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    try:
        with pytest.raises(Exception):
            registry.version_by_alias("m", "champion")
    finally:
        del os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]
