"""The canary decision: a better canary is promoted, a worse one rolled back, a tie on too few samples waits;
every move is recorded on the registry version and as a Dagster event. On-call promote/rollback/status."""

from __future__ import annotations

import argparse

import dagster as dg
import pytest

from assets.canary import ACTOR, canary_decision_sensor
from pipeline import oncall
from pipeline.evaluation.gate import GATE_PASSED_TAG
from pipeline.serving import events
from pipeline.serving.canary import rollback
from pipeline.serving.feedback_writer import FeedbackWriter
from resources import Bucket, ModelRegistry, RecipeResource
from tests.conftest import tiny_recipe

NAME = "tiny-summarizer"


@pytest.fixture
def world(tmp_path, tiny_model_dir):
    """v1 champion, v2 canary (both gated), v3 not gated; an empty feedback bucket; min_samples 30."""
    registry = ModelRegistry(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", artifact_root=f"{tmp_path}/art")
    client = registry.client()
    client.create_registered_model(NAME)
    run_id = client.create_run(registry.experiment_id("e")).info.run_id
    for gate in ("true", "true", "false"):
        client.create_model_version(NAME, source="unused", run_id=run_id, tags={GATE_PASSED_TAG: gate})
    registry.move_alias(NAME, "champion", "1", actor="test", reason="first model")
    registry.move_alias(NAME, "canary", "2", actor="test", reason="passed the gate")
    bucket = Bucket(root=str(tmp_path / "bucket"))
    recipe = tiny_recipe(tiny_model_dir, serving={"canary": {"min_samples": 30, "confidence": 0.95, "margin": 0.05}})
    return registry, bucket, RecipeResource.of(recipe)


def serve_feedback(bucket: Bucket, version: str, n: int, good: int, corrected: int = 0) -> None:
    """`n` interactions of `version`, each rated: `good` of them +1, the rest -1, `corrected` of the bad corrected."""
    writer = FeedbackWriter(bucket.write_bytes, flush_events=10_000, flush_seconds=3600)
    alias = "champion" if version == "1" else "canary"
    for i in range(n):
        event = events.interaction({"name": NAME, "version": version, "alias": alias}, [{"role": "user", "content": f"q{i}"}],
                                   "an answer", {"temperature": 0.0}, {"prompt_tokens": 3, "completion_tokens": 2}, 5)
        writer.record(event)
        correction = "a better answer" if i >= good and i - good < corrected else None
        writer.record(events.feedback(event["id"], 1 if i < good else -1, correction, None))
    writer.close()


def tick(world) -> dg.SensorResult:
    registry, bucket, recipe = world
    with dg.build_sensor_context(resources={"registry": registry, "bucket": bucket, "recipe": recipe},
                                 instance=dg.DagsterInstance.ephemeral()) as context:
        return canary_decision_sensor(context)


def aliases(registry: ModelRegistry) -> dict[str, str | None]:
    return {a: (str(v.version) if (v := registry.version_by_alias(NAME, a)) else None) for a in ("champion", "canary")}


def test_a_better_canary_is_promoted_with_its_evidence_recorded(world):
    registry, bucket, _ = world
    serve_feedback(bucket, "1", n=60, good=36, corrected=10)
    serve_feedback(bucket, "2", n=60, good=54, corrected=1)
    result = tick(world)
    assert aliases(registry) == {"champion": "2", "canary": None}
    promoted, removed = registry.alias_history(NAME)[-2:]
    assert (promoted["alias"], promoted["action"], promoted["version"], promoted["previous"]) == ("champion", "set", "2", "1")
    assert promoted["by"] == ACTOR and "at least as good" in promoted["reason"]
    rating = next(m for m in promoted["evidence"]["metrics"] if m["metric"] == "rating")
    assert (rating["canary"], rating["champion"]) == ({"successes": 54, "n": 60}, {"successes": 36, "n": 60})
    assert (removed["alias"], removed["action"]) == ("canary", "removed")
    (observation,) = result.asset_events
    assert observation.asset_key == dg.AssetKey("deployment") and observation.metadata["action"].value == "promote"


def test_a_worse_canary_is_rolled_back_and_the_champion_stays(world):
    registry, bucket, _ = world
    serve_feedback(bucket, "1", n=60, good=50)
    serve_feedback(bucket, "2", n=60, good=25, corrected=20)
    result = tick(world)
    assert aliases(registry) == {"champion": "1", "canary": None}
    last = registry.alias_history(NAME)[-1]
    assert (last["alias"], last["action"], last["version"], last["by"]) == ("canary", "removed", "2", ACTOR)
    assert "worse" in last["reason"] and last["evidence"]["canary_version"] == "2"
    assert result.asset_events[0].metadata["action"].value == "rollback"


def test_a_tie_on_too_few_samples_waits_and_moves_nothing(world):
    registry, bucket, _ = world
    serve_feedback(bucket, "1", n=12, good=6)
    serve_feedback(bucket, "2", n=12, good=6)
    before = registry.alias_history(NAME)
    result = tick(world)
    assert aliases(registry) == {"champion": "1", "canary": "2"}
    assert registry.alias_history(NAME) == before
    assert "too few samples" in result.skip_reason.skip_message and not result.asset_events


def test_feedback_from_before_the_canary_started_does_not_count(world):
    registry, bucket, _ = world
    serve_feedback(bucket, "2", n=60, good=5)  # bad feedback, then the canary is set again: a fresh start
    registry.move_alias(NAME, "canary", "2", actor="test", reason="redeployed")
    serve_feedback(bucket, "1", n=10, good=5)
    serve_feedback(bucket, "2", n=10, good=5)
    assert "too few samples" in tick(world).skip_reason.skip_message
    assert aliases(registry)["canary"] == "2"


def test_on_call_promote_rollback_and_status(world, monkeypatch, tmp_path, capsys):
    registry, bucket, recipe = world
    monkeypatch.setattr(oncall, "_context", lambda: (registry, bucket, recipe.load()))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    (tmp_path / "dagster_home").mkdir()
    assert oncall.promote(argparse.Namespace(version="3", to="champion", reason=None)) == 2  # v3 failed its gate
    assert "no passed evaluation gate" in capsys.readouterr().err
    assert oncall.promote(argparse.Namespace(version="9", to="canary", reason=None)) == 2
    assert "not found" in capsys.readouterr().err
    assert oncall.promote(argparse.Namespace(version="2", to="champion", reason="looks good")) == 0
    assert aliases(registry) == {"champion": "2", "canary": None}
    assert oncall.rollback(argparse.Namespace(reason="pager at 3am", champion=False)) == 0
    assert aliases(registry) == {"champion": "1", "canary": None}
    last = registry.alias_history(NAME)[-1]
    assert (last["alias"], last["version"], last["previous"]) == ("champion", "1", "2")
    assert last["reason"] == "rollback: pager at 3am" and last["by"].startswith("on-call ")
    registry.move_alias(NAME, "canary", "2", actor="test", reason="again")
    assert oncall.status(argparse.Namespace(url="http://127.0.0.1:9")) == 0
    out = capsys.readouterr().out
    assert "champion  v1" in out and "canary    v2" in out and "canary decision now: wait" in out
    with dg.DagsterInstance.get() as instance:
        observed = instance.fetch_observations(dg.AssetKey("deployment"), limit=10).records
    assert {r.event_log_entry.asset_observation.metadata["action"].value for r in observed} == {"promote", "rollback"}


def test_rollback_without_canary_or_previous_champion_says_so(world):
    registry, _, _ = world
    registry.remove_alias(NAME, "canary", actor="test", reason="clear")
    with pytest.raises(ValueError, match="nothing to roll back"):
        rollback(registry, NAME, actor="test", reason="oops")
