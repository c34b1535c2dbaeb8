"""Every trigger in one place: the jobs, the feedback bucket sensor and the nightly retraining schedule.

- `feedback_ingest` (partitioned by day): feedback_events + feedback_examples of one day.
- `retraining` (run for the last partition): the feedback window ending there, then the whole seed + feedback
  graph to a gated, registered model.
- `feedback_bucket_sensor`: a cursor over `feedback/` (each day's keys and ETags/mtimes as a digest) asks for an
  ingest run per new or changed day, and a retraining when enough curated examples are new since the champion's data.
- `nightly_retraining`: cron and timezone from the recipe; skips, saying why, when nothing is new.
- `canary_decision` (assets/canary.py): promotes the live canary, rolls it back or waits, on the live feedback
  since it started.
"""


import hashlib
import json

import dagster as dg

from assets.canary import canary_decision_sensor
from pipeline.feedback.layout import PREFIX, days_between, shift_day
from pipeline.feedback.trigger import changed_days, new_examples_since
from pipeline.lineage import trained_feedback
from pipeline.recipe import FeedbackRecipe
from resources import Bucket, ModelRegistry, RecipeResource
from resources.mlflow_registry import CHAMPION

INGEST_JOB = "feedback_ingest"
RETRAIN_JOB = "retraining"
IN_FLIGHT = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
             dg.DagsterRunStatus.STARTED]
EXAMPLES = dg.AssetKey("feedback_examples")


def _in_flight(instance: dg.DagsterInstance, job: str) -> int:
    return len(instance.get_run_ids(dg.RunsFilter(job_name=job, statuses=IN_FLIGHT), limit=5))


def current_feedback(instance: dg.DagsterInstance, days: list[str]) -> dict[str, tuple[str, int]]:
    """Day -> (data version, curated count) of the latest feedback_examples materialization of each day."""
    found = {}
    for day in days:
        records = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=EXAMPLES, asset_partitions=[day]), limit=1).records
        if records:
            m = records[0].asset_materialization
            found[day] = (m.tags.get("dagster/data_version", ""), int(m.metadata["curated"].value))
    return found


def retraining_decision(instance: dg.DagsterInstance, registry: ModelRegistry, recipe: RecipeResource,
                        end: str, threshold: int | None = None) -> tuple[dg.RunRequest | None, str]:
    """A retraining request for the window ending at `end` when at least `threshold` (default: the recipe's
    `min_new_examples`) curated examples are new since the champion's data, else the reason not."""
    settings = recipe.load()
    feedback = settings.feedback
    threshold = feedback.min_new_examples if threshold is None else threshold
    days = days_between(max(shift_day(end, 1 - feedback.window_days), feedback.start_date), end)
    current = current_feedback(instance, days)
    champion = registry.version_by_alias(settings.registry.model_name, CHAMPION)
    trained = trained_feedback(dict(champion.tags)) if champion else {}
    against = f"champion v{champion.version}'s data" if champion else "no champion yet"
    new, lines = new_examples_since(current, trained)
    if new < threshold:
        return None, (f"{new} curated feedback examples new since {against} in {days[0]}..{end}, below the "
                      f"threshold of {threshold}" + (f" ({'; '.join(lines)})" if lines else ""))
    fingerprint = hashlib.sha256(json.dumps(sorted(current.items())).encode()).hexdigest()[:16]
    request = dg.RunRequest(job_name=RETRAIN_JOB, partition_key=end, run_key=f"retrain:{end}:{fingerprint}",
                            tags={"feedback.new_examples": str(new), "feedback.trigger": against})
    return request, f"{new} curated feedback examples new since {against} ({'; '.join(lines)})"


def build_automation(feedback: FeedbackRecipe, partitions: dg.PartitionsDefinition, feedback_assets: list,
                     retrain_tags: dict[str, str] | None = None) -> dict:
    """The jobs, the sensor and the schedule, for the feedback assets built from the same recipe section;
    `retrain_tags` go on every retraining run (the deployment's GPU run limit counts them)."""
    events, examples, window = feedback_assets
    ingest = dg.define_asset_job(INGEST_JOB, selection=dg.AssetSelection.assets(events, examples), partitions_def=partitions,
                                 description="Read one day of the feedback bucket and turn it into curated examples.")
    retrain = dg.define_asset_job(
        RETRAIN_JOB, selection=dg.AssetSelection.all() - dg.AssetSelection.assets(events, examples), partitions_def=partitions,
        tags=retrain_tags,
        description="Seeds + the feedback window ending at the run's partition (the last one) to a gated, registered model.")

    def last_day() -> str:
        return partitions.get_last_partition_key()

    @dg.sensor(name="feedback_bucket_sensor", jobs=[ingest, retrain], minimum_interval_seconds=60,
               description="Watches feedback/ in the bucket: ingests new or changed days, then requests a retraining "
               "when enough curated examples are new since the champion's data.")
    def feedback_bucket_sensor(context: dg.SensorEvaluationContext, bucket: Bucket, registry: ModelRegistry,
                               recipe: RecipeResource) -> dg.SensorResult:
        cursor = json.loads(context.cursor) if context.cursor else {}
        first, last = feedback.start_date, last_day()
        listing = [(k, tag) for k, tag in bucket.list_objects(PREFIX)]
        changed, cursor_next = changed_days(listing, cursor)
        outside = sorted(d for d in changed if not first <= d <= last)
        for day in outside:
            context.log.warning(f"feedback/dt={day}/ is outside the partitions {first}..{last}; not read yet")
            changed.pop(day)
            # not marked as seen: once the day is a partition (tomorrow's folder, a later end_date) it is read
            if day in cursor:
                cursor_next[day] = cursor[day]
            else:
                cursor_next.pop(day)
        requests = []
        for day, state in changed.items():
            requests.append(dg.RunRequest(job_name=INGEST_JOB, partition_key=day, run_key=f"ingest:{day}:{state['digest']}",
                                          tags={"feedback.objects": str(state["objects"]), "feedback.late": str(state["late"])}))
            # a late interaction can answer feedback of the days after it: their examples are joined again
            for later in range(1, feedback.join_lookback_days + 1):
                after = shift_day(day, later)
                if after in cursor_next and after not in changed and after <= last:
                    requests.append(dg.RunRequest(job_name=INGEST_JOB, partition_key=after, asset_selection=[EXAMPLES],
                                                  run_key=f"rejoin:{after}:{day}:{state['digest']}"))
        if changed:
            context.log.info("ingesting " + ", ".join(f"{d} ({s['new_objects']:+d} objects{', late' if s['late'] else ''})"
                                                      for d, s in changed.items()))
            return dg.SensorResult(run_requests=requests, cursor=json.dumps(cursor_next, sort_keys=True))
        if _in_flight(context.instance, INGEST_JOB):
            return dg.SensorResult(skip_reason="feedback ingest runs still in flight; retraining waits for their examples",
                                   cursor=json.dumps(cursor_next, sort_keys=True))
        if _in_flight(context.instance, RETRAIN_JOB):
            return dg.SensorResult(skip_reason="a retraining run is in flight", cursor=json.dumps(cursor_next, sort_keys=True))
        request, reason = retraining_decision(context.instance, registry, recipe, last)
        context.log.info(reason)
        if request is None:
            return dg.SensorResult(skip_reason=reason, cursor=json.dumps(cursor_next, sort_keys=True))
        return dg.SensorResult(run_requests=[request], cursor=json.dumps(cursor_next, sort_keys=True))

    @dg.schedule(name="nightly_retraining", job=retrain, cron_schedule=feedback.cron, execution_timezone=feedback.cron_timezone,
                 description="Retrains every night on the seeds + the feedback window, unless nothing is new since the champion.")
    def nightly_retraining(context: dg.ScheduleEvaluationContext, registry: ModelRegistry, recipe: RecipeResource):
        if _in_flight(context.instance, RETRAIN_JOB):
            return dg.SkipReason("a retraining run is in flight")
        request, reason = retraining_decision(context.instance, registry, recipe, last_day(), threshold=1)
        return request if request is not None else dg.SkipReason(reason)

    return {"jobs": [ingest, retrain], "sensors": [feedback_bucket_sensor, canary_decision_sensor],
            "schedules": [nightly_retraining]}


def backfill(defs: dg.Definitions, instance: dg.DagsterInstance, first: str, last: str,
             log=print) -> list[dg.ExecuteInProcessResult]:
    """Ingest every day from `first` to `last` (one run per day), then ONE retraining over the window ending at the
    last partition; stops before retraining when a day fails. Runs are recorded in `instance`, as from the UI."""
    ingest, retrain = defs.resolve_job_def(INGEST_JOB), defs.resolve_job_def(RETRAIN_JOB)
    partitions = ingest.partitions_def
    keys = partitions.get_partition_keys(dynamic_partitions_store=instance)
    days = days_between(first, last)
    outside = [d for d in days if d not in keys]
    if outside:
        raise ValueError(f"{', '.join(outside[:5])}{' ...' if len(outside) > 5 else ''} not among the feedback partitions "
                         f"{keys[0]}..{keys[-1]} (feedback.start_date / end_date in the recipe)")
    results = []
    for day in days:
        result = ingest.execute_in_process(partition_key=day, instance=instance, raise_on_error=False,
                                           tags={"dagster/backfill_range": f"{first}..{last}"})
        log(f"ingest {day}: {'ok' if result.success else 'FAILED'} (run {result.run_id})")
        results.append(result)
        if not result.success:
            log("a day failed: no retraining; fix it and run the backfill again")
            return results
    end = partitions.get_last_partition_key()
    log(f"retraining once over the window ending {end}")
    result = retrain.execute_in_process(partition_key=end, instance=instance, raise_on_error=False,
                                        tags={"dagster/backfill_range": f"{first}..{last}"})
    log(f"retraining: {'ok' if result.success else 'FAILED'} (run {result.run_id})")
    return [*results, result]


def tick_in_process(defs: dg.Definitions, instance: dg.DagsterInstance, cursor: str | None,
                    log=print) -> tuple[dg.SensorResult, list[dg.ExecuteInProcessResult]]:
    """One evaluation of the bucket sensor without a daemon, its run requests executed in process (the demo's
    loop); returns what the sensor said and the runs. The caller keeps `result.cursor` for the next tick."""
    sensor = defs.get_sensor_def("feedback_bucket_sensor")
    resources = {k: defs.resources[k] for k in ("bucket", "registry", "recipe")}
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources, definitions=defs) as context:
        result = sensor(context)
    runs = []
    for request in result.run_requests or []:
        job = defs.resolve_job_def(request.job_name)
        run = job.execute_in_process(partition_key=request.partition_key, instance=instance, raise_on_error=False,
                                     asset_selection=request.asset_selection, tags=request.tags)
        log(f"{request.job_name}[{request.partition_key}]: {'ok' if run.success else 'FAILED'} (run {run.run_id})")
        runs.append(run)
    if not result.run_requests:
        log(f"sensor skipped: {result.skip_reason.skip_message if result.skip_reason else '-'}")
    return result, runs
