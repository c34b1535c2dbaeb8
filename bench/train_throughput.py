"""Training throughput: our training stage (packing, padding-free) vs a plain Trainer + PEFT baseline (pad to
longest, no packing), on the same random-weight Llama and the real Debian chat examples, in one run.

    python bench/train_throughput.py --out bench.json              # ~1B Llama-shaped model on a GPU
    python bench/train_throughput.py --tiny --out /tmp/tiny.json   # a tiny config on CPU, in seconds

Reports real (non-padding) tokens/s, peak memory and MFU for both, and the ratio.
MFU counts model FLOPs per real token: 6N for full fine-tuning, 4N for LoRA (no weight-gradient matmuls for
the frozen weights), plus attention 6·L·d·seq (x2/3 for LoRA likewise); padding tokens are not counted.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.paths import PROJECT_ROOT  # noqa: E402
from pipeline.recipe import BaseModelRecipe, TrainingRecipe  # noqa: E402

ONE_B = dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, intermediate_size=8192)
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128)


def tokenizer():
    """SmolLM2's tokenizer from the installed GGUF (no hub access)."""
    from transformers import AutoTokenizer

    from pipeline.models.base_model import gguf_location

    gguf = gguf_location(BaseModelRecipe())
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def build_model(folder: Path, shape: dict, tok) -> int:
    """Random weights in the given shape, saved as safetensors; returns the parameter count."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), max_position_embeddings=4096, tie_word_embeddings=True,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **shape)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


def reset_peak() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def run_stage(model_dir: Path, train: Path, out: Path, recipe: TrainingRecipe) -> dict:
    from pipeline.training.monitoring import peak_memory_mb
    from pipeline.training.sft import train_sft

    reset_peak()
    result = train_sft(train, model_dir, out, recipe, lambda message, metrics: None)
    return {"tokens": result.tokens_seen, "seconds": result.train_runtime_s, "steps": result.global_step,
            "peak_memory_mb": peak_memory_mb()}


def run_baseline(model_dir: Path, train: Path, out: Path, recipe: TrainingRecipe) -> dict:
    """The plain recipe: chat template, pad to the longest in each batch, loss on every token, no packing."""
    import torch
    from datasets import Dataset
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForLanguageModeling, Trainer, TrainingArguments

    from pipeline.training.methods import peft_config
    from pipeline.training.monitoring import peak_memory_mb
    from pipeline.training.sft import _device_flags, load_prompt_completion

    reset_peak()
    tok = AutoTokenizer.from_pretrained(model_dir)
    texts = [tok.apply_chat_template(r["prompt"] + r["completion"], tokenize=False) for r in load_prompt_completion(train)]
    data = Dataset.from_dict({"text": texts}).map(
        lambda b: tok(b["text"], truncation=True, max_length=recipe.max_length), batched=True, remove_columns=["text"])
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if recipe.method != "full":
        model = get_peft_model(model, peft_config(recipe))
    args = TrainingArguments(output_dir=str(out), max_steps=recipe.max_steps, per_device_train_batch_size=recipe.batch_size,
                             learning_rate=recipe.learning_rate, lr_scheduler_type="cosine", logging_steps=10_000,
                             save_strategy="no", report_to=[], seed=recipe.seed, disable_tqdm=True,
                             include_num_input_tokens_seen="non_padding", dataloader_num_workers=0, **_device_flags())
    trainer = Trainer(model=model, args=args, train_dataset=data,
                      data_collator=DataCollatorForLanguageModeling(tok, mlm=False))
    started = time.monotonic()
    trainer.train()
    seconds = time.monotonic() - started
    return {"tokens": int(trainer.state.num_input_tokens_seen), "seconds": round(seconds, 2),
            "steps": trainer.state.global_step, "peak_memory_mb": peak_memory_mb()}


def mfu(run: dict, params: int, shape: dict, seq: int, method: str, peak_tflops: float) -> float:
    passes = 6 if method == "full" else 4
    flops_per_token = passes * params + passes * shape["num_hidden_layers"] * shape["hidden_size"] * seq
    return flops_per_token * run["tokens"] / run["seconds"] / (peak_tflops * 1e12) if run["seconds"] else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny config on CPU, to check the script in seconds")
    parser.add_argument("--method", choices=["lora", "full"], default="lora")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per way (default 60; 6 with --tiny)")
    parser.add_argument("--batch-size", type=int, default=None, help="rows per step (default 8; 2 with --tiny)")
    parser.add_argument("--max-length", type=int, default=None, help="tokens per row (default 1024; 256 with --tiny)")
    parser.add_argument("--train", type=Path, default=PROJECT_ROOT / "data/sample/chatml.jsonl")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="device peak dense bf16 TFLOP/s (H100 SXM: 989)")
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the results")
    args = parser.parse_args()

    shape = TINY if args.tiny else ONE_B
    steps = args.steps or (6 if args.tiny else 60)
    args.batch_size = args.batch_size or (2 if args.tiny else 8)
    args.max_length = args.max_length or (256 if args.tiny else 1024)
    recipe = TrainingRecipe(method=args.method, max_steps=steps, batch_size=args.batch_size, max_length=args.max_length,
                            packing=True, logging_steps=10_000, save_steps=10_000, merge_adapter=False,
                            lora={"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"})
    tok = tokenizer()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # canonical records: chatml lines that parse, as the curation stage would pass them on
        rows = []
        for line in args.train.read_text().splitlines():
            try:
                messages = json.loads(line)["messages"]
            except (ValueError, KeyError, TypeError):
                continue
            if isinstance(messages, list) and len(messages) >= 2:
                rows.append(json.dumps({"messages": messages}))
        train = tmp / "train.jsonl"
        train.write_text("\n".join(rows * 8) + "\n")  # repeated so every way runs all its steps
        params = build_model(tmp / "model", shape, tok)
        runs = {"stage (packing)": run_stage(tmp / "model", train, tmp / "stage", recipe),
                "baseline (pad to longest)": run_baseline(tmp / "model", train, tmp / "baseline", recipe.model_copy(update={"packing": False}))}

    for run in runs.values():
        run["tokens_per_s"] = round(run["tokens"] / run["seconds"], 1) if run["seconds"] else 0.0
        run["mfu"] = round(mfu(run, params, shape, args.max_length, args.method, args.peak_tflops), 4)
    stage, baseline = runs.values()
    report = {"model": {"params": params, **shape}, "method": args.method, "steps": steps, "batch_size": args.batch_size,
              "max_length": args.max_length, "device": _device_name(), "runs": runs,
              "speedup_tokens_per_s": round(stage["tokens_per_s"] / baseline["tokens_per_s"], 3) if baseline["tokens_per_s"] else None}
    print(f"{'':28}{'real tok/s':>12}{'peak MB':>10}{'MFU':>8}{'steps':>7}{'s':>8}")
    for name, run in runs.items():
        print(f"{name:28}{run['tokens_per_s']:>12.1f}{run['peak_memory_mb']:>10.0f}{run['mfu']:>8.2%}{run['steps']:>7}{run['seconds']:>8.1f}")
    print(f"stage / baseline tokens/s: {report['speedup_tokens_per_s']}x  ({params / 1e6:.1f}M params, {report['device']})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))


def _device_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


if __name__ == "__main__":
    main()
