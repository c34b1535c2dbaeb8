"""Load check of `python -m pipeline serve` on CPU: the default base (SmolLM2-135M-Instruct) with two LoRA adapters
(champion and canary, half the traffic each) over HTTP, beside the same base + adapter answered by a plain
transformers `generate` loop, on the same prompts, in one run.

Run: python bench/serving_bench.py [--requests 40] [--concurrency 2] [--max-tokens 16] [--threads 1] [--rounds 3]
Prints requests/s, p50/p99 latency and completion tokens/s for both, and writes bench/results/serving_cpu.json.
The adapters are freshly initialised (LoRA B = 0), so both sides generate the same tokens and the LoRA
compute is paid in full; what differs is the server (HTTP, routing, leases, feedback buffer, metrics).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.paths import store_root  # noqa: E402

MODEL = "debian-package-summarizer"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prompts(n: int) -> list[list[dict[str, str]]]:
    """Real user turns from the demo sample (Debian package descriptions to summarise)."""
    found = []
    for line in (ROOT / "data/sample/chatml.jsonl").read_text().splitlines():
        try:
            user = next(m["content"] for m in json.loads(line)["messages"] if m["role"] == "user")
        except (ValueError, KeyError, StopIteration):
            continue
        found.append([{"role": "user", "content": user[:600]}])
        if len(found) == n:
            return found
    return (found * (n // max(len(found), 1) + 1))[:n]


def make_adapters(base: Path, folder: Path) -> list[Path]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    paths = []
    for i in range(2):
        torch.manual_seed(i)
        model = AutoModelForCausalLM.from_pretrained(base)
        config = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
        get_peft_model(model, config).save_pretrained(folder / f"adapter{i}")
        paths.append(folder / f"adapter{i}")
    return paths


def serve_process(tracking_uri: str, base: str, port: int, bucket_root: str, threads: int, ready) -> None:
    import logging

    from pipeline.recipe import ServingRecipe
    from pipeline.serving.registry_source import RegistrySource
    from pipeline.serving.server import build_server
    from resources import Bucket, ModelRegistry

    logging.basicConfig(level=logging.WARNING)
    settings = ServingRecipe(canary_share=0.5, torch_threads=threads, poll_seconds=5)
    registry = ModelRegistry(tracking_uri=tracking_uri)
    server = build_server(Path(base), settings, MODEL, RegistrySource(registry, MODEL), Bucket(root=bucket_root).write_bytes)
    import uvicorn

    from pipeline.serving.app import build_app

    ready.set()
    uvicorn.run(build_app(server), host="127.0.0.1", port=port, log_level="warning")


def summary(latencies: list[float], tokens: int, wall: float) -> dict[str, float]:
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {"requests": len(latencies), "requests_per_s": round(len(latencies) / wall, 3),
            "p50_ms": round(statistics.median(ordered) * 1000, 1), "p99_ms": round(p99 * 1000, 1),
            "completion_tokens_per_s": round(tokens / wall, 1), "wall_s": round(wall, 2)}


def bench_server(url: str, batch: list, max_tokens: int, concurrency: int):
    import requests

    latencies, tokens, versions, errors = [], [0], {}, []
    lock, queue = threading.Lock(), list(enumerate(batch))

    def client(worker: int) -> None:
        with requests.Session() as session:
            while True:
                with lock:
                    if not queue:
                        return
                    i, messages = queue.pop()
                start = time.perf_counter()
                r = session.post(f"{url}/v1/chat/completions", timeout=300,
                                 json={"model": MODEL, "messages": messages, "max_tokens": max_tokens, "user": f"u{i}"})
                took = time.perf_counter() - start
                with lock:
                    if r.status_code != 200:
                        errors.append(r.text)
                        continue
                    latencies.append(took)
                    body = r.json()
                    tokens[0] += body["usage"]["completion_tokens"]
                    versions[body["served_by"]["alias"]] = versions.get(body["served_by"]["alias"], 0) + 1

    start = time.perf_counter()
    workers = [threading.Thread(target=client, args=(w,)) for w in range(concurrency)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return latencies, tokens[0], time.perf_counter() - start, versions, errors


def load_plain(base: Path, adapter: Path):
    """The baseline: base + the same adapter in one process, answered by a loop of tokenize -> generate -> decode."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), str(adapter)).eval()
    return tokenizer, model


def bench_plain(plain, batch: list, max_tokens: int) -> tuple[list[float], int, float]:
    import torch

    tokenizer, model = plain
    latencies, tokens = [], 0
    start = time.perf_counter()
    for messages in batch:
        t0 = time.perf_counter()
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=max_tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id)
        tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        tokens += out.shape[1] - inputs["input_ids"].shape[1]
        latencies.append(time.perf_counter() - t0)
    return latencies, tokens, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads, the same on both sides")
    parser.add_argument("--rounds", type=int, default=3, help="alternating server / plain-loop rounds")
    parser.add_argument("--out", default=str(ROOT / "bench/results/serving_cpu.json"))
    args = parser.parse_args()

    import torch

    from pipeline.evaluation.gate import GATE_PASSED_TAG
    from pipeline.models.base_model import import_base_model
    from pipeline.recipe import BaseModelRecipe
    from resources import ModelRegistry

    torch.set_num_threads(args.threads)
    base = Path(import_base_model(BaseModelRecipe(), Path(store_root()) / "models").path)
    work = Path(tempfile.mkdtemp(prefix="serving-bench-"))
    adapters = make_adapters(base, work)
    tracking = f"sqlite:///{work}/mlflow.db"
    registry = ModelRegistry(tracking_uri=tracking, artifact_root=f"{work}/artifacts")
    client = registry.client()
    for adapter in adapters:
        run_id = client.create_run(registry.experiment_id("bench")).info.run_id
        registry.register(MODEL, run_id, adapter, {GATE_PASSED_TAG: "true"}, description="bench")
    registry.move_alias(MODEL, "champion", "1", actor="bench", reason="bench")
    registry.move_alias(MODEL, "canary", "2", actor="bench", reason="bench")
    batch = prompts(args.requests)

    plain_model = load_plain(base, adapters[0])
    port = free_port()
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    proc = ctx.Process(target=serve_process, args=(tracking, str(base), port, str(work / "bucket"), args.threads, ready))
    proc.start()
    import requests

    url = f"http://127.0.0.1:{port}"
    # Rounds alternate server and plain loop, so the shared machine's load drifts over both alike.
    totals = {"server": [[], 0, 0.0], "plain": [[], 0, 0.0]}
    versions, errors = {}, []
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{url}/healthz", timeout=2).ok:
                    break
            except requests.ConnectionError:
                time.sleep(0.5)
        bench_server(url, batch[:2], args.max_tokens, 1)  # warm-up
        bench_plain(plain_model, batch[:2], args.max_tokens)
        size = -(-len(batch) // args.rounds)
        for r in range(args.rounds):
            chunk = batch[r * size:(r + 1) * size]
            lat, tok, wall, seen, errs = bench_server(url, chunk, args.max_tokens, args.concurrency)
            totals["server"] = [totals["server"][0] + lat, totals["server"][1] + tok, totals["server"][2] + wall]
            errors += errs
            for alias, count in seen.items():
                versions[alias] = versions.get(alias, 0) + count
            lat, tok, wall = bench_plain(plain_model, chunk, args.max_tokens)
            totals["plain"] = [totals["plain"][0] + lat, totals["plain"][1] + tok, totals["plain"][2] + wall]
            print(f"round {r + 1}/{args.rounds} done", flush=True)
    finally:
        proc.terminate()
        proc.join(30)
    server = {**summary(*totals["server"]), "errors": len(errors), "concurrency": args.concurrency}
    plain = summary(*totals["plain"])
    result = {"base": str(base.name), "adapters": 2, "max_tokens": args.max_tokens, "torch_threads": args.threads, "rounds": args.rounds,
              "cpu": platform.processor() or platform.machine(), "server": server, "served_by_alias": versions,
              "plain_generate_loop": plain}
    print(f"{'':22}{'req/s':>8}{'p50 ms':>10}{'p99 ms':>10}{'tok/s':>8}")
    for label, row in (("server (2 adapters)", server), ("plain generate loop", plain)):
        print(f"{label:22}{row['requests_per_s']:>8}{row['p50_ms']:>10}{row['p99_ms']:>10}{row['completion_tokens_per_s']:>8}")
    print(f"server traffic by alias: {versions}; errors: {server['errors']}")
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
