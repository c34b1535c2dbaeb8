"""The whole asset graph, in-process, on the tiny model: lineage, determinism, DPO and resume (the gate: test_gate.py)."""

import subprocess
from pathlib import Path

import dagster as dg
import pytest

from pipeline.definitions import all_assets, all_checks, finetune_job
from resources import Bucket, BucketJsonIOManager, ModelRegistry, RecipeResource, TrainingLauncher
from pipeline.paths import PROJECT_ROOT
from tests.conftest import tiny_recipe

DATA_ASSETS = ["seed_examples", "quarantined_examples", "deduped_examples", "train_split", "heldout_split", "base_model", "train_token_lengths"]


def run_graph(store: Path, recipe, instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    bucket = Bucket(root=str(store))
    defs = dg.Definitions(
        assets=all_assets,
        asset_checks=all_checks,
        jobs=[finetune_job],
        resources={
            "bucket": bucket,
            "io_manager": BucketJsonIOManager(bucket=bucket),
            "recipe": RecipeResource.of(recipe),
            "registry": ModelRegistry(tracking_uri=f"sqlite:///{store}/mlflow.db", artifact_root=f"{store}/mlartifacts"),
            "launcher": TrainingLauncher(),
        },
    )
    return defs.resolve_job_def("finetune").execute_in_process(instance=instance, raise_on_error=False)


def data_versions(result: dg.ExecuteInProcessResult) -> dict[str, str]:
    return {
        m.materialization.asset_key.to_user_string(): m.materialization.tags["dagster/data_version"]
        for m in result.get_asset_materialization_events()
    }


@pytest.fixture(scope="module")
def two_runs(tiny_model_dir, tmp_path_factory):
    """The graph run twice on one instance and one store: a first model, then a second on the same inputs."""
    store = tmp_path_factory.mktemp("store")
    instance = dg.DagsterInstance.ephemeral()
    recipe = tiny_recipe(tiny_model_dir)
    first = run_graph(store, recipe, instance)
    second = run_graph(store, recipe, instance)
    return store, recipe, first, second


def test_whole_graph_materializes_and_passes_its_checks(two_runs):
    _, _, first, _ = two_runs
    assert first.success
    assert set(data_versions(first)) == set(DATA_ASSETS) | {"sft_checkpoint", "dpo_checkpoint", "quantized_model",
                                                            "eval_report", "registry_entry",
                                                            "deployment"}
    checks = {e.check_name: e.passed for e in first.get_asset_check_evaluations()}
    assert checks == {"candidate_beats_base": True, "no_train_heldout_overlap": True,
                      "no_heldout_near_duplicate_in_train": True, "no_pii_or_secrets_left": True,
                      "candidate_ties_or_beats_champion": True, "no_general_capability_regression": True,
                      "no_eval_contamination": True}


def test_registered_version_carries_full_lineage(two_runs):
    store, recipe, first, _ = two_runs
    entry = first.output_for_node("registry_entry")
    registry = ModelRegistry(tracking_uri=f"sqlite:///{store}/mlflow.db")
    tags = registry.version_tags(recipe.registry.model_name, entry["version"])
    versions = data_versions(first)
    assert tags["base_model.sha256"] == versions["base_model"]
    for asset in ["seed_examples", "quarantined_examples", "deduped_examples", "train_split", "heldout_split"]:
        assert tags[f"data.{asset}"] == versions[asset], asset
    assert tags["recipe.fingerprint"] == recipe.fingerprint()
    assert tags["dagster.run_id"] == first.run_id
    assert tags["adapter.sha256"] == versions["sft_checkpoint"]
    # the score is the mean ROUGE-L of the candidate's own answers, recomputed here from the report's answers
    from rouge_score import rouge_scorer

    rows = first.output_for_node("eval_report")["rows"]
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    rescored = [scorer.score(r["reference"], r["candidate_answer"])["rougeL"].fmeasure for r in rows]
    assert 0 < len(rows) == first.output_for_node("eval_report")["examples"]
    assert float(tags["eval.candidate_rouge_l"]) == pytest.approx(sum(rescored) / len(rescored), abs=1e-4)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True).stdout.strip()
    assert tags["code.version"].removesuffix("-dirty") == head
    assert tags["mlflow.run_id"]


def test_same_inputs_give_the_same_data_versions(two_runs):
    _, _, first, second = two_runs
    a, b = data_versions(first), data_versions(second)
    for asset in DATA_ASSETS + ["sft_checkpoint"]:
        assert a[asset] == b[asset], asset


def test_second_version_is_challenger_and_canary_beside_the_first_champion(two_runs):
    store, recipe, first, second = two_runs
    registry = ModelRegistry(tracking_uri=f"sqlite:///{store}/mlflow.db")
    name = recipe.registry.model_name
    v1, v2 = first.output_for_node("registry_entry")["version"], second.output_for_node("registry_entry")["version"]
    assert (v1, v2) == ("1", "2")
    assert str(registry.version_by_alias(name, "challenger").version) == "2"
    # A champion exists: the gated second version goes live as canary; live feedback decides the rest.
    assert "champion" in second.output_for_node("eval_report")["models"]
    assert str(registry.version_by_alias(name, "champion").version) == "1"
    assert str(registry.version_by_alias(name, "canary").version) == "2"


def test_dpo_enabled_makes_the_dpo_model_the_evaluated_and_registered_candidate(tiny_model_dir, tmp_path):
    import json

    store = tmp_path / "store"
    recipe = tiny_recipe(tiny_model_dir, dpo={"enabled": True, "max_steps": 2, "batch_size": 4, "max_length": 128,
                                              "learning_rate": 0.01, "logging_steps": 1})
    result = run_graph(store, recipe, dg.DagsterInstance.ephemeral())
    assert result.success
    versions = data_versions(result)
    assert versions["dpo_checkpoint"] != versions["sft_checkpoint"]
    entry = result.output_for_node("registry_entry")
    assert entry["tags"]["weights.sha256"] == versions["dpo_checkpoint"]
    assert entry["tags"]["training.dpo"] == "done"
    spec = json.loads(next(store.glob("runs/*/dpo/spec.json")).read_text())
    heldout_groups = {r["group"] for r in result.asset_value("heldout_split")}
    assert set(spec["exclude_groups"]) == heldout_groups


def test_dpo_disabled_passes_the_sft_model_through_marked_skipped(two_runs):
    _, _, first, _ = two_runs
    versions = data_versions(first)
    assert versions["dpo_checkpoint"] == versions["sft_checkpoint"]
    assert first.output_for_node("dpo_checkpoint")["dpo_skipped"] is True


def _kill_training_after_first_checkpoint(workdir: Path) -> None:
    """SIGKILL the training process started on `workdir`'s spec once it has a complete checkpoint (a killed pod)."""
    import os
    import signal
    import time

    from pipeline.training.checkpoints import latest_complete

    spec = str(workdir / "spec.json").encode()
    deadline = time.monotonic() + 240
    while latest_complete(workdir / "checkpoints") is None and time.monotonic() < deadline:
        time.sleep(0.05)
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if spec in (proc / "cmdline").read_bytes():
                os.kill(int(proc.name), signal.SIGKILL)
                (workdir / "killed-once").touch()
        except OSError:
            continue


class LaunchKilledOnce(TrainingLauncher):
    """The real launcher, whose first SFT training process is killed from outside after its first complete checkpoint."""

    def launch(self, context, spec, workdir, **kwargs):
        import threading

        if spec.get("stage", "sft") == "sft" and not (workdir / "killed-once").exists():
            threading.Thread(target=_kill_training_after_first_checkpoint, args=(workdir,), daemon=True).start()
        return super().launch(context, spec, workdir, **kwargs)


def test_retried_sft_asset_resumes_from_the_killed_attempts_checkpoint(tiny_model_dir, tmp_path):
    store = tmp_path / "store"
    recipe = tiny_recipe(tiny_model_dir, training={"max_steps": 60, "save_steps": 3, "max_length": 128,
                                                   "merge_adapter": False})
    bucket = Bucket(root=str(store))
    defs = dg.Definitions(
        assets=all_assets, asset_checks=all_checks, jobs=[finetune_job],
        resources={"bucket": bucket, "io_manager": BucketJsonIOManager(bucket=bucket), "recipe": RecipeResource.of(recipe),
                   "registry": ModelRegistry(tracking_uri=f"sqlite:///{store}/mlflow.db", artifact_root=f"{store}/mlartifacts"),
                   "launcher": LaunchKilledOnce()},
    )
    result = defs.resolve_job_def("finetune").execute_in_process(
        instance=dg.DagsterInstance.ephemeral(), raise_on_error=False,
        asset_selection=[dg.AssetKey(k) for k in DATA_ASSETS + ["sft_checkpoint"]])
    assert result.success
    sft = result.asset_value("sft_checkpoint")
    assert sft["resumed_from"] and sft["resumed_from"].startswith("checkpoint-")
    assert sft["global_step"] == 60
    assert (store / "runs" / result.run_id / "sft" / "killed-once").exists()
    # the launcher itself failed the first attempt on the killed process's exit status, and the retry policy retried it
    retried = [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY" and e.step_key == "sft_checkpoint"]
    assert len(retried) == 1 and "code -9" in str(retried[0].event_specific_data.error)
