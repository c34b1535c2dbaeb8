"""Command line: `python -m pipeline demo | ui | lineage | backfill | serve | promote | rollback | status`.

    demo      materialize the whole asset graph on the embedded default and print the eval numbers
              (--feedback: write days of feedback into the bucket, let the sensor ingest them, retrain)
    ui        start the Dagster UI (dagster dev) on this project
    lineage   print what made a registered model version (by alias or number)
    backfill  ingest the feedback days --from .. --to, then retrain once over the window
    serve     serve champion and canary over an OpenAI-compatible HTTP API (pipeline/oncall.py)
    promote   point champion or canary at a gated version
    rollback  remove the canary, or restore the previous champion
    status    live versions, traffic share, live feedback and the canary decision now
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from pipeline.paths import PROJECT_ROOT, store_root


def dagster_env() -> dict[str, str]:
    """DAGSTER_HOME under the project (unless set), with the project's dagster.yaml linked into it."""
    home = Path(os.environ.get("DAGSTER_HOME", PROJECT_ROOT / ".dagster_home")).resolve()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.symlink_to(PROJECT_ROOT / "dagster.yaml")
    return {**os.environ, "DAGSTER_HOME": str(home)}


def demo(args: argparse.Namespace) -> int:
    if args.feedback:
        os.environ.update(dagster_env())
        return feedback_demo(args.days)
    env = dagster_env()
    cmd = [sys.executable, "-m", "dagster", "job", "execute", "-m", "pipeline.definitions", "-j", "finetune"]
    code = subprocess.call(cmd, cwd=PROJECT_ROOT, env=env)
    report_path = Path(store_root()) / "assets" / "eval_report.json"
    if report_path.exists():
        report = json.loads(report_path.read_text())
        models = report["models"]
        print(f"\nheld-out ROUGE-L over {report['examples']} examples: base {models['base']['rouge_l']:.4f} -> "
              f"candidate {models['candidate']['rouge_l']:.4f} (gain {report['rouge_l_gain_vs_base']:+.4f}); "
              f"answer loss {models['base']['loss']:.3f} -> {models['candidate']['loss']:.3f}")
        for failure in report.get("failures", []):
            print(f"gate failed: {failure}")
        if "gate" in report:  # the fuller evaluation: base, champion and candidate side by side, every gate reason
            from pipeline.evaluation.report_html import markdown_summary

            print(markdown_summary(report))
            print(f"HTML report and model card: {report.get('artifacts_dir')}")
    entry = Path(store_root()) / "assets" / "registry_entry.json"
    if code == 0 and entry.exists():
        e = json.loads(entry.read_text())
        print(f"registered {e['model_name']} v{e['version']} aliases={e['aliases']}; "
              f"trace it with: python -m pipeline lineage --version {e['version']}")
    return code


def feedback_demo(days: int) -> int:
    """The loop on the embedded default: `days` of synthetic feedback (ending today) into the local bucket, sensor
    ticks until it stops asking for runs (ingest each day, then retrain on seeds + feedback), then the lineage."""
    from datetime import datetime, timezone

    import dagster as dg

    from assets.automation import RETRAIN_JOB, tick_in_process
    from pipeline.definitions import build_definitions
    from pipeline.feedback.layout import days_between, shift_day
    from pipeline.feedback.synthetic import write_days

    defs = build_definitions()
    today = datetime.now(timezone.utc).date().isoformat()
    written = write_days(days_between(shift_day(today, 1 - days), today), defs.resources["bucket"].write_bytes)
    print(f"wrote {sum(map(len, written.values()))} feedback objects for {', '.join(written)} into "
          f"{defs.resources['bucket'].uri('feedback/')}")
    cursor_file = Path(os.environ["DAGSTER_HOME"]) / "feedback_demo_cursor.json"
    cursor = cursor_file.read_text() if cursor_file.exists() else None
    retrained = None
    with dg.DagsterInstance.get() as instance:
        for _ in range(3):  # new days -> ingest; then -> retrain (or a skip saying why); then nothing
            result, runs = tick_in_process(defs, instance, cursor)
            cursor = result.cursor or cursor
            cursor_file.write_text(cursor or "")
            retrained = next((r for r in runs if r.job_def.name == RETRAIN_JOB), retrained)
            if any(not r.success for r in runs) or not runs:
                break
    if retrained is None:
        return 0
    if not retrained.success:
        print("retraining failed; see the run in the Dagster UI (python -m pipeline ui)")
        return 1
    registered = {e.materialization.asset_key.to_user_string() for e in retrained.get_asset_materialization_events()}
    if "registry_entry" not in registered:
        print("the gate blocked the candidate: nothing registered (the eval_report checks say why)")
        return 1
    entry = retrained.output_for_node("registry_entry")
    print(f"registered {entry['model_name']} v{entry['version']} aliases={entry['aliases']}\n")
    return lineage(argparse.Namespace(model=entry["model_name"], alias=None, version=entry["version"]))


def ui(args: argparse.Namespace) -> int:
    cmd = [sys.executable, "-m", "dagster", "dev", "-w", str(PROJECT_ROOT / "workspace.yaml"), "-p", str(args.port)]
    return subprocess.call(cmd, cwd=PROJECT_ROOT, env=dagster_env())


def lineage(args: argparse.Namespace) -> int:
    from pipeline.definitions import defs
    from pipeline.lineage import format_lineage

    registry = defs.resources["registry"]
    recipe = defs.resources["recipe"].load()
    name = args.model or recipe.registry.model_name
    client = registry.client()
    version = client.get_model_version_by_alias(name, args.alias) if args.alias else client.get_model_version(name, args.version)
    print(format_lineage(name, str(version.version), list(version.aliases), dict(version.tags)))
    return 0


def backfill(args: argparse.Namespace) -> int:
    import dagster as dg

    from assets.automation import backfill as run_backfill
    from pipeline.definitions import build_definitions

    os.environ.update(dagster_env())
    with dg.DagsterInstance.get() as instance:
        results = run_backfill(build_definitions(), instance, args.first, args.last)
    return 0 if results and all(r.success for r in results) else 1


def serving_commands(sub) -> None:
    from pipeline.oncall import add_commands

    add_commands(sub)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="run the whole graph on the embedded default")
    p.add_argument("--feedback", action="store_true", help="the feedback loop: synthetic days in the bucket, sensor, retraining")
    p.add_argument("--days", type=int, default=4, help="days of feedback to write, ending today (with --feedback)")
    p.set_defaults(func=demo)
    p = sub.add_parser("ui", help="start the Dagster UI")
    p.add_argument("--port", type=int, default=3000)
    p.set_defaults(func=ui)
    p = sub.add_parser("lineage", help="print a model version's lineage")
    p.add_argument("--model", help="registered model name (default: the recipe's)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--alias", help="champion, challenger or canary")
    group.add_argument("--version", help="version number")
    p.set_defaults(func=lineage, alias=None)
    p = sub.add_parser("backfill", help="ingest feedback days, then retrain once over the window")
    p.add_argument("--from", dest="first", required=True, help="first day, YYYY-MM-DD")
    p.add_argument("--to", dest="last", required=True, help="last day, YYYY-MM-DD (inclusive)")
    p.set_defaults(func=backfill)
    serving_commands(sub)
    args = parser.parse_args(argv)
    if args.command == "lineage" and not args.alias and not args.version:
        args.alias = "champion"
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
