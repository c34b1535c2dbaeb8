"""The feedback loop as on-call uses it: a backfill of a week, one retraining, lineage that names exactly what was
read, the sensor's cursor across restarts, late arrivals, the retraining threshold and the nightly schedule."""

import json
from pathlib import Path

import dagster as dg
import pytest

from assets.automation import INGEST_JOB, RETRAIN_JOB, backfill, retraining_decision, tick_in_process
from pipeline.definitions import definitions_with
from pipeline.feedback.layout import days_between, object_key
from pipeline.feedback.synthetic import gzip_lines, write_days
from pipeline.lineage import format_lineage
from resources import Bucket, BucketJsonIOManager, ModelRegistry, RecipeResource, TrainingLauncher
from tests.conftest import tiny_recipe

WEEK = days_between("2026-11-23", "2026-11-29")


def loop_recipe(model_dir: Path, **feedback):
    settings = {"start_date": "2026-11-01", "end_date": WEEK[-1], "window_days": 7, "heldout_days": 1,
                "min_new_examples": 20, **feedback}
    return tiny_recipe(model_dir, feedback=settings)


def loop_defs(store: Path, recipe) -> dg.Definitions:
    bucket = Bucket(root=str(store))
    return definitions_with(recipe.feedback, {
        "bucket": bucket, "io_manager": BucketJsonIOManager(bucket=bucket), "recipe": RecipeResource.of(recipe),
        "registry": ModelRegistry(tracking_uri=f"sqlite:///{store}/mlflow.db", artifact_root=f"{store}/mlartifacts"),
        "launcher": TrainingLauncher()})


def materializations(instance: dg.DagsterInstance, asset: str, day: str) -> list:
    records = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[day]),
                                              limit=10).records
    return [r.asset_materialization for r in records]  # newest first


@pytest.fixture(scope="module")
def backfilled(tiny_model_dir, tmp_path_factory):
    """A week of generated feedback in a local bucket, backfilled from the command line's code path."""
    store = tmp_path_factory.mktemp("feedback-store")
    recipe = loop_recipe(tiny_model_dir)
    defs = loop_defs(store, recipe)
    written = write_days(WEEK, defs.resources["bucket"].write_bytes, per_day=16)
    # on disk, as under the daemon: schedule contexts open the instance from its reference
    instance = dg.DagsterInstance.local_temp(str(tmp_path_factory.mktemp("dagster-home")))
    results = backfill(defs, instance, WEEK[0], WEEK[-1], log=lambda _: None)
    return store, recipe, defs, instance, written, results


def test_backfill_ingests_every_day_then_retrains_once_over_the_window(backfilled):
    _, _, _, instance, _, results = backfilled
    assert all(r.success for r in results)
    jobs = [r.job_def.name for r in results]
    assert jobs == [INGEST_JOB] * len(WEEK) + [RETRAIN_JOB]
    assert {r.dagster_run.tags["dagster/partition"] for r in results[:-1]} == set(WEEK)
    assert results[-1].dagster_run.tags["dagster/partition"] == WEEK[-1]  # the window ends at the last partition
    window = results[-1].asset_value("feedback_window")
    assert window["days"] == WEEK and window["missing"] == [] and window["sft"]
    train = results[-1].asset_value("train_split")
    heldout = results[-1].asset_value("heldout_split")
    assert any(r["source"] == "feedback" for r in train)
    # the time split: feedback examples of the latest day are held out, none of them trains
    assert {r["meta"]["feedback_day"] for r in heldout if r["source"] == "feedback"} == {WEEK[-1]}
    assert all(r["meta"]["feedback_day"] < WEEK[-1] for r in train if r["source"] == "feedback")


def test_registered_version_names_exactly_the_partitions_and_versions_its_training_read(backfilled):
    store, recipe, defs, instance, _, results = backfilled
    entry = results[-1].output_for_node("registry_entry")
    registry = ModelRegistry(tracking_uri=f"sqlite:///{store}/mlflow.db")
    tags = registry.version_tags(recipe.registry.model_name, entry["version"])
    assert tags["feedback.partitions"] == ",".join(WEEK)
    assert tags["feedback.window"] == f"{WEEK[0]}..{WEEK[-1]}"
    assert {k.rsplit(".", 1)[1] for k in tags if k.startswith("feedback.examples.")} == set(WEEK)
    read_versions = {}
    for day in WEEK:
        examples, events = materializations(instance, "feedback_examples", day), materializations(instance, "feedback_events", day)
        assert tags[f"feedback.examples.{day}"] == examples[0].tags["dagster/data_version"]
        assert tags[f"feedback.events.{day}"] == events[0].tags["dagster/data_version"]
        assert tags[f"feedback.curated.{day}"] == str(examples[0].metadata["curated"].value)
        read_versions[day] = tags[f"feedback.examples.{day}"]

    # a late object changes one day afterwards: the version's lineage keeps naming what its training read
    late_day = WEEK[2]
    bucket = defs.resources["bucket"]
    interaction = {"kind": "interaction", "id": "late-1", "ts": f"{late_day}T23:59:00.000Z",
                   "model": {"name": "m", "version": "1"}, "response": "a text editor",
                   "messages": [{"role": "user", "content": "Write the one-line summary of this Debian package from its "
                                 "description.\n\nGNU nano is a small and friendly text editor for the terminal."}]}
    correction = {"kind": "feedback", "id": "late-2", "ts": f"{late_day}T23:59:30.000Z", "interaction_id": "late-1",
                  "rating": -1, "correction": "small, friendly text editor inspired by Pico"}
    bucket.write_bytes(object_key(late_day, "serve-late", "20261201T000000", 0),
                       gzip_lines([json.dumps(interaction), json.dumps(correction)]))
    rerun = defs.resolve_job_def(INGEST_JOB).execute_in_process(partition_key=late_day, instance=instance)
    assert rerun.success
    latest = materializations(instance, "feedback_examples", late_day)[0].tags["dagster/data_version"]
    assert latest != read_versions[late_day]
    assert registry.version_tags(recipe.registry.model_name, entry["version"])[f"feedback.examples.{late_day}"] == read_versions[late_day]

    sheet = format_lineage(recipe.registry.model_name, entry["version"], [], tags)
    assert f"feedback window {WEEK[0]}..{WEEK[-1]}" in sheet and "seed files: data/sample/alpaca.jsonl" in sheet
    assert all(f"feedback/dt={day}/  examples {read_versions[day][:16]}" in sheet for day in WEEK)


def test_counts_add_up_from_objects_to_events_to_curated_examples(backfilled):
    store, _, _, instance, written, results = backfilled
    window = results[-1].asset_value("feedback_window")
    for day in WEEK:
        events_meta = materializations(instance, "feedback_events", day)[-1].metadata
        examples_meta = materializations(instance, "feedback_examples", day)[-1].metadata
        lines = sum(len(gzip_lines_of(store, key)) for key in written[day])
        assert events_meta["objects"].value == len(written[day])
        assert events_meta["lines"].value == lines
        assert lines == events_meta["events"].value + events_meta["quarantined"].value + events_meta["duplicate_events"].value
        outcomes = {r["outcome"]: r["count"] for r in _rows(examples_meta["outcomes"])}
        assert sum(outcomes.values()) == examples_meta["events"].value == events_meta["events"].value
        assert examples_meta["sft_candidates"].value == outcomes.get("correction_and_pair", 0) + outcomes.get("correction_equals_response", 0)
        assert examples_meta["pair_candidates"].value == outcomes.get("correction_and_pair", 0) + outcomes.get("comparison_pair", 0)
        for steps, final in (("sft_steps", "sft_examples"), ("pair_steps", "preference_pairs")):
            rows = _rows(examples_meta[steps])
            assert all(r["in"] == r["kept"] + r["dropped"] for r in rows)
            assert rows[-1]["kept"] == examples_meta[final].value
        assert window["partitions"][day]["sft"] == examples_meta["sft_examples"].value
    deduped = [e for e in results[-1].get_asset_materialization_events()
               if e.materialization.asset_key.to_user_string() == "deduped_examples"][0].materialization.metadata
    assert deduped["feedback_in"].value == len(window["sft"])


def test_scrubbing_is_counted_per_day_by_type(backfilled):
    _, _, _, instance, _, results = backfilled
    by_type = {}
    for day in WEEK:
        meta = materializations(instance, "feedback_examples", day)[-1].metadata
        rows = _rows(meta["scrubbed_by_type"]) if hasattr(meta["scrubbed_by_type"].value, "records") else []
        for r in rows:
            by_type[r["type"]] = by_type.get(r["type"], 0) + r["count"]
        assert meta["scrubbed_total"].value == sum(r["count"] for r in rows)
    assert by_type  # the generator pastes e-mail addresses, tokens and phone numbers into some corrections
    for rec in results[-1].asset_value("train_split"):
        assert "example.org" not in rec["messages"][-1]["content"] and "ghp_" not in rec["messages"][-1]["content"]


def test_nothing_new_since_the_champion_skips_the_sensor_and_the_schedule(backfilled):
    store, recipe, defs, instance, _, _ = backfilled
    registry = defs.resources["registry"]
    # the late object of the lineage test may have added a day's worth; compare with the threshold instead
    request, reason = retraining_decision(instance, registry, RecipeResource.of(recipe), WEEK[-1], threshold=10_000)
    assert request is None and "since champion v1's data" in reason and "below the threshold of 10000" in reason
    schedule = defs.get_schedule_def("nightly_retraining")
    assert schedule.cron_schedule == recipe.feedback.cron and schedule.execution_timezone == recipe.feedback.cron_timezone
    resources = {k: defs.resources[k] for k in ("registry", "recipe")}
    with dg.build_schedule_context(instance=instance, resources=resources) as context:
        tick = schedule(context)
    nightly, why = retraining_decision(instance, registry, RecipeResource.of(recipe), WEEK[-1], threshold=1)
    if nightly is None:  # nothing at all new since the champion: the night is skipped, saying why
        assert isinstance(tick, dg.SkipReason) and tick.skip_message == why and "since champion v1's data" in why
    else:  # the lineage test's late object is new since the champion: one run for the last window
        assert (tick.job_name, tick.partition_key, tick.run_key) == (RETRAIN_JOB, WEEK[-1], nightly.run_key)


def gzip_lines_of(store: Path, key: str) -> list[bytes]:
    import gzip

    return [line for line in gzip.decompress((store / key).read_bytes()).split(b"\n") if line]


def _rows(value) -> list[dict]:
    return [dict(r.data) for r in value.value.records]


# --- the sensor, without training ---------------------------------------------------------------------------

@pytest.fixture
def watched(tiny_model_dir, tmp_path):
    store = tmp_path / "store"
    recipe = loop_recipe(tiny_model_dir, min_new_examples=10_000)
    defs = loop_defs(store, recipe)
    write_days(WEEK[:3], defs.resources["bucket"].write_bytes, per_day=10, seed=11)
    return store, recipe, defs, dg.DagsterInstance.ephemeral()


def test_sensor_ingests_each_day_once_and_its_cursor_survives_a_restart(watched):
    _, _, defs, instance = watched
    after_end = "2026-11-30"  # past the last partition (a writer's clock ahead): left unread, and unmarked
    defs.resources["bucket"].write_bytes(object_key(after_end, "serve-x", "20261130T000000", 0), gzip_lines(["{}"]))
    first, runs = tick_in_process(defs, instance, None, log=lambda _: None)
    assert after_end not in json.loads(first.cursor)
    requests = first.run_requests
    assert {r.partition_key for r in requests} == set(WEEK[:3]) and {r.job_name for r in requests} == {INGEST_JOB}
    assert len({r.run_key for r in requests}) == len(requests) and all(r.success for r in runs)
    # the daemon restarts: a new context built from the stored cursor asks for nothing again, and says why
    second, runs = tick_in_process(defs, instance, first.cursor, log=lambda _: None)
    assert not second.run_requests and not runs
    assert "below the threshold of 10000" in second.skip_reason.skip_message
    assert "no champion yet" in second.skip_reason.skip_message
    # evaluating the old tick again gives the same run keys, which Dagster never launches twice
    again, _ = _evaluate(defs, instance, None)
    assert sorted(r.run_key for r in again.run_requests) == sorted(r.run_key for r in requests)


def test_a_late_object_rematerializes_its_day_and_rejoins_the_next(watched):
    store, _, defs, instance = watched
    first, _ = tick_in_process(defs, instance, None, log=lambda _: None)
    day = WEEK[1]
    before = materializations(instance, "feedback_events", day)
    late = {"kind": "interaction", "id": "late-interaction", "ts": f"{day}T23:30:00.000Z", "model": {"version": "2"},
            "messages": [{"role": "user", "content": "Summarise the zlib package."}], "response": "compression library"}
    defs.resources["bucket"].write_bytes(object_key(day, "serve-late", "20261201T010000", 0), gzip_lines([json.dumps(late)]))
    tick, runs = tick_in_process(defs, instance, first.cursor, log=lambda _: None)
    assert [(r.partition_key, r.asset_selection) for r in tick.run_requests] == [
        (day, None), (WEEK[2], [dg.AssetKey("feedback_examples")])]
    assert tick.run_requests[0].tags["feedback.late"] == "True" and all(r.success for r in runs)
    after = materializations(instance, "feedback_events", day)
    assert len(after) == len(before) + 1
    assert after[0].metadata["events"].value == before[0].metadata["events"].value + 1
    quiet, _ = tick_in_process(defs, instance, tick.cursor, log=lambda _: None)
    assert not quiet.run_requests


def test_enough_new_examples_request_one_retraining_of_the_last_window(watched, tiny_model_dir):
    store, _, defs, instance = watched
    first, _ = tick_in_process(defs, instance, None, log=lambda _: None)
    eager = loop_defs(store, loop_recipe(tiny_model_dir, min_new_examples=5))
    result, _ = _evaluate(eager, instance, first.cursor)
    (request,) = result.run_requests
    assert request.job_name == RETRAIN_JOB and request.partition_key == WEEK[-1]
    assert int(request.tags["feedback.new_examples"]) >= 5
    repeat, _ = _evaluate(eager, instance, result.cursor)
    assert [r.run_key for r in repeat.run_requests] == [request.run_key]  # same data, same key: launched once


def _evaluate(defs, instance, cursor):
    sensor = defs.get_sensor_def("feedback_bucket_sensor")
    resources = {k: defs.resources[k] for k in ("bucket", "registry", "recipe")}
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources, definitions=defs) as context:
        return sensor(context), None
