"""Training throughput: our training stage against a plain transformers Trainer + PEFT baseline, in one run.

Both train the same randomly initialised Llama-shaped model on the same real Debian chat examples
(data/sample, repeated to give enough steps) for one epoch, in bf16 on one GPU:

- baseline: transformers `Trainer`, PEFT LoRA (or full), batch 16 padded to the longest example, no packing,
  no special kernels: what a first script looks like.
- ours: `pipeline.training.sft.train_sft`. By default with the baseline's hyperparameters (the same 16
  examples per optimizer step, learning rate, linear schedule, LoRA r=16/alpha=32/no dropout on all linear
  layers) but padding-free batches and Liger's kernels, so both make the same optimizer steps and their loss
  curves can be compared point by point. `--ours` overrides that recipe, one run per JSON object (e.g.
  packed 2048-token rows for throughput at a larger batch).

Reported per run: real (non-padding) tokens/s, peak GPU memory, MFU, the loss at the end and, for runs with
as many steps as the baseline, the gap between the two loss curves. MFU counts model FLOPs per real token:
6N for full fine-tuning, 4N for LoRA (no weight gradients for the frozen base), plus attention
(12 * layers * hidden * mean sequence length), over the GPU's dense bf16 peak. `--profile N` profiles N
steps of each run (from step 20) and prints where a step's time goes.

    python bench/gpu_training.py --model 1b --method lora --profile 3 --out bench/out/lora.json
    python bench/gpu_training.py --model tiny --method lora   # CPU smoke run in seconds
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.curation.formats import MalformedRecord, normalise  # noqa: E402
from pipeline.curation.readers import read_jsonl  # noqa: E402
from pipeline.paths import resolve  # noqa: E402
from pipeline.recipe import DataRecipe, TrainingRecipe  # noqa: E402

CONFIGS = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
    "135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3),
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8),
    # Llama 3 8B's body (SmolLM2's 49k vocabulary, tied embeddings: 7.0B parameters)
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8),
}
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0}


def build_model_dir(size: str, tokenizer_dir: Path, target: Path) -> int:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=8192, tie_word_embeddings=True,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
                         **CONFIGS[size])
    torch.manual_seed(0)
    # built on the GPU where there is one: initialising 8B weights on the host takes minutes
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)
    return sum(p.numel() for p in model.parameters())


def write_examples(path: Path, repeat: int) -> int:
    # Read and normalise only: the GPU machine has no curation dependencies, and the sample is clean enough.
    records = []
    for source in DataRecipe().sources:
        for raw in read_jsonl(resolve(source.path)):
            try:
                records.append({"id": f"{raw.file}:{raw.line}", "messages": normalise(raw.value)[1]})
            except (MalformedRecord, TypeError):
                continue
    with open(path, "w") as f:
        for i in range(repeat):
            for r in records:
                f.write(json.dumps({**r, "id": f"{r['id']}-{i}"}) + "\n")
    return len(records) * repeat


def _reset_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _peak_gib() -> float:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")


def flops_per_token(params: int, size: str, method: str, mean_len: float) -> float:
    cfg = CONFIGS[size]
    attention = 12 * cfg["num_hidden_layers"] * cfg["hidden_size"] * mean_len
    return (6 if method == "full" else 4) * params + attention


def profile_callback(label: str, steps: int, first_step: int = 20):
    """Profiles `steps` optimizer steps from `first_step` with torch's profiler (wall and GPU-busy time per step,
    top kernels by GPU and by CPU time), then as many later steps with cProfile (where the host's time goes)."""
    import cProfile
    import pstats

    import torch
    from transformers import TrainerCallback

    py_first = first_step + steps + 5

    class ProfileSteps(TrainerCallback):
        def __init__(self) -> None:
            self.profiler = None
            self.python = None
            self.started = 0.0
            # steps whose time the profilers inflate, numbered by the step that ends there; the one after each
            # window too, as the step clock has already stamped the last one when the profiler prints its tables
            self.profiled_steps = set(range(first_step + 1, first_step + steps + 2)) | set(range(py_first + 1, py_first + steps + 2))

        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == first_step and self.profiler is None:
                _sync()
                activities = [torch.profiler.ProfilerActivity.CPU]
                if torch.cuda.is_available():
                    activities.append(torch.profiler.ProfilerActivity.CUDA)
                self.profiler = torch.profiler.profile(activities=activities)
                self.profiler.__enter__()
                self.started = time.perf_counter()
            if state.global_step == py_first and self.python is None:
                self.python = cProfile.Profile()
                self.python.enable()

        def on_step_end(self, args, state, control, **kwargs):
            if self.profiler is not None and state.global_step == first_step + steps:
                _sync()
                wall_ms = (time.perf_counter() - self.started) * 1e3 / steps
                self.profiler.__exit__(None, None, None)
                if os.environ.get("BENCH_TRACE_DIR"):  # the timeline, for chrome://tracing or Perfetto
                    trace = Path(os.environ["BENCH_TRACE_DIR"]) / f"trace-{label}-{os.getpid()}.json"
                    trace.parent.mkdir(parents=True, exist_ok=True)
                    self.profiler.export_chrome_trace(str(trace))
                    subprocess.run(["gzip", "-f", str(trace)], check=False)
                events = self.profiler.key_averages()
                # kernels only: an aten op's device time is its kernels' again
                gpu_ms = sum(e.self_device_time_total for e in events if not e.key.startswith("aten::")) / 1e3 / steps
                print(f"\n[{label}] {wall_ms:.1f} ms per step, GPU kernels busy {gpu_ms:.1f} ms per step "
                      f"({gpu_ms / wall_ms:.0%})")
                calls = sorted(((e.count // steps, e.key) for e in events if e.key.startswith(("aten::", "cuda"))),
                               reverse=True)
                print(f"[{label}] calls per step: " + ", ".join(f"{key} {n}" for n, key in calls[:25]))
                for key in (["self_device_time_total"] if torch.cuda.is_available() else []) + ["self_cpu_time_total"]:
                    print(events.table(sort_by=key, row_limit=15, max_name_column_width=60))
                self.profiler = None
            if self.python is not None and state.global_step == py_first + steps:
                self.python.disable()
                print(f"\n[{label}] cProfile of {steps} steps, by cumulative time")
                pstats.Stats(self.python).sort_stats("cumulative").print_stats(45)
                self.python = None

    return ProfileSteps()


def step_clock():
    """Step end times, for the steady-state rate after warm-up (compilation, cuDNN plans, allocator growth)."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[tuple[int, float]] = []
            self.started: float | None = None

        def on_train_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def first_steps_s(self, n: int = 5) -> list[float]:
            """Seconds from the start of training to the end of each of the first `n` steps (warm-up costs)."""
            return [round(t - self.started, 3) for _, t in self.times[:n]] if self.started else []

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append((state.global_step, time.perf_counter()))

        def step_ms(self) -> list[float]:
            """Each step's wall time in milliseconds, the first from the start of training: where warm-up went."""
            ends = [self.started] + [t for _, t in self.times] if self.started is not None else []
            return [round((b - a) * 1000, 1) for a, b in zip(ends, ends[1:])]

        def steady_steps_per_s(self, skip: set[int] = frozenset()) -> float:
            """Steps per second after the first fifth of the run (warm-up), leaving out the steps in `skip`
            (profiled ones: the profilers slow them down several times)."""
            warm = len(self.times) // 5
            spans = [end - start for (_, start), (step, end) in zip(self.times[warm:], self.times[warm + 1:])
                     if step not in skip]
            return len(spans) / sum(spans) if spans else math.nan

    return StepClock()


def _profiled(profilers: list) -> set[int]:
    return set().union(*(p.profiled_steps for p in profilers))


def loss_gap(base: list[float], ours: list[float]) -> dict | None:
    """Mean and largest relative gap between two loss curves logged at the same steps."""
    if not base or len(base) != len(ours):
        return None
    gaps = [abs(o - b) / b for b, o in zip(base, ours)]
    return {"mean_relative_gap": sum(gaps) / len(gaps), "max_relative_gap": max(gaps), "points": len(gaps)}


def tokenized_rows(tokenizer, train_path: Path) -> list[dict]:
    """The baseline's rows: each example's chat template, loss on the assistant's reply only."""
    rows = []
    for line in open(train_path):
        messages = json.loads(line)["messages"]
        prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
        full = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"][:1024]
        rows.append({"input_ids": full, "attention_mask": [1] * len(full), "labels": [-100] * len(prompt) + full[len(prompt):]})
    return rows


def token_counts(rows: list[dict]) -> dict:
    """Real (non-padding) tokens of the rows, and their mean length."""
    real_tokens = sum(len(r["input_ids"]) for r in rows)
    return {"real_tokens": real_tokens, "mean_len": real_tokens / len(rows)}


def data_only(model_dir: Path, train_path: Path) -> dict:
    """The token counts a baseline run would report, without training it (`--no-baseline`)."""
    from transformers import AutoTokenizer

    rows = tokenized_rows(AutoTokenizer.from_pretrained(model_dir), train_path)
    return {**token_counts(rows), "losses": [], "skipped": True}


def run_baseline(model_dir: Path, train_path: Path, method: str, batch_size: int, out_dir: Path, profile: int) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer, TrainingArguments

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = tokenized_rows(tokenizer, train_path)
    # full fine-tuning keeps fp32 master weights under bf16 autocast (the Trainer's mixed precision), as ours does:
    # in bf16 weights, updates at lr 2e-5 round away and the two loss curves would part for that reason alone
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16 if method == "lora" else torch.float32)
    torch.manual_seed(42)  # the adapter's initial A as in our run, which seeds before building it
    if method == "lora":
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))
    args = TrainingArguments(output_dir=str(out_dir), per_device_train_batch_size=batch_size, num_train_epochs=1,
                             learning_rate=2e-4 if method == "lora" else 2e-5, logging_steps=10,
                             save_strategy="no", report_to=[], seed=42, disable_tqdm=True,
                             use_cpu=not torch.cuda.is_available(), bf16=torch.cuda.is_available())
    clock = step_clock()
    profiler = [profile_callback("baseline", profile)] if profile else []
    trainer = Trainer(model=model, args=args, train_dataset=rows,
                      data_collator=DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=-100),
                      callbacks=[clock] + profiler)
    _reset_memory()
    start = time.perf_counter()
    trainer.train()
    _sync()
    seconds = time.perf_counter() - start
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"seconds": seconds, **token_counts(rows), "steps": trainer.state.global_step,
            "steady_steps_per_s": clock.steady_steps_per_s(_profiled(profiler)),
            "peak_gib": _peak_gib(), "final_loss": sum(losses[-3:]) / len(losses[-3:]), "losses": losses}


def run_ours(model_dir: Path, train_path: Path, recipe: TrainingRecipe, out_dir: Path, label: str, profile: int,
             real_tokens: int) -> dict:
    """`real_tokens`: the baseline's count for the same examples; the Trainer's own non-padding count would miss
    every <|im_end|>, since SmolLM2's pad token is its end-of-turn token."""
    import torch

    from pipeline.training.sft import train_sft

    _reset_memory()
    losses: list[float] = []

    def report(message: str, metrics: dict) -> None:
        if "loss" in metrics:
            losses.append(metrics["loss"])
        print(f"[{label} {time.strftime('%H:%M:%S')}] {message}", flush=True)  # progress, for runs cut off by a limit

    start = time.perf_counter()
    clock = step_clock()
    profiler = [profile_callback(label, profile)] if profile else []
    result = train_sft(train_path, model_dir, out_dir, recipe, report, extra_callbacks=[clock] + profiler)
    seconds = time.perf_counter() - start
    return {"seconds": result.train_runtime_s, "wall_with_setup_s": seconds, "real_tokens": real_tokens,
            "trainer_tokens_seen": result.tokens_seen,
            "steps": result.global_step, "steady_steps_per_s": clock.steady_steps_per_s(_profiled(profiler)), "peak_gib": _peak_gib(),
            "final_loss": sum(losses[-3:]) / max(len(losses[-3:]), 1), "losses": losses}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(CONFIGS), default="1b")
    parser.add_argument("--method", choices=["lora", "full"], default="lora")
    parser.add_argument("--repeat", type=int, default=8, help="passes of the sample in the one epoch")
    parser.add_argument("--batch-size", type=int, default=16, help="baseline examples per step")
    parser.add_argument("--ours", nargs="+", default=["{}"], help="JSON overrides of our TrainingRecipe, one run each")
    parser.add_argument("--profile", type=int, default=0, help="profile this many steps of each run (0: off)")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip the baseline run (for absolute figures such as MFU over a longer run; no ratios)")
    parser.add_argument("--tokenizer", type=Path, default=Path(".bench_assets/smollm2"))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    overrides = [json.loads(o) for o in args.ours]
    if any("max_steps" in o or "epochs" in o for o in overrides):
        # tokens/s divides the whole epoch's real tokens by the run's time: a shorter run would be overstated
        parser.error("--ours may not set max_steps or epochs: every run trains one whole epoch (use --repeat)")

    import torch

    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    params = build_model_dir(args.model, args.tokenizer, work / "model")
    examples = write_examples(work / "train.jsonl", args.repeat)
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in gpu), None)

    # the baseline's hyperparameters (Trainer and LoraConfig defaults), so the two runs make the same steps
    defaults = {"method": args.method, "batch_size": args.batch_size, "max_length": 1024, "packing": False,
                "padding_free": True, "attn_implementation": "sdpa", "logging_steps": 10, "epochs": 1,
                "learning_rate": 2e-4 if args.method == "lora" else 2e-5, "lr_scheduler": "linear", "warmup_ratio": 0,
                "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"},
                "save_steps": 10**6, "merge_adapter": False}  # the baseline saves nothing either
    # "_cudnn_sdp": false runs that variant with cuDNN attention off (SDPA then picks flash or mem-efficient)
    cudnn_sdp = [o.pop("_cudnn_sdp", True) for o in overrides]
    recipes = [TrainingRecipe.model_validate({**defaults, **o}) for o in overrides]
    results = {"baseline": data_only(work / "model", work / "train.jsonl") if args.no_baseline else
               run_baseline(work / "model", work / "train.jsonl", args.method, args.batch_size, work / "baseline",
                            args.profile)}
    summarise(results, args, params, examples, gpu, peak, recipes, cudnn_sdp)
    for i, recipe in enumerate(recipes):
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        torch.backends.cuda.enable_cudnn_sdp(cudnn_sdp[i])
        try:
            results[f"ours{i}"] = run_ours(work / "model", work / "train.jsonl", recipe, work / f"ours{i}", f"ours{i}",
                                          args.profile, results["baseline"]["real_tokens"])
        except Exception as e:  # one variant failing (OOM, a kernel missing) must not hide the others
            print(f"ours{i} failed: {type(e).__name__}: {str(e)[:300]}")
        summarise(results, args, params, examples, gpu, peak, recipes, cudnn_sdp)


def summarise(results: dict, args, params: int, examples: int, gpu: str, peak: float | None, recipes: list,
              cudnn_sdp: list) -> None:
    """Print the table and the ratios to the baseline; write the JSON (called after every run, so a run cut off
    by a time limit still leaves what it finished)."""
    base = results["baseline"]
    mean_len = base["mean_len"]
    print(f"\n{args.model} ({params / 1e6:.0f}M params), {args.method}, {examples} examples, mean {mean_len:.0f} tokens, on {gpu}")
    print(f"{'run':9} {'steps':>6} {'tokens/s':>10} {'steady':>10} {'peak GiB':>9} {'MFU':>6} {'steady MFU':>10} {'final loss':>10}")
    for name, r in results.items():
        if r.get("skipped"):
            continue
        r["tokens_per_s"] = r["real_tokens"] / r["seconds"]
        # every run sees the same tokens on average per step, so the steady step rate converts to tokens/s
        r["steady_tokens_per_s"] = r["steady_steps_per_s"] * r["real_tokens"] / r["steps"]
        per_token = flops_per_token(params, args.model, args.method, mean_len) / (peak * 1e12) if peak else math.nan
        r["mfu"], r["steady_mfu"] = r["tokens_per_s"] * per_token, r["steady_tokens_per_s"] * per_token
        print(f"{name:9} {r['steps']:>6} {r['tokens_per_s']:>10.0f} {r['steady_tokens_per_s']:>10.0f} {r['peak_gib']:>9.2f} "
              f"{r['mfu']:>6.1%} {r['steady_mfu']:>10.1%} {r['final_loss']:>10.3f}")
    for name, r in results.items():
        if name != "baseline" and not base.get("skipped"):
            r["loss_gap"] = loss_gap(base["losses"], r["losses"]) if r["steps"] == base["steps"] else None
            gap = (f", loss curves {r['loss_gap']['mean_relative_gap']:.1%} apart on average (at most "
                   f"{r['loss_gap']['max_relative_gap']:.1%}) over {r['loss_gap']['points']} points") if r["loss_gap"] else \
                f", loss curves not comparable ({r['steps']} steps against {base['steps']})"
            print(f"{name} / baseline: tokens/s {r['tokens_per_s'] / base['tokens_per_s']:.2f}x (steady "
                  f"{r['steady_tokens_per_s'] / base['steady_tokens_per_s']:.2f}x), "
                  f"peak memory {r['peak_gib'] / base['peak_gib']:.2f}x{gap}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"model": args.model, "params": params, "method": args.method, "gpu": gpu,
                                        "examples": examples, "recipes": [r.model_dump() for r in recipes],
                                        "cudnn_sdp": cudnn_sdp, "command": " ".join(sys.argv), **results}, indent=2))


if __name__ == "__main__":
    main()
