"""The closed flywheel, end to end with a tiny model: serve -> ratings and corrections in the bucket -> the bucket
sensor ingests them and asks for a retraining -> the retrained model passes the gate and goes live as canary (hot
swapped in) -> worse live feedback -> the canary decision sensor rolls it back (swapped out) -> the champion's
lineage still names the data it was trained on, and the rolled-back version names the feedback days it read."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import dagster as dg
import requests

from assets.automation import RETRAIN_JOB, tick_in_process
from assets.canary import ACTOR
from pipeline.definitions import definitions_with
from pipeline.feedback.synthetic import INSTRUCTION, load_packages
from pipeline.lineage import format_lineage
from pipeline.serving.app import build_app
from pipeline.serving.registry_source import RegistrySource
from pipeline.serving.server import build_server
from resources import Bucket, BucketJsonIOManager, ModelRegistry, RecipeResource, TrainingLauncher
from tests.conftest import free_port, running, tiny_recipe, wait_until



def test_served_feedback_retrains_a_canary_that_worse_feedback_rolls_back(tiny_model_dir, tmp_path):
    store = tmp_path / "store"
    today = datetime.now(timezone.utc).date()
    recipe = tiny_recipe(
        tiny_model_dir,
        feedback={"start_date": (today - timedelta(days=2)).isoformat(), "window_days": 3, "heldout_days": 0,
                  "min_new_examples": 8},
        serving={"canary_share": 0.5, "poll_seconds": 0.3, "flush_seconds": 3600, "flush_events": 100_000,
                 "torch_threads": 1, "canary": {"min_samples": 8, "confidence": 0.95}})
    bucket = Bucket(root=str(store))
    registry = ModelRegistry(tracking_uri=f"sqlite:///{store}/mlflow.db", artifact_root=f"{store}/mlartifacts")
    resources = {"bucket": bucket, "io_manager": BucketJsonIOManager(bucket=bucket), "recipe": RecipeResource.of(recipe),
                 "registry": registry, "launcher": TrainingLauncher()}
    defs, instance = definitions_with(recipe.feedback, resources), dg.DagsterInstance.ephemeral()
    name = recipe.registry.model_name

    first = defs.resolve_job_def("finetune").execute_in_process(instance=instance, raise_on_error=False)
    assert first.success
    v1 = first.output_for_node("registry_entry")["version"]
    assert str(registry.version_by_alias(name, "champion").version) == v1

    server = build_server(Path(first.output_for_node("base_model")["path"]), recipe.serving, name,
                          RegistrySource(registry, name), bucket.write_bytes)
    packages = load_packages()
    with running(build_app(server), free_port()) as url, requests.Session() as http:
        def ask(pkg: dict, model: str) -> dict:
            # sampled (seeded): the tiny model's greedy answer is often empty, which the reader quarantines
            messages = [{"role": "user", "content": f"{INSTRUCTION}\n\n{pkg['description']}"}]
            body = {"model": model, "messages": messages, "max_tokens": 8, "temperature": 1.0, "seed": len(pkg["description"])}
            r = http.post(f"{url}/v1/chat/completions", json=body, timeout=60)
            assert r.status_code == 200, r.text
            assert r.json()["choices"][0]["message"]["content"].strip()
            return r.json()

        def rate(response: dict, rating: int, correction: str | None = None) -> None:
            body = {"response_id": response["id"], "rating": rating, **({"correction": correction} if correction else {})}
            assert http.post(f"{url}/v1/feedback", json=body, timeout=10).status_code == 202

        # 1. served traffic, rated and corrected by users, reaches the bucket
        for pkg in packages[:16]:
            rate(ask(pkg, name), -1, correction=pkg["summary"])
        server.writer.flush()

        # 2. the bucket sensor ingests today, then asks for a retraining; the retrained model is gated and goes canary
        cursor, retrained = None, None
        for _ in range(3):
            result, runs = tick_in_process(defs, instance, cursor, log=lambda _: None)
            cursor = result.cursor or cursor
            assert all(run.success for run in runs)
            retrained = next((run for run in runs if run.job_def.name == RETRAIN_JOB), retrained)
            if retrained:
                break
        assert retrained is not None, "the sensor never asked for a retraining"
        v2 = retrained.output_for_node("registry_entry")["version"]
        assert retrained.output_for_node("registry_entry")["aliases"] == ["challenger", "canary"]
        assert wait_until(lambda: http.get(f"{url}/healthz", timeout=10).json()["live"] == {"champion": v1, "canary": v2},
                          timeout=60)

        # 3. the canary answers worse than the champion (live ratings), and the canary decision rolls it back
        for pkg in packages[16:28]:
            rate(ask(pkg, f"{name}:canary"), -1, correction=pkg["summary"])
            rate(ask(pkg, f"{name}:champion"), 1)
        server.writer.flush()
        sensor = defs.get_sensor_def("canary_decision")
        with dg.build_sensor_context(instance=instance, resources={k: resources[k] for k in ("bucket", "registry", "recipe")},
                                     definitions=defs) as context:
            decision = sensor(context)
        assert decision.asset_events[0].metadata["action"].value == "rollback"
        assert registry.version_by_alias(name, "canary") is None
        assert str(registry.version_by_alias(name, "champion").version) == v1
        assert wait_until(lambda: http.get(f"{url}/healthz", timeout=10).json()["live"] == {"champion": v1},
                          timeout=60)
        assert ask(packages[0], name)["served_by"]["version"] == v1

    move = registry.alias_history(name)[-1]
    assert (move["alias"], move["action"], move["version"], move["by"]) == ("canary", "removed", v2, ACTOR)
    rating = next(m for m in move["evidence"]["metrics"] if m["metric"] == "rating")
    assert rating["canary"] == {"successes": 0, "n": 12} and rating["champion"] == {"successes": 12, "n": 12}

    # 4. lineage: the champion still names the data it was trained on; the rolled-back version names the feedback
    champion = registry.client().get_model_version(name, v1)
    sheet = format_lineage(name, v1, list(champion.aliases), dict(champion.tags))
    assert "champion" in sheet and "data/sample/" in sheet
    versions = {m.materialization.asset_key.to_user_string(): m.materialization.tags["dagster/data_version"]
                for m in first.get_asset_materialization_events()}
    for asset in ("seed_examples", "deduped_examples", "train_split"):
        assert champion.tags[f"data.{asset}"] == versions[asset] and versions[asset] in sheet, asset
    canary_tags = registry.version_tags(name, v2)
    assert today.isoformat() in canary_tags["feedback.partitions"].split(",")
    assert canary_tags["data.train_split"] != champion.tags["data.train_split"]  # the feedback trained it
    assert json.loads(canary_tags["gate.checks"])
