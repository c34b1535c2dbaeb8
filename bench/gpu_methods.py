"""Each training method on each model size, through our training stage, on one GPU: does it run, how fast, how big.

    python bench/gpu_methods.py --models 135m 1b --methods lora qlora full --steps 30 --out bench/out/methods.json
    torchrun --nproc-per-node=2 bench/gpu_methods.py --distributed fsdp --methods lora full --dpo-steps 5

Models are Llama-shaped with random weights (the SmolLM2-135M shape and a ~1B shape); data is the real
Debian chat sample. Reports real tokens/s, peak GPU memory and the loss at the last logged step; with
`--dpo-steps`, DPO after each SFT run on the sample preference pairs, whose saved weights are checked against
the SFT ones (gathered from every shard under ZeRO-3/FSDP). Under torchrun, rank 0 reports.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import math
import os
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.gpu_training import _peak_gib, _profiled, build_model_dir, profile_callback, step_clock, write_examples  # noqa: E402
from pipeline.recipe import TrainingRecipe  # noqa: E402


def run_dpo(base: Path, outputs: Path, method: str, recipe: TrainingRecipe, sft, steps: int) -> dict | None:
    """DPO from the SFT result on every rank; on rank 0, its losses and whether its saved weights are complete
    (every tensor the SFT weights have, same shapes) and changed."""
    from safetensors.torch import load_file

    from pipeline.paths import PROJECT_ROOT
    from pipeline.recipe import DpoRecipe
    from pipeline.training.dpo import load_preferences, train_dpo

    import torch

    if torch.distributed.is_initialized():
        torch.distributed.barrier()  # rank 0 has written the SFT weights
    size = base.name
    sft_result = sft.to_dict() if sft is not None else _sft_result_of_rank0(outputs / f"out-{size}-{method}", method)
    losses: list[float] = []
    result = train_dpo(load_preferences(PROJECT_ROOT / "data/sample/preferences.jsonl"), base, sft_result,
                       outputs / f"dpo-{size}-{method}", recipe, DpoRecipe(enabled=True, max_steps=steps, batch_size=4,
                       max_length=512, logging_steps=1, learning_rate=5e-6 if method == "full" else 5e-5),
                       lambda msg, m: losses.append(m["loss"]) if "loss" in m else None)
    if not result:
        return None
    name = "adapter_model.safetensors" if result["adapter_path"] else "model.safetensors"
    before = load_file(Path(sft.adapter_path or sft.model_path, name))
    after = load_file(Path(result["adapter_path"] or result["model_path"], name))
    complete = set(before) == set(after) and all(before[k].shape == after[k].shape for k in before)
    return {"steps": result["global_step"], "first_loss": round(losses[0], 4) if losses else None,
            "last_loss": round(losses[-1], 4) if losses else None, "weights_complete": complete,
            "tensors_changed": sum(not before[k].equal(after[k]) for k in before if k in after), "tensors": len(before)}


def _sft_result_of_rank0(out: Path, method: str) -> dict:
    # the other ranks start DPO from the weights rank 0 wrote
    return {"method": method, "adapter_path": str(out / "adapter") if method != "full" else None,
            "model_path": str(out / "model") if method == "full" else None}


def _rounded(value: float) -> int | None:
    return None if math.isnan(value) else round(value)  # NaN: too few steps ran to time them


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["135m", "1b"])
    parser.add_argument("--methods", nargs="+", default=["lora", "qlora", "full"])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--recipe", default='{"batch_size": 8, "max_length": 2048, "attn_implementation": "flex_attention", "gradient_checkpointing": true}')
    parser.add_argument("--tokenizer", type=Path, default=Path(".bench_assets/smollm2"))
    parser.add_argument("--distributed", choices=["none", "zero2", "zero3", "fsdp"], default="none",
                        help="sharding; run the script under torchrun (one process per GPU) for anything but none")
    parser.add_argument("--dpo-steps", type=int, default=0, help="DPO steps after each SFT run (0: none)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-methods"))
    parser.add_argument("--out", type=Path)
    parser.add_argument("--profile", type=int, default=0,
                        help="on rank 0, profile this many SFT steps from step 5 (torch profiler, then cProfile)")
    parser.add_argument("--stacks-after", type=float, default=0,
                        help="print every thread's stack and exit after this many seconds (0: never), to see where a hang sits")
    args = parser.parse_args()
    if args.stacks_after:
        faulthandler.dump_traceback_later(args.stacks_after, exit=True)

    import torch

    from pipeline.training.sft import train_sft

    rank = int(os.environ.get("RANK", "0"))
    work = args.work / f"rank{rank}"  # each rank builds the same seeded model and data
    work.mkdir(parents=True, exist_ok=True)
    write_examples(work / "train.jsonl", repeat=8)
    outputs = args.work  # shared: rank 0 writes the weights that every rank starts DPO from
    rows = []
    for size in args.models:
        params = build_model_dir(size, args.tokenizer, work / size)
        for method in args.methods:
            # one checkpoint, at the end: it is written (sharded under FSDP) but falls outside the step clock
            recipe = TrainingRecipe.model_validate({"save_steps": args.steps, **json.loads(args.recipe), "method": method,
                                                    "max_steps": args.steps, "logging_steps": 5, "learning_rate": 2e-4 if method != "full" else 2e-5,
                                                    "distributed": args.distributed})
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            losses: list[float] = []
            clock = step_clock()
            profiler = ([profile_callback(f"{size} {method} {args.distributed}", args.profile, first_step=5)]
                        if args.profile and rank == 0 else [])
            callbacks = [clock] + profiler
            start = time.perf_counter()
            try:
                result = train_sft(work / "train.jsonl", work / size, outputs / f"out-{size}-{method}", recipe,
                                   lambda msg, m: losses.append(m["loss"]) if "loss" in m else None, extra_callbacks=callbacks)
                dpo = run_dpo(work / size, outputs, method, recipe, result, args.dpo_steps) if args.dpo_steps else None
            except Exception as e:  # report and go on: one method failing must not hide the others
                traceback.print_exc()
                rows.append({"model": size, "method": method, "distributed": args.distributed, "error": f"{type(e).__name__}: {str(e)[:300]}"})
                print(rows[-1], flush=True)
                continue
            if result is None:  # a rank other than 0
                continue
            rows.append({"model": size, "params_m": round(params / 1e6), "method": method, "distributed": args.distributed,
                         "gpus": torch.cuda.device_count() if torch.cuda.is_available() else 0,
                         "ranks": int(os.environ.get("WORLD_SIZE", "1")), "steps": result.global_step,
                         "tokens_per_s": round(result.tokens_seen / result.train_runtime_s),
                         # after warm-up, without start-up and the end-of-run checkpoint; every step sees ~ the same tokens
                         "steady_tokens_per_s": _rounded(clock.steady_steps_per_s(_profiled(profiler)) * result.tokens_seen / result.global_step),
                         "peak_gib": round(_peak_gib(), 2),
                         "last_loss": round(losses[-1], 3) if losses else None, "wall_s": round(time.perf_counter() - start, 1),
                         **({"dpo": dpo} if dpo else {})})
            print(rows[-1], flush=True)
    if rank != 0:
        return
    print(f"\n{'model':6} {'method':6} {'steps':>5} {'tokens/s':>9} {'steady':>9} {'peak GiB':>8} {'loss':>6}")
    for r in rows:
        if "error" in r:
            print(f"{r['model']:6} {r['method']:6} failed: {r['error']}")
        else:
            print(f"{r['model']:6} {r['method']:6} {r['steps']:>5} {r['tokens_per_s']:>9} {r['steady_tokens_per_s']!s:>9} "
                  f"{r['peak_gib']:>8} {r['last_loss']!s:>6}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                                        "ranks": int(os.environ.get("WORLD_SIZE", "1")), "argv": sys.argv[1:], "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
