"""Time to a trained model: wall time from process start to saved weights, ours against the plain peer, in one run.

Each run is a fresh process (what a user launches), timed from its spawn to its exit, with its phases: imports,
model load, tokenisation (the trainer's set-up), compilation, training, save. The peer is a plain transformers
`Trainer` + PEFT script (batch 16 padded to the longest, eager, SDPA; as `bench/gpu_training.py`'s baseline);
ours is `pipeline.training.sft.train_sft` with the peer's hyperparameters and padding-free rows, so both make the
same optimizer steps and their loss curves compare point by point. Compiled runs load and store their kernels in
one compile-cache folder that stands in for the bucket; each process gets empty local Inductor/Triton caches, so a
compile is cold unless that store has it. Data: the real Debian chat records (`--prepare` builds them from
../shared), the first N of a seeded shuffle for each `--examples` N.

    python bench/time_to_model.py --prepare ../shared/data/debian-package-summaries   # once, on any machine
    python bench/time_to_model.py --model 1b --method lora --examples 1000 5000 \\
        --runs peer 'auto={"torch_compile": "auto"}' 'eager={"torch_compile": false}' --out bench/out/ttm.json
    python bench/time_to_model.py --model tiny --examples 64 --runs peer 'auto={}'   # CPU smoke run

Runs named unsloth* run Unsloth (FastLanguageModel + TRL, the peer's hyperparameters) in its own environment, a
folder holding it and the versions it pins (`--unsloth-site`; bench/unsloth_site.sh builds it). Each run reports
MFU over the whole run, over the training loop (compilation included) and steady, and its first steps' times.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.gpu_training import (CONFIGS, PEAK_BF16_TFLOPS, build_model_dir, flops_per_token, loss_gap,  # noqa: E402
                                profile_callback, step_clock, tokenized_rows)

DATA = ROOT / ".bench_assets/debian_chat.jsonl.gz"
PEER_LR = {"lora": 2e-4, "full": 2e-5}


def prepare(shared: Path, tokenizer_dir: Path, max_tokens: int = 1024) -> None:
    """All real Debian chat examples (alpaca, ShareGPT and ChatML files, normalised), at most `max_tokens` templated
    tokens each (the peer would cut longer ones, padding-free training refuses them), shuffled with seed 0."""
    from transformers import AutoTokenizer

    from pipeline.curation.formats import MalformedRecord, normalise
    from pipeline.curation.readers import read_jsonl

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    records, too_long, malformed = [], 0, 0
    for name in ("alpaca", "sharegpt", "chatml"):
        for raw in read_jsonl(shared / f"{name}.jsonl.gz"):
            try:
                messages = normalise(raw.value)[1]
            except (MalformedRecord, TypeError):
                malformed += 1
                continue
            if len(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]) > max_tokens:
                too_long += 1
                continue
            records.append({"id": f"{name}:{raw.line}", "messages": messages})
    random.Random(0).shuffle(records)
    DATA.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(DATA, "wt", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"{len(records)} examples to {DATA} ({too_long} over {max_tokens} tokens, {malformed} malformed left out)")


def write_subset(target: Path, n: int) -> int:
    with gzip.open(DATA, "rt", encoding="utf-8") as f:
        lines = f.readlines()
    target.write_text("".join(lines[:n]))
    return min(n, len(lines))


def _clock_summary(clock, losses: list[float], steps: int, profilers: list) -> dict:
    skip = set().union(*(p.profiled_steps for p in profilers))  # the profilers slow their steps down
    return {"steps": steps, "steady_steps_per_s": clock.steady_steps_per_s(skip),
            "first_steps_s": clock.first_steps_s(), "step_ms": clock.step_ms(), "losses": losses}


def _profilers(spec: dict, label: str) -> list:
    """`_profile: [first_step, steps]` in a run's overrides: torch's profiler and cProfile over those steps."""
    if not spec.get("profile"):
        return []
    first, steps = spec["profile"]
    return [profile_callback(label, steps, first)]


def peer_worker(model_dir: Path, train: Path, method: str, out: Path, overrides: dict, profilers: list) -> dict:
    """The plain script: Trainer + PEFT, batch 16 padded, eager, SDPA; saves the adapter (or model) as safetensors.
    `overrides` may turn on gradient checkpointing (what fits the 8B shape's longest padded batches)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer, TrainingArguments

    marks = {"imports": time.time()}
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16 if method == "lora" else torch.float32)
    torch.manual_seed(42)
    if method == "lora":
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))
    marks["load"] = time.time()
    rows = tokenized_rows(tokenizer, train)
    marks["tokenize"] = time.time()
    args = TrainingArguments(output_dir=str(out / "checkpoints"), per_device_train_batch_size=16, num_train_epochs=1,
                             learning_rate=PEER_LR[method], logging_steps=10, save_strategy="no", report_to=[], seed=42,
                             disable_tqdm=True, use_cpu=not torch.cuda.is_available(), bf16=torch.cuda.is_available(),
                             gradient_checkpointing=overrides.get("gradient_checkpointing", False),
                             gradient_checkpointing_kwargs={"use_reentrant": False})
    clock = step_clock()
    trainer = Trainer(model=model, args=args, train_dataset=rows, callbacks=[clock, *profilers],
                      data_collator=DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=-100))
    trainer.train()
    marks["train"] = time.time()
    trainer.save_model(str(out / "weights"))
    marks["save"] = time.time()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    return {"marks": marks, "peak_gib": peak, "real_tokens": sum(len(r["input_ids"]) for r in rows),
            **_clock_summary(clock, losses, trainer.state.global_step, profilers)}


def ours_worker(model_dir: Path, train: Path, method: str, out: Path, overrides: dict, cache_uri: str | None,
                profilers: list) -> dict:
    from pipeline.training.process_start import pause_collector

    pause_collector()  # as `python -m pipeline.training` starts
    import torch

    from pipeline.recipe import TrainingRecipe
    from pipeline.training.sft import train_sft

    clock = step_clock()  # imports transformers: counted with the imports, as in the peer
    marks = {"imports": time.time()}
    # the peer's hyperparameters (Trainer and LoraConfig defaults), so both make the same optimizer steps
    recipe = TrainingRecipe.model_validate({
        "method": method, "batch_size": 16, "max_length": 1024, "packing": False, "padding_free": True,
        "attn_implementation": "varlen" if torch.cuda.is_available() else "sdpa", "logging_steps": 10, "epochs": 1,
        "learning_rate": PEER_LR[method], "lr_scheduler": "linear", "warmup_ratio": 0,
        "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"},
        "save_steps": 10**6, "merge_adapter": False, **overrides})  # the peer saves no checkpoint either
    losses: list[float] = []

    def report(message: str, metrics: dict) -> None:
        if "loss" in metrics:
            losses.append(metrics["loss"])
        print(f"[ours {time.strftime('%H:%M:%S')}] {message}", flush=True)

    result = train_sft(train, model_dir, out, recipe, report, extra_callbacks=[clock, *profilers],
                       compile_cache_uri=cache_uri)
    marks["save"] = time.time()
    if result.phases.get("compiled"):  # where a compile's seconds went (Dynamo, AOTAutograd, Inductor, loading)
        from torch._dynamo.utils import compile_times

        print(compile_times(repr="str", aggregate=True), flush=True)
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    return {"marks": marks, "phases": result.phases, "peak_gib": peak, "real_tokens": result.tokens_seen,
            **_clock_summary(clock, losses, result.global_step, profilers)}


def unsloth_worker(model_dir: Path, train: Path, method: str, out: Path, overrides: dict, profilers: list) -> dict:
    """Unsloth as its README runs it: FastLanguageModel (16-bit LoRA on the bf16 base, its own kernels and
    gradient checkpointing) and TRL's SFTTrainer, with the peer's hyperparameters and our prompt/completion rows
    (loss on the answer, as ours). Runs in its own environment (`--unsloth-site`): Unsloth pins transformers<=5.17,
    trl<=1.15 and datasets<5."""
    import unsloth  # noqa: F401  first: it patches transformers and TRL as they are imported
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer
    from unsloth import FastLanguageModel

    from pipeline.training.sft import load_prompt_completion

    clock = step_clock()
    marks = {"imports": time.time()}
    model, tokenizer = FastLanguageModel.from_pretrained(
        str(model_dir), max_seq_length=1024, dtype=torch.bfloat16, load_in_4bit=False, full_finetuning=method == "full")
    if method == "lora":
        model = FastLanguageModel.get_peft_model(
            model, r=16, lora_alpha=32, lora_dropout=0.0, bias="none", random_state=42,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
            use_gradient_checkpointing=overrides.get("gradient_checkpointing", "unsloth"))
    marks["load"] = time.time()
    config = SFTConfig(output_dir=str(out / "checkpoints"), per_device_train_batch_size=16, num_train_epochs=1,
                       learning_rate=PEER_LR[method], lr_scheduler_type="linear", warmup_steps=0, logging_steps=10,
                       save_strategy="no", report_to=[], seed=42, bf16=True, optim="adamw_torch_fused",
                       max_length=1024, completion_only_loss=True, disable_tqdm=True,
                       # Unsloth's own defaults otherwise: accumulation 2, weight decay 0.001, 8-bit AdamW
                       gradient_accumulation_steps=1, weight_decay=0.0)
    trainer = SFTTrainer(model=model, processing_class=tokenizer, args=config, callbacks=[clock, *profilers],
                         train_dataset=Dataset.from_list(load_prompt_completion(train)))
    marks["tokenize"] = time.time()
    trainer.train()
    marks["train"] = time.time()
    model.save_pretrained(str(out / "weights"))
    marks["save"] = time.time()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"marks": marks, "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
            "unsloth": unsloth.__version__, **_clock_summary(clock, losses, trainer.state.global_step, profilers)}


def _time_garbage_collections() -> dict:
    """Seconds and count of the cyclic garbage collector's passes per generation, filled in as the run goes."""
    import gc

    totals = {"seconds": [0.0, 0.0, 0.0], "passes": [0, 0, 0]}
    started = [0.0]

    def clock(phase: str, info: dict) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            totals["seconds"][info["generation"]] += time.perf_counter() - started[0]
            totals["passes"][info["generation"]] += 1

    gc.callbacks.append(clock)
    return totals


def run_worker(kind: str, spec: dict, work: Path, cache_uri: str | None, unsloth_site: Path | None = None,
               extra_env: dict | None = None, cprofile: Path | None = None) -> dict:
    """Spawn one run as its own process (fresh Inductor and Triton caches) and time it from spawn to exit;
    `extra_env` joins its environment; with `cprofile` the whole process runs under cProfile, written there."""
    result_path = work / "result.json"
    local_caches = tempfile.mkdtemp(prefix="inductor-", dir=work)
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": local_caches, "TRITON_CACHE_DIR": f"{local_caches}/triton",
           "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    if kind == "unsloth":  # its own pins: its site first, then this repo; none of our carried wheels
        env["PYTHONPATH"] = f"{unsloth_site}{os.pathsep}{ROOT}"
        env.update(HF_HUB_OFFLINE="1", UNSLOTH_DISABLE_STATISTICS="1",
                   UNSLOTH_COMPILE_LOCATION=f"{local_caches}/unsloth")
    env.update(extra_env or {})
    profiling = ["-m", "cProfile", "-o", str(cprofile)] if cprofile else []
    if cprofile:
        env["BENCH_CPROFILE"] = "1"
    command = [sys.executable, *profiling, __file__, "--worker", kind, "--spec", json.dumps(spec),
               "--result", str(result_path)]
    if cache_uri:
        command += ["--cache-uri", cache_uri]
    env["BENCH_T0"] = repr(time.time())
    start = float(env["BENCH_T0"])
    done = subprocess.run(command, env=env, cwd=ROOT)
    wall = time.time() - start
    if done.returncode != 0 or not result_path.exists():
        return {"failed": f"exit {done.returncode}", "wall_s": wall}
    r = json.loads(result_path.read_text())
    marks = {k: v - start for k, v in r.pop("marks").items()}
    return {"wall_s": wall, "marks_s": marks, **r}


def phase_table(r: dict) -> dict:
    """Seconds per phase from spawn: imports, load, tokenize, setup (ours: the trainer's set-up and the compile
    cache restored), compile, train, save, exit."""
    m = r["marks_s"]
    if "phases" in r:  # ours: train_sft timed its own phases
        p = r["phases"]
        return {"imports": m["imports"], "load": p["load_s"], "tokenize": p.get("tokenize_s", 0.0),
                "setup": p["prepare_s"], "compile": p["compile_s"], "train": p["train_s"],
                "save": p["save_s"] + p.get("cache_store_s", 0.0) + p.get("hash_s", 0.0),
                "exit": r["wall_s"] - m["save"], **_teardown(r), "other": m["save"] - m["imports"] - sum(
                    p.get(k, 0.0) for k in ("load_s", "tokenize_s", "prepare_s", "compile_s", "train_s", "save_s",
                                            "cache_store_s", "hash_s"))}
    # the peer's trainer set-up counts in `train`; Unsloth's tokenize mark follows its SFTTrainer's set-up
    return {"imports": m["imports"], "load": m["load"] - m["imports"], "tokenize": m["tokenize"] - m["load"],
            "setup": 0.0, "compile": 0.0, "train": m["train"] - m["tokenize"], "save": m["save"] - m["train"],
            "exit": r["wall_s"] - m["save"], **_teardown(r), "other": 0.0}


def _teardown(r: dict) -> dict:
    """The part of `exit` after the result was written: the interpreter's and CUDA's teardown."""
    return {"teardown": r["wall_s"] - r["marks_s"]["done"]} if "done" in r["marks_s"] else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prepare", type=Path, help="build the data file from this shared data folder and stop")
    parser.add_argument("--model", choices=sorted(CONFIGS), default="1b")
    parser.add_argument("--method", choices=["lora", "full"], default="lora")
    parser.add_argument("--examples", type=int, nargs="+", default=[1000])
    parser.add_argument("--runs", nargs="+", default=["peer", "auto={}"],
                        help="'peer', or NAME=JSON overrides of our recipe (NAME@N: at N examples only); "
                        "'_cache': 'fresh' gives that run an empty compile cache of its own, 'none' none; "
                        "'_profile': [FIRST_STEP, STEPS] profiles those steps (torch's profiler, then cProfile); "
                        "'_cprofile': true runs the whole process under cProfile; '_env': {...} joins its environment")
    parser.add_argument("--tokenizer", type=Path, default=ROOT / ".bench_assets/smollm2")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--unsloth-site", type=Path, help="a folder holding Unsloth and its pinned packages, for "
                        "runs named unsloth* (bench/unsloth_site.sh builds it)")
    parser.add_argument("--worker", choices=["peer", "ours", "unsloth"], help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--cache-uri", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.prepare:
        return prepare(args.prepare, args.tokenizer)
    if args.worker:
        spec = json.loads(args.spec)
        out = Path(spec["out"])
        model, train, method = Path(spec["model"]), Path(spec["train"]), spec["method"]
        profilers = _profilers(spec, args.worker)
        gc_time = _time_garbage_collections()
        if args.worker == "peer":
            r = peer_worker(model, train, method, out, spec["overrides"], profilers)
        elif args.worker == "unsloth":
            r = unsloth_worker(model, train, method, out, spec["overrides"], profilers)
        else:
            r = ours_worker(model, train, method, out, spec["overrides"], args.cache_uri, profilers)
        r["gc"] = gc_time
        r["marks"]["done"] = time.time()  # what follows is the interpreter's teardown
        args.result.write_text(json.dumps(r))
        if args.worker == "ours" and not os.environ.get("BENCH_CPROFILE"):  # as `python -m pipeline.training` ends
            # (under cProfile the process must end normally, for the profile to be written)
            from pipeline.training.process_exit import exit_without_teardown

            exit_without_teardown()
        return None

    import torch

    work = Path(tempfile.mkdtemp(prefix="bench-ttm-"))
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    started = time.time()
    params = build_model_dir(args.model, args.tokenizer, work / "model")
    print(f"built {args.model} ({params / 1e6:.0f}M params) in {time.time() - started:.0f} s on {gpu}", flush=True)
    shared_cache = str(work / "compile-cache")  # stands in for the bucket: shared by every run below
    report = {"model": args.model, "params": params, "method": args.method, "gpu": gpu, "torch": torch.__version__,
              "command": " ".join(sys.argv), "sizes": {}}
    for n in args.examples:
        train = work / f"train-{n}.jsonl"
        got = write_subset(train, n)
        size = report["sizes"][str(n)] = {"examples": got, "runs": {}}
        for i, run in enumerate(args.runs):
            name, _, overrides = run.partition("=")
            name, _, only = name.partition("@")  # NAME@N: only at N examples
            if only and int(only) != n:
                continue
            overrides = json.loads(overrides or "{}")
            cache = overrides.pop("_cache", "shared")
            profile = overrides.pop("_profile", None)
            extra_env = overrides.pop("_env", None)
            cprofile = work / f"{name}-{n}.prof" if overrides.pop("_cprofile", False) else None
            cache_uri = {"shared": shared_cache, "fresh": str(work / f"fresh-cache-{n}-{i}"), "none": None}[cache]
            kind = "peer" if name.startswith("peer") else "unsloth" if name.startswith("unsloth") else "ours"
            if kind == "unsloth" and not args.unsloth_site:
                parser.error("runs named unsloth* need --unsloth-site")
            spec = {"model": str(work / "model"), "train": str(train), "method": args.method,
                    "out": str(work / f"out-{n}-{i}"), "overrides": overrides, "profile": profile}
            print(f"\n=== {n} examples: {name} {overrides} (cache {cache})", flush=True)
            size["runs"][name] = {"overrides": overrides, "cache": cache,
                                  **run_worker(kind, spec, work, cache_uri, args.unsloth_site, extra_env, cprofile)}
            if cprofile and cprofile.exists():
                print_profile(cprofile, args.out)
            summarise(report, args.out)


def print_profile(path: Path, out: Path | None, lines: int = 60) -> None:
    """A whole run's cProfile, by cumulative time; the file itself beside `--out`."""
    import pstats
    import shutil

    print(f"\ncProfile of the whole run {path.stem}, by cumulative time", flush=True)
    pstats.Stats(str(path)).sort_stats("cumulative").print_stats(lines)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, out.parent / path.name)


def add_mfu(report: dict, r: dict, tokens: int | None) -> None:
    """Model FLOPs utilisation over the whole run (spawn to saved weights), over training (the Trainer's loop,
    compilation included) and steady (after warm-up); the FLOPs of the real tokens, as bench/gpu_training.py."""
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in report["gpu"]), None)
    if not peak or not tokens:
        return
    flops = tokens * flops_per_token(report["params"], report["model"], report["method"], tokens / r["examples"])
    p = r["phases_s"]
    r["mfu"] = {"whole_run": flops / r["wall_s"] / (peak * 1e12),
                "training": flops / (p["train"] + p["compile"]) / (peak * 1e12),
                "steady": flops * r["steady_steps_per_s"] / r["steps"] / (peak * 1e12)}


def summarise(report: dict, out: Path | None) -> None:
    """Print each size's table, whole-run ratio first, then steady; write the JSON after every run."""
    for n, size in report["sizes"].items():
        runs = size["runs"]
        peer = next((r for k, r in runs.items() if k.startswith("peer")), None)
        tokens = next((r["real_tokens"] for r in runs.values() if r.get("real_tokens")), None)
        print(f"\n{report['model']} {report['method']}, {size['examples']} examples, {report['gpu']}")
        print(f"{'run':12} {'wall s':>7} {'x peer':>7} {'steady x':>8} {'steps':>5} {'peak GiB':>8}  phases (s)")
        for name, r in runs.items():
            if "failed" in r:
                print(f"{name:12} failed: {r['failed']} after {r['wall_s']:.0f} s")
                continue
            r["phases_s"] = phase_table(r)
            r["examples"] = size["examples"]
            add_mfu(report, r, tokens)
            ok = peer and "failed" not in peer
            ratio = peer["wall_s"] / r["wall_s"] if ok else float("nan")
            steady = r["steady_steps_per_s"] / peer["steady_steps_per_s"] if ok else float("nan")
            r["speedup_whole"], r["speedup_steady"] = ratio, steady
            if ok and not name.startswith("peer"):
                r["loss_gap"] = loss_gap(peer["losses"], r["losses"]) if r["steps"] == peer["steps"] else None
            peak = f"{r['peak_gib']:.2f}" if r.get("peak_gib") is not None else "-"
            phases = " ".join(f"{k} {v:.1f}" for k, v in r["phases_s"].items())
            extra = ""
            if "phases" in r:
                extra = f" | compiled={r['phases']['compiled']} cache_hit={r['phases']['compile_cache_hit']}"
            if r.get("mfu"):
                extra += " | MFU whole {whole_run:.1%} training {training:.1%} steady {steady:.1%}".format(**r["mfu"])
            if r.get("loss_gap"):
                extra += f" | loss gap mean {r['loss_gap']['mean_relative_gap']:.2%} max {r['loss_gap']['max_relative_gap']:.2%}"
            print(f"{name:12} {r['wall_s']:>7.1f} {ratio:>6.2f}x {steady:>7.2f}x {r['steps']:>5} {peak:>8}  {phases}{extra}")
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
