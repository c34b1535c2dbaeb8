"""`dagster dev`'s webserver serves the code location: every asset and check is visible through GraphQL."""

import os
import subprocess
import sys
import time

import pytest
import requests

from pipeline.paths import PROJECT_ROOT
from tests.conftest import free_port

ASSETS = {"seed_examples", "quarantined_examples", "deduped_examples", "train_split", "heldout_split", "base_model",
          "sft_checkpoint", "dpo_checkpoint", "eval_report", "registry_entry", "train_token_lengths", "deployment",
          "feedback_events", "feedback_examples", "feedback_window", "quantized_model"}
CHECKS = {"candidate_beats_base", "no_train_heldout_overlap", "no_heldout_near_duplicate_in_train",
          "no_pii_or_secrets_left", "candidate_ties_or_beats_champion", "no_general_capability_regression",
          "no_eval_contamination"}
QUERY = "{ assetNodes { assetKey { path } groupName assetChecksOrError { ... on AssetChecks { checks { name blocking } } } } }"


@pytest.fixture
def webserver(tmp_path):
    port = free_port()
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path), "PIPELINE_STORE": str(tmp_path / "store")}
    (tmp_path / "dagster.yaml").write_text((PROJECT_ROOT / "dagster.yaml").read_text())
    proc = subprocess.Popen(
        [sys.executable, "-m", "dagster_webserver", "-w", str(PROJECT_ROOT / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(port)],
        cwd=PROJECT_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}/graphql"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"webserver exited: {proc.stderr.read().decode()[-3000:]}")
            try:
                nodes = requests.post(url, json={"query": QUERY}, timeout=5).json()["data"]["assetNodes"]
                if nodes:
                    yield nodes
                    return
            except (requests.ConnectionError, KeyError, TypeError):
                pass
            time.sleep(1)
        pytest.fail("webserver did not serve the asset graph within 120 s")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_webserver_serves_every_asset_and_blocking_check(webserver):
    keys = {"/".join(n["assetKey"]["path"]) for n in webserver}
    assert keys == ASSETS
    checks = {c["name"]: c["blocking"] for n in webserver for c in (n["assetChecksOrError"].get("checks") or [])}
    assert checks == {name: True for name in CHECKS}
    groups = {n["groupName"] for n in webserver}
    assert groups == {"sources", "curation", "split", "model", "training", "evaluation", "registry", "deployment", "feedback"}
