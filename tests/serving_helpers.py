"""Helpers for the serving tests: tiny LoRA adapters and gated registry versions."""

from __future__ import annotations

from pathlib import Path

from pipeline.evaluation.gate import GATE_PASSED_TAG
from resources import ModelRegistry


def tiny_adapter(model_dir: Path, folder: Path, seed: int) -> Path:
    """A LoRA adapter with random (non-zero) weights, so each one answers differently from the base."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(folder)
    return folder


def gated_registry(store: Path, name: str, adapters: list[Path]) -> tuple[ModelRegistry, list[str]]:
    """A registry with one gated version per adapter (logged as run artifacts, like registry_entry does)."""
    registry = ModelRegistry(tracking_uri=f"sqlite:///{store}/mlflow.db", artifact_root=f"{store}/mlartifacts")
    client = registry.client()
    versions = []
    for adapter in adapters:
        run_id = client.create_run(registry.experiment_id("serving-test")).info.run_id
        versions.append(registry.register(name, run_id, adapter, {GATE_PASSED_TAG: "true"}, description="test"))
    return registry, versions
