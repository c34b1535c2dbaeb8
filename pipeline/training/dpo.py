"""DPO after SFT with TRL's DPOTrainer: the SFT model is both the starting point and the reference.

For an adapter, training continues the SFT adapter and TRL keeps a frozen copy of it as a second adapter
(`ref`) on the same base, so the reference costs adapter-sized memory, not a second copy of the weights.
For a fully fine-tuned model, TRL loads a frozen copy of the SFT model as the reference.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from pipeline.recipe import DpoRecipe, TrainingRecipe
from pipeline.training.monitoring import Reporter, peak_memory_mb, reporting_callback


def load_preferences(path: Path, exclude_groups: set[str] = frozenset()) -> list[dict[str, Any]]:
    """Preference pairs in TRL's conversational shape, without those whose `source` family is excluded
    (the held-out families, so evaluation never sees a prompt DPO trained on)."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            pair = json.loads(line)
            if pair.get("source") in exclude_groups:
                continue
            rows.append({"prompt": [{"role": "user", "content": pair["prompt"]}],
                         "chosen": [{"role": "assistant", "content": pair["chosen"]}],
                         "rejected": [{"role": "assistant", "content": pair["rejected"]}]})
    return rows


def _policy(base_path: Path, sft: dict[str, Any], training: TrainingRecipe):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from pipeline.training.methods import load_base

    if training.attn_implementation == "varlen":  # DPO batches are padded pairs, which varlen attention can't take
        training = training.model_copy(update={"attn_implementation": "sdpa"})
    if sft["adapter_path"]:
        return PeftModel.from_pretrained(load_base(base_path, training), sft["adapter_path"], is_trainable=True)
    return AutoModelForCausalLM.from_pretrained(sft["model_path"], dtype=torch.float32)


def save_trained_adapter(trainer: Any, target: Path) -> Path:
    """Save the trained adapter (`default`) without TRL's frozen reference copy (`ref`).

    Called on every rank: under ZeRO-3 or FSDP each rank holds a shard, and gathering the full state dict is a
    collective; rank 0 then writes the adapter's part of it as safetensors. Under DeepSpeed the gathering is the
    engine's (accelerate asks the engine, not the model inside it, for ZeRO-3's 16-bit weights)."""
    state = trainer.accelerator.get_state_dict(trainer.deepspeed if trainer.is_deepspeed_enabled else trainer.model)
    if trainer.is_world_process_zero():
        trainer.accelerator.unwrap_model(trainer.model).save_pretrained(
            target, state_dict=state, selected_adapters=["default"], safe_serialization=True)
    trainer.accelerator.wait_for_everyone()
    return target


def train_dpo(pairs: list[dict[str, Any]], base_path: Path, sft: dict[str, Any], output_dir: Path,
              training: TrainingRecipe, recipe: DpoRecipe, reporter: Reporter,
              checkpoint_uri: str | None = None) -> dict[str, Any]:
    """Train DPO from the SFT result `sft` (its adapter_path or model_path); save under `output_dir`."""
    from datasets import Dataset
    from transformers import AutoTokenizer, PrinterCallback, set_seed

    from pipeline.training.process_start import resume_collector
    from pipeline.training.trl_import import import_trl

    import_trl()
    from trl import DPOConfig, DPOTrainer

    from pipeline.models.base_model import file_sha256, weights_sha256
    from pipeline.training.checkpoint_mirror import mirror_callback, resume_point
    from pipeline.training.checkpoints import marker_callback, no_final_checkpoint_callback
    from pipeline.training.distributed import (gather_blocks_whole, save_final_weights_whole, terse_parameter_repr,
                                               trainer_args)
    from pipeline.training.methods import check_method_runs_here
    from pipeline.training.sft import device_flags, merge_adapter, save_full_model

    check_method_runs_here(training)
    set_seed(training.seed)
    tokenizer = AutoTokenizer.from_pretrained(sft["adapter_path"] or sft["model_path"])
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    checkpoint_dir = output_dir / "checkpoints"
    config = DPOConfig(
        output_dir=str(checkpoint_dir),
        beta=recipe.beta,
        learning_rate=recipe.learning_rate,
        max_steps=recipe.max_steps,
        per_device_train_batch_size=recipe.batch_size,
        max_length=recipe.max_length,
        logging_steps=recipe.logging_steps,
        lr_scheduler_type="cosine",
        save_strategy="steps",
        save_steps=training.save_steps,
        save_total_limit=training.save_total_limit,
        report_to=[],
        seed=training.seed,
        data_seed=training.seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
        logging_nan_inf_filter=False,
        optim=training.optimizer,
        **device_flags(training),
        **trainer_args(training.distributed),
    )
    # after the config, so that under ZeRO-3 the policy loads partitioned (see train_sft)
    model = _policy(base_path, sft, training)
    trainer = DPOTrainer(model=model, args=config, train_dataset=Dataset.from_list(pairs), processing_class=tokenizer,
                         callbacks=[reporting_callback(reporter), no_final_checkpoint_callback(), marker_callback()]
                         + ([mirror_callback(checkpoint_uri)] if checkpoint_uri else []))
    trainer.remove_callback(PrinterCallback)
    gather_blocks_whole(trainer.model, training.distributed)
    resume_collector()  # set-up is done: its objects are frozen, out of the collector's passes
    resume = resume_point(checkpoint_dir, checkpoint_uri, reporter, trainer.args)
    started = time.monotonic()
    with terse_parameter_repr(training.distributed):
        output = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    runtime = time.monotonic() - started
    save_final_weights_whole(trainer)

    adapter_dir = model_dir = None
    if sft["adapter_path"]:
        adapter_dir = save_trained_adapter(trainer, output_dir / "adapter")
    else:
        model_dir = output_dir / "model"
        save_full_model(trainer, model_dir, training)  # every rank: sharded weights are gathered, rank 0 writes
    if not trainer.is_world_process_zero():  # other ranks are done; rank 0 reports
        return {}
    tokenizer.save_pretrained(adapter_dir or model_dir)
    if adapter_dir and training.merge_adapter:
        model_dir = merge_adapter(base_path, adapter_dir, output_dir / "merged")
    adapter_sha = file_sha256(adapter_dir / "adapter_model.safetensors") if adapter_dir else None
    model_sha = weights_sha256(model_dir) if model_dir else None
    return {
        "method": sft["method"],
        "adapter_path": str(adapter_dir) if adapter_dir else None,
        "adapter_sha256": adapter_sha,
        "model_path": str(model_dir) if model_dir else None,
        "model_sha256": model_sha,
        "weights_sha256": adapter_sha or model_sha,
        "global_step": trainer.state.global_step,
        "resumed_from": resume.name if resume else None,
        "train_loss": float(output.training_loss),
        "train_runtime_s": round(runtime, 2),
        "train_examples": len(pairs),
        "tokens_seen": int(trainer.state.num_input_tokens_seen),
        "peak_memory_mb": round(peak_memory_mb(), 1),
        "log_history": [h for h in trainer.state.log_history if "loss" in h or "train_loss" in h],
    }
