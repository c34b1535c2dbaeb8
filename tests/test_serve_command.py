"""`python -m pipeline serve` as on-call starts it: the recipe's host and port, the registry's champion, and the
feedback buffer flushed to the bucket when the process is stopped."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time

import requests
import yaml

from pipeline.paths import PROJECT_ROOT
from tests.conftest import free_port
from tests.serving_helpers import gated_registry, tiny_adapter


def test_serve_command_answers_then_flushes_feedback_on_shutdown(tiny_model_dir, tmp_path):
    store, port = tmp_path / "store", free_port()
    name = "tiny-summarizer"
    adapter = tiny_adapter(tiny_model_dir, tmp_path / "adapter", seed=1)
    (store / "mlflow").mkdir(parents=True)
    registry, (version,) = gated_registry(store / "mlflow", name, [adapter])
    registry.move_alias(name, "champion", version, actor="test", reason="first")
    # the CLI's registry: sqlite:///<store>/mlflow/mlflow.db (pipeline/definitions.py); the helper used the same file
    recipe = {"base_model": {"path": str(tiny_model_dir), "name": "tiny-llama"}, "registry": {"model_name": name},
              "serving": {"port": port, "flush_seconds": 3600, "flush_events": 10_000, "torch_threads": 1}}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    env = {**os.environ, "PIPELINE_STORE": str(store), "PIPELINE_RECIPE": str(tmp_path / "recipe.yaml"),
           "PIPELINE_SERVE_TOKEN": ""}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "serve"], cwd=PROJECT_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, "serve did not come up in 120 s"
            try:
                if requests.get(f"{url}/healthz", timeout=2).json()["live"] == {"champion": version}:
                    break
            except (requests.ConnectionError, ValueError):
                time.sleep(0.5)
        r = requests.post(f"{url}/v1/chat/completions", timeout=60,
                          json={"model": name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
        assert r.status_code == 200 and r.headers["x-model-alias"] == "champion"
        assert not list((store / "feedback").rglob("*.jsonl.gz"))  # buffered: no flush yet (1 h timer, 10k events)
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode in (0, -signal.SIGTERM), output[-3000:]  # uvicorn re-raises the signal after its shutdown
    assert "Application shutdown complete" in output
    (written,) = list((store / "feedback").rglob("*.jsonl.gz"))
    (event,) = [json.loads(line) for line in gzip.decompress(written.read_bytes()).decode().splitlines()]
    assert event["id"] == r.json()["id"].removeprefix("chatcmpl-") and event["model"]["alias"] == "champion"
