"""Supervised fine-tuning with TRL's SFTTrainer and a PEFT LoRA adapter, loss on the final assistant turn."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.recipe import TrainingRecipe

Reporter = Callable[[str, dict[str, Any]], None]
"""Called as reporter(message, metrics) at every logging step: the door to Dagster Pipes and MLflow."""


@dataclass
class TrainingResult:
    adapter_path: str
    adapter_sha256: str
    global_step: int
    train_loss: float | None
    train_runtime_s: float
    train_examples: int
    tokens_seen: int
    log_history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def load_prompt_completion(path: Path) -> list[dict[str, Any]]:
    """Canonical records to TRL's conversational prompt/completion shape, so loss covers only the answer."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            messages = json.loads(line)["messages"]
            rows.append({"prompt": messages[:-1], "completion": messages[-1:]})
    return rows


def _device_flags() -> dict[str, Any]:
    import torch

    if torch.cuda.is_available():
        return {"bf16": torch.cuda.is_bf16_supported(), "fp16": not torch.cuda.is_bf16_supported()}
    # bf16 autocast is ~1.5x faster on CPUs with native bf16 (AVX512-BF16, AMX) and slower elsewhere.
    return {"bf16": cpu_has_bf16(), "fp16": False, "use_cpu": True}


def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _reporting_callback(reporter: Reporter):
    from transformers import TrainerCallback

    class ReportingCallback(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            metrics = {k: float(v) for k, v in (logs or {}).items() if isinstance(v, (int, float)) and math.isfinite(v)}
            metrics["num_input_tokens_seen"] = float(state.num_input_tokens_seen)
            reporter(f"step {state.global_step}/{state.max_steps} " + " ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items())),
                     {**metrics, "step": state.global_step})

    return ReportingCallback()


def train_sft(train_path: Path, base_path: Path, output_dir: Path, recipe: TrainingRecipe, reporter: Reporter) -> TrainingResult:
    """Train a LoRA adapter on `train_path` (canonical JSONL) over the base in `base_path`; save it under `output_dir/adapter`."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback, set_seed
    from trl import SFTConfig, SFTTrainer

    from pipeline.models.base_model import file_sha256

    set_seed(recipe.seed)
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # A frozen LoRA base needs no fp32 master copy: bf16 halves its memory and the casts on GPU.
    frozen_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.bfloat16 if frozen_bf16 else torch.float32,
                                                 attn_implementation=recipe.attn_implementation)
    rows = load_prompt_completion(train_path)
    dataset = Dataset.from_list(rows)

    config = SFTConfig(
        output_dir=str(output_dir / "trainer"),
        num_train_epochs=recipe.epochs,
        max_steps=max(recipe.max_steps, 1) if recipe.max_steps >= 0 else -1,
        learning_rate=recipe.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=recipe.warmup_ratio,  # transformers 5 reads a value below 1 as a ratio
        per_device_train_batch_size=recipe.batch_size,
        gradient_accumulation_steps=recipe.gradient_accumulation_steps,
        gradient_checkpointing=recipe.gradient_checkpointing,
        max_length=recipe.max_length,
        completion_only_loss=True,
        packing=recipe.packing,  # best-fit packing; transformers keeps attention inside each example via position_ids
        logging_steps=recipe.logging_steps,
        save_strategy="no",
        report_to=[],
        seed=recipe.seed,
        data_seed=recipe.seed,
        include_num_input_tokens_seen="non_padding",
        dataloader_num_workers=0,
        disable_tqdm=True,
        **_device_flags(),
    )
    peft_config = LoraConfig(
        r=recipe.lora.r,
        lora_alpha=recipe.lora.alpha,
        lora_dropout=recipe.lora.dropout,
        target_modules=recipe.lora.target_modules,
        task_type="CAUSAL_LM",
    )
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=peft_config, callbacks=[_reporting_callback(reporter)])

    trainer.remove_callback(PrinterCallback)  # progress goes through the reporter, not raw dicts on stdout
    started = time.monotonic()
    train_loss = None
    if recipe.max_steps != 0:  # zero steps: save the untouched adapter (B = 0), identical to the base
        output = trainer.train()
        train_loss = float(output.training_loss)
    runtime = time.monotonic() - started

    adapter_dir = output_dir / "adapter"
    trainer.model.save_pretrained(adapter_dir, safe_serialization=True)
    tokenizer.save_pretrained(adapter_dir)
    reporter(f"saved adapter to {adapter_dir}", {})
    return TrainingResult(
        adapter_path=str(adapter_dir),
        adapter_sha256=file_sha256(adapter_dir / "adapter_model.safetensors"),
        global_step=trainer.state.global_step,
        train_loss=train_loss,
        train_runtime_s=round(runtime, 2),
        train_examples=len(rows),
        tokens_seen=int(trainer.state.num_input_tokens_seen),
        log_history=[h for h in trainer.state.log_history if "loss" in h or "train_loss" in h],
    )
