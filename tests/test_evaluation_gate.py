"""The fuller gate on the whole graph (tiny model): the report's artifacts reach the registered version, and every
new blocking check's fail path stops registration with its reason. Plus the contamination report on a planted leak."""

import json

import dagster as dg
import pytest

from pipeline.definitions import all_checks
from pipeline.evaluation import contamination
from pipeline.paths import PROJECT_ROOT
from resources import ModelRegistry
from tests.conftest import tiny_recipe
from tests.test_pipeline import run_graph

NEW_CHECKS = ["candidate_ties_or_beats_champion", "no_general_capability_regression", "no_eval_contamination"]


def sample_records(limit: int) -> list[dict]:
    rows = []
    for i, line in enumerate((PROJECT_ROOT / "data/sample/chatml.jsonl").read_text().splitlines()):
        try:
            raw = json.loads(line)
            messages = raw["messages"]
        except (ValueError, KeyError, TypeError):
            continue
        if isinstance(messages, list) and all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages):
            rows.append({"id": f"r{i}", "group": str(raw.get("source", i)), "messages": messages})  # malformed lines left out
    return rows[:limit]


def test_planted_leak_of_heldout_examples_fails_the_contamination_check():
    records = sample_records(160)
    held_groups = sorted({r["group"] for r in records})[:20]  # whole families held out, as the split does
    heldout = [r for r in records if r["group"] in held_groups][:20]
    train = [r for r in records if r["group"] not in held_groups]
    texts = lambda rs: [(r["id"], contamination.record_text(r)) for r in rs]  # noqa: E731
    clean = contamination.overlap_report({"heldout": texts(heldout)},
                                         contamination.training_ngrams([t for _, t in texts(train)], 13), 13, 0.5)
    assert contamination.contamination_failures(clean) == []
    leaked = train + heldout[:3]  # three held-out examples slipped into training
    report = contamination.overlap_report({"heldout": texts(heldout)},
                                          contamination.training_ngrams([t for _, t in texts(leaked)], 13), 13, 0.5)
    assert report["sets"]["heldout"]["contaminated"] == 3
    assert {w["id"] for w in report["sets"]["heldout"]["worst"][:3]} == {r["id"] for r in heldout[:3]}
    (reason,) = contamination.contamination_failures(report)
    assert reason.startswith(f"3 of {len(heldout)} heldout examples share more than 50%")


def test_every_gate_check_is_blocking():
    specs = {spec.name: spec for checks in all_checks for spec in checks.check_specs}
    assert all(specs[name].blocking for name in NEW_CHECKS + ["candidate_beats_base"])


@pytest.fixture(scope="module")
def passed_then_blocked(tiny_model_dir, tmp_path_factory):
    """A first run that registers a champion, then the same candidate against gate thresholds it cannot meet."""
    store = tmp_path_factory.mktemp("gate-store")
    instance = dg.DagsterInstance.ephemeral()
    first = run_graph(store, tiny_recipe(tiny_model_dir), instance)
    strict = tiny_recipe(tiny_model_dir, gate={"min_win_rate_vs_base": 1.0, "min_win_rate_vs_champion": 1.0,
                                               "max_general_perplexity_ratio": 0.5, "max_contamination_overlap": 0.0})
    second = run_graph(store, strict, instance)
    return store, first, second


def test_report_html_model_card_and_gguf_are_artifacts_of_the_registered_version(passed_then_blocked):
    store, first, _ = passed_then_blocked
    assert first.success
    report = first.output_for_node("eval_report")
    assert report["judge"]["base"]["examples"] > 0 and report["contamination"]["sets"]["heldout"]["examples"] > 0
    assert report["quantized"]["drop"]["loss_ratio"] > 0
    registry = ModelRegistry(tracking_uri=f"sqlite:///{store}/mlflow.db")
    entry = first.output_for_node("registry_entry")
    version = registry.client().get_model_version(entry["model_name"], entry["version"])
    listed = {a.path for folder in ("evaluation", "gguf") for a in registry.client().list_artifacts(version.run_id, folder)}
    assert {"evaluation/report.html", "evaluation/MODEL_CARD.md", "evaluation/report.json"} <= listed
    assert any(p.startswith("gguf/") and p.endswith(".gguf") for p in listed)
    card = (store / "runs" / first.run_id / "evaluation" / "MODEL_CARD.md").read_text()
    assert report["models"]["candidate"] and "sha256" in card and "Known limits" in card


def test_each_failed_gate_check_says_why_and_registration_stops(passed_then_blocked):
    store, _, second = passed_then_blocked
    checks = {e.check_name: e for e in second.get_asset_check_evaluations()}
    reasons = {
        "candidate_beats_base": "win rate against the base",
        "candidate_ties_or_beats_champion": "win rate against the champion",
        "no_general_capability_regression": "byte perplexity on general prose",
        "no_eval_contamination": "heldout examples share more than 0%",
    }
    for name, reason in reasons.items():
        assert not checks[name].passed, name
        assert reason in checks[name].description, checks[name].description
    materialized = {m.materialization.asset_key.to_user_string() for m in second.get_asset_materialization_events()}
    assert "eval_report" in materialized and "registry_entry" not in materialized
    registry = ModelRegistry(tracking_uri=f"sqlite:///{store}/mlflow.db")
    assert str(registry.version_by_alias("tiny-summarizer", "challenger").version) == "1"
