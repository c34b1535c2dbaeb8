"""Read the gate's decision for the evaluated candidate from the Dagster instance, in whatever run asks.

A blocking check only stops downstream steps of the run that evaluated it. Registration and promotion
therefore look up, for the exact eval_report they are handed, the latest evaluation of every blocking check
on it, and refuse unless each one passed against that very materialization.
"""

from __future__ import annotations

import dagster as dg

from pipeline.curation.records import sha256_json
from pipeline.evaluation.gate import FAILED, NOT_EVALUATED, PASSED, CheckOutcome, GateDecision

EVAL_REPORT = dg.AssetKey("eval_report")


def report_version(report: dict) -> str:
    """The eval_report's data version: a hash of its content, so a decision binds to one report."""
    return sha256_json(report)


def blocking_gate_checks(context: dg.AssetExecutionContext) -> list[dg.AssetCheckKey]:
    """Every blocking check on eval_report in the job's asset graph (the whole code location's, whatever the
    selection), so a check added later is covered too."""
    job = context.job_def
    while job.asset_selection_data is not None:  # a run of a few assets: its checks are the parent job's
        job = job.asset_selection_data.parent_job_def
    graph = job.asset_layer.asset_graph
    keys = [k for k in graph.asset_check_keys if k.asset_key == EVAL_REPORT and graph.get_check_spec(k).blocking]
    return sorted(keys, key=lambda k: k.name)


def gate_decision(context: dg.AssetExecutionContext, eval_report: dict) -> GateDecision:
    """The outcome of each blocking check evaluated on the materialization that produced `eval_report`."""
    version = report_version(eval_report)
    instance = context.instance
    records = instance.fetch_materializations(EVAL_REPORT, limit=1).records
    latest = records[0] if records else None
    latest_version = latest.asset_materialization.tags.get("dagster/data_version") if latest else None
    check_keys = blocking_gate_checks(context)
    if latest is None or latest_version != version:
        # The report handed to us is not the latest evaluated one: no check result can be trusted for it.
        return GateDecision(version, [CheckOutcome(k.name, NOT_EVALUATED, "this eval_report was not the one evaluated")
                                      for k in check_keys])
    executions = instance.event_log_storage.get_latest_asset_check_execution_by_key(check_keys)
    outcomes = []
    for key in check_keys:
        record = executions.get(key)
        evaluation = _evaluation(record)
        target = evaluation.target_materialization_data if evaluation else None
        # In a partitioned run (retraining: the feedback window's partition) Dagster leaves the target of a check
        # on an unpartitioned asset empty; the evaluation then belongs to the materialization of its own run.
        same_run = target is None and record is not None and record.run_id == latest.run_id
        if evaluation is None or not (same_run or (target is not None and target.storage_id == latest.storage_id)):
            outcomes.append(CheckOutcome(key.name, NOT_EVALUATED, "no evaluation of this check on this eval_report"))
        else:
            outcomes.append(CheckOutcome(key.name, PASSED if evaluation.passed else FAILED, evaluation.description or ""))
    return GateDecision(version, outcomes)


def _evaluation(record) -> dg.AssetCheckEvaluation | None:
    """The evaluation in a check's execution record; None while it is only planned, or was skipped."""
    event = record.event.dagster_event if record and record.event else None
    if event is None or event.event_type != dg.DagsterEventType.ASSET_CHECK_EVALUATION:
        return None
    return event.asset_check_evaluation_data
