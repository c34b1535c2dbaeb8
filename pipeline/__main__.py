"""Command line: `python -m pipeline demo | ui | lineage | serve | promote | rollback | status`.

    demo      materialize the whole asset graph on the embedded default and print the eval numbers
    ui        start the Dagster UI (dagster dev) on this project
    lineage   print what made a registered model version (by alias or number)
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


def demo(_: argparse.Namespace) -> int:
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
    entry = Path(store_root()) / "assets" / "registry_entry.json"
    if code == 0 and entry.exists():
        e = json.loads(entry.read_text())
        print(f"registered {e['model_name']} v{e['version']} aliases={e['aliases']}; "
              f"trace it with: python -m pipeline lineage --version {e['version']}")
    return code


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


def serving_commands(sub) -> None:
    from pipeline.oncall import add_commands

    add_commands(sub)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="run the whole graph on the embedded default").set_defaults(func=demo)
    p = sub.add_parser("ui", help="start the Dagster UI")
    p.add_argument("--port", type=int, default=3000)
    p.set_defaults(func=ui)
    p = sub.add_parser("lineage", help="print a model version's lineage")
    p.add_argument("--model", help="registered model name (default: the recipe's)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--alias", help="champion, challenger or canary")
    group.add_argument("--version", help="version number")
    p.set_defaults(func=lineage, alias=None)
    serving_commands(sub)
    args = parser.parse_args(argv)
    if args.command == "lineage" and not args.alias and not args.version:
        args.alias = "champion"
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
