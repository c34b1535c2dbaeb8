"""On-call commands over the live models: serve, promote, rollback, status. Each alias move goes through the
registry (which refuses ungated versions and records who, why and when) and is also reported to Dagster as an
observation of the `deployment` asset."""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import sys
import urllib.request

from pipeline.serving import canary as live_canary


def _refusals() -> tuple[type[Exception], ...]:
    from mlflow.exceptions import MlflowException

    from pipeline.evaluation.gate import PromotionRefused

    return (PromotionRefused, ValueError, MlflowException)


REFUSALS = _refusals()  # an ungated or unknown version, nothing to roll back: a message, not a trace


def _context():
    from pipeline.definitions import defs

    return defs.resources["registry"], defs.resources["bucket"], defs.resources["recipe"].load()


def _actor() -> str:
    return f"on-call {getpass.getuser()} (python -m pipeline)"


def _report(action: str, name: str, reason: str, moves: list[dict]) -> None:
    """The moves as a Dagster event in the project's instance, so the UI shows them beside the sensor's."""
    import dagster as dg

    from pipeline.__main__ import dagster_env
    import os

    os.environ["DAGSTER_HOME"] = dagster_env()["DAGSTER_HOME"]
    with dg.DagsterInstance.get() as instance:
        instance.report_runless_asset_event(dg.AssetObservation(asset_key="deployment", metadata={
            "action": action, "model_name": name, "reason": reason, "by": _actor(), "moves": dg.MetadataValue.json(moves)}))


def serve(args: argparse.Namespace) -> int:
    from pipeline.models.base_model import import_base_model
    from pipeline.serving.registry_source import RegistrySource
    from pipeline.serving.server import build_server, run, token_from_env

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    registry, bucket, recipe = _context()
    settings = recipe.serving
    base = import_base_model(recipe.base_model, bucket.local_path("models"))
    source = RegistrySource(registry, recipe.registry.model_name, base_sha256=base.sha256)
    try:
        server = build_server(base.path, settings, recipe.registry.model_name, source, bucket.write_bytes,
                              token=token_from_env(settings))
    except (RuntimeError, ValueError) as error:
        print(f"serve: {error}", file=sys.stderr)
        return 2
    run(server, args.host or settings.host, args.port or settings.port)
    return 0


def promote(args: argparse.Namespace) -> int:
    registry, _, recipe = _context()
    name = recipe.registry.model_name
    reason = args.reason or f"manual promotion to {args.to}"
    try:
        moves = live_canary.promote(registry, name, args.version, args.to, actor=_actor(), reason=reason)
    except REFUSALS as error:
        print(f"promote: {getattr(error, 'message', None) or error}", file=sys.stderr)
        return 2
    _report("promote", name, reason, moves)
    for move in moves:
        print(f"{move['alias']}: {move['action']} v{move['version']} (was v{move['previous'] or '-'}) by {move['by']}: {move['reason']}")
    return 0


def rollback(args: argparse.Namespace) -> int:
    registry, _, recipe = _context()
    name = recipe.registry.model_name
    try:
        moves = live_canary.rollback(registry, name, actor=_actor(), reason=args.reason, champion_too=args.champion)
    except REFUSALS as error:
        print(f"rollback: {error}", file=sys.stderr)
        return 2
    _report("rollback", name, args.reason, moves)
    for move in moves:
        print(f"{move['alias']}: {move['action']} v{move['version']} by {move['by']}: {move['reason']}")
    return 0


def status(args: argparse.Namespace) -> int:
    from assets.canary import list_keys

    registry, bucket, recipe = _context()
    name, settings = recipe.registry.model_name, recipe.serving
    live = live_canary.live_versions(registry, name)
    share = settings.canary_share if "canary" in live else 0.0
    print(f"{name}")
    for alias, version in live.items():
        print(f"  {alias:9} v{version:5} traffic {1 - share if alias == 'champion' else share:.0%}")
    if not live:
        print("  nothing is live (no champion)")
    decision = live_canary.evaluate_canary(registry, name, list_keys(bucket), bucket.read_bytes, settings.canary)
    if decision is not None:
        print(f"  canary decision now: {decision.action}: {decision.reason}")
        for row in decision.evidence.get("metrics", []):
            print(f"    {row['metric']:14} canary {row.get('canary_rate')}  champion {row.get('champion_rate')}  "
                  f"judged {row['judged']}")
        counts = {k: decision.evidence.get(k) for k in ("canary", "champion")}
        print(f"    live counts since {decision.evidence.get('since', '?')}: {json.dumps(counts)}")
    url = args.url or f"http://{settings.host}:{settings.port}"
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=3) as response:
            print(f"  server {url}: {json.loads(response.read())}")
        with urllib.request.urlopen(f"{url}/metrics", timeout=3) as response:
            print(f"    completions since start: {served_counts(response.read().decode())}")
    except OSError:
        print(f"  server {url}: not reachable")
    history = registry.alias_history(name)[-5:]
    for move in history:
        print(f"  {move['at']}  {move['alias']} {move['action']} v{move['version']} by {move['by']}: {move['reason']}")
    return 0


def served_counts(metrics_text: str) -> dict[str, int]:
    """`alias vVERSION` -> completions served, from the server's Prometheus text."""
    from prometheus_client.parser import text_string_to_metric_families

    counts = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == "llm_completions_total":
                counts[f"{sample.labels['alias']} v{sample.labels['version']}"] = int(sample.value)
    return counts


def add_commands(sub) -> None:
    p = sub.add_parser("serve", help="serve champion (and canary) over an OpenAI-compatible HTTP API")
    p.add_argument("--host", help="interface (default: the recipe's serving.host, 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default: the recipe's serving.port)")
    p.set_defaults(func=serve)
    p = sub.add_parser("promote", help="point champion or canary at a gated version")
    p.add_argument("version")
    p.add_argument("--to", choices=["champion", "canary"], default="champion")
    p.add_argument("--reason")
    p.set_defaults(func=promote)
    p = sub.add_parser("rollback", help="remove the canary; with no canary (or --champion), restore the previous champion")
    p.add_argument("--reason", default="manual rollback")
    p.add_argument("--champion", action="store_true", help="also restore the previous champion when a canary is live")
    p.set_defaults(func=rollback)
    p = sub.add_parser("status", help="live versions, traffic share, live feedback and the canary decision now")
    p.add_argument("--url", help="a running server to ask (default: the recipe's host and port)")
    p.set_defaults(func=status)
