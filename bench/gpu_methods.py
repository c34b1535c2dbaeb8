"""Each training method on each model size, through our training stage, on one GPU: does it run, how fast, how big.

    python bench/gpu_methods.py --models 135m 1b --methods lora qlora full --steps 30 --out bench/out/methods.json

Models are Llama-shaped with random weights (the SmolLM2-135M shape and a ~1B shape); data is the real
Debian chat sample. Reports real tokens/s, peak GPU memory and the loss at the last logged step.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.gpu_training import build_model_dir, write_examples  # noqa: E402
from pipeline.recipe import TrainingRecipe  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["135m", "1b"])
    parser.add_argument("--methods", nargs="+", default=["lora", "qlora", "full"])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--recipe", default='{"batch_size": 8, "max_length": 2048, "attn_implementation": "flex_attention", "gradient_checkpointing": true}')
    parser.add_argument("--tokenizer", type=Path, default=Path(".bench_assets/smollm2"))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import torch

    from pipeline.training.sft import train_sft

    work = Path(tempfile.mkdtemp(prefix="bench-methods-"))
    write_examples(work / "train.jsonl", repeat=8)
    rows = []
    for size in args.models:
        params = build_model_dir(size, args.tokenizer, work / size)
        for method in args.methods:
            recipe = TrainingRecipe.model_validate({**json.loads(args.recipe), "method": method, "max_steps": args.steps,
                                                    "logging_steps": 5, "learning_rate": 2e-4 if method != "full" else 2e-5})
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            losses: list[float] = []
            start = time.perf_counter()
            try:
                result = train_sft(work / "train.jsonl", work / size, work / f"out-{size}-{method}", recipe,
                                   lambda msg, m: losses.append(m["loss"]) if "loss" in m else None)
            except Exception as e:  # report and go on: one method failing must not hide the others
                rows.append({"model": size, "method": method, "error": f"{type(e).__name__}: {str(e)[:300]}"})
                print(rows[-1], flush=True)
                continue
            rows.append({"model": size, "params_m": round(params / 1e6), "method": method, "steps": result.global_step,
                         "tokens_per_s": round(result.tokens_seen / result.train_runtime_s), "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
                         "last_loss": round(losses[-1], 3) if losses else None, "wall_s": round(time.perf_counter() - start, 1)})
            print(rows[-1], flush=True)
    print(f"\n{'model':6} {'method':6} {'steps':>5} {'tokens/s':>9} {'peak GiB':>8} {'loss':>6}")
    for r in rows:
        if "error" in r:
            print(f"{r['model']:6} {r['method']:6} failed: {r['error']}")
        else:
            print(f"{r['model']:6} {r['method']:6} {r['steps']:>5} {r['tokens_per_s']:>9} {r['peak_gib']:>8} {r['last_loss']!s:>6}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"gpu": torch.cuda.get_device_name(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
