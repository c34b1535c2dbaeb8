"""The fine-tuning methods: how the base is loaded and what is trained, for `lora`, `qlora` and `full`."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from pipeline.recipe import TrainingRecipe


class MethodUnavailable(RuntimeError):
    """The recipe asks for a method this machine cannot run; raised before any model is loaded."""


def check_method_runs_here(recipe: TrainingRecipe) -> None:
    """Fail fast, with the reason, when the method or attention kernel needs hardware or packages this machine lacks."""
    if recipe.attn_implementation == "varlen":
        from pipeline.training.attention import varlen_available

        if reason := varlen_available():
            raise MethodUnavailable(reason)
    import torch

    gpu = torch.cuda.is_available()
    if recipe.method == "qlora" and not gpu:
        raise MethodUnavailable(
            "method qlora needs a CUDA GPU: its 4-bit NF4 weights run on bitsandbytes' CUDA kernels, and this "
            "machine has none. Use `method: lora` (same adapter, full-precision base) or run on a GPU.")
    if recipe.optimizer.endswith("8bit") and not gpu:
        raise MethodUnavailable(f"optimizer {recipe.optimizer} needs a CUDA GPU (bitsandbytes' 8-bit states); "
                                "use `adamw_torch_fused` here.")
    if (recipe.method == "qlora" or recipe.optimizer.endswith("8bit")) and importlib.util.find_spec("bitsandbytes") is None:
        raise MethodUnavailable("method qlora and the 8-bit optimizers need the `bitsandbytes` package; install it "
                                "(`pip install bitsandbytes`).")
    if recipe.distributed != "none":
        _check_sharding_runs_here(recipe.distributed, gpu)


def _check_sharding_runs_here(distributed: str, gpu: bool) -> None:
    # accelerate honours FSDP and DeepSpeed only on GPUs under a distributed launcher; elsewhere it would
    # silently train unsharded, with a different memory footprint than the recipe promises
    if not gpu:
        raise MethodUnavailable(f"training.distributed {distributed} shards over CUDA GPUs and this machine has none; "
                                "use `distributed: none` on CPU.")
    if "LOCAL_RANK" not in os.environ:
        raise MethodUnavailable(f"training.distributed {distributed} needs a distributed launcher (torchrun, one "
                                "process per GPU); the training launcher starts one whenever the recipe shards.")
    if distributed.startswith("zero") and importlib.util.find_spec("deepspeed") is None:
        raise MethodUnavailable(f"training.distributed {distributed} needs the `deepspeed` package; install it "
                                "(`pip install deepspeed`).")


def peft_config(recipe: TrainingRecipe):
    """The LoRA (or DoRA) adapter config; None for full fine-tuning."""
    if recipe.method == "full":
        return None
    from peft import LoraConfig

    return LoraConfig(r=recipe.lora.r, lora_alpha=recipe.lora.alpha, lora_dropout=recipe.lora.dropout,
                      target_modules=recipe.lora.target_modules, use_dora=recipe.lora.use_dora, task_type="CAUSAL_LM")


def load_base(base_path: Path, recipe: TrainingRecipe) -> Any:
    """The base model as the method trains it: fp32 master weights, or 4-bit NF4 with double quantization."""
    import torch
    from transformers import AutoModelForCausalLM

    attention = {"attn_implementation": recipe.attn_implementation}
    if recipe.attn_implementation == "varlen":
        from pipeline.training.attention import register_varlen_attention

        register_varlen_attention()
    if recipe.method == "full":
        # fp32 master weights; bf16 autocast (when the device has it) is the Trainer's job
        return AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32, **attention)
    if recipe.method == "lora":
        # A frozen LoRA base needs no fp32 master copy: on a bf16 GPU, bf16 halves its memory and the casts.
        frozen_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.bfloat16 if frozen_bf16 else torch.float32, **attention)
    from peft import prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig

    compute = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                      bnb_4bit_compute_dtype=compute)
    model = AutoModelForCausalLM.from_pretrained(base_path, quantization_config=quantization, dtype=compute, **attention)
    # casts norms to fp32 and enables input grads, so LoRA trains stably over frozen 4-bit weights
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=recipe.gradient_checkpointing)
