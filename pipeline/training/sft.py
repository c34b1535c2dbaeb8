"""Supervised fine-tuning with TRL's SFTTrainer (LoRA, QLoRA or full), loss on the final assistant turn, with
resumable checkpoints and an optional merged model."""

from __future__ import annotations

import importlib.util
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.recipe import TrainingRecipe
from pipeline.training.checkpoint_mirror import mirror_callback, resume_point
from pipeline.training.distributed import (gather_blocks_whole, save_final_weights_whole, terse_parameter_repr,
                                           trainer_args, whole_model_loading)
from pipeline.training.checkpoints import marker_callback, no_final_checkpoint_callback
from pipeline.training.chat_tokens import TokenizedRows, tokenize_prompt_completion
from pipeline.training.compile_plan import plan_compile
from pipeline.training.compile_cache import compile_seconds
from pipeline.training.cuda_graphs import ROW_MULTIPLE, GraphStepBoundary, fixed_shape_collator
from pipeline.training.graph_recording import speed_up_graph_recording
from pipeline.training.methods import check_method_runs_here, load_base, peft_config
from pipeline.training.monitoring import Reporter, early_stopping_callback, peak_memory_mb, reporting_callback


@dataclass
class TrainingResult:
    method: str
    adapter_path: str | None  # LoRA/QLoRA: the adapter folder; None for full fine-tuning
    adapter_sha256: str | None
    model_path: str | None  # full fine-tuning: the model; LoRA: the merged model when merge_adapter is on
    model_sha256: str | None
    weights_sha256: str  # of what evaluation and serving load first: the adapter, or the full model
    global_step: int
    resumed_from: str | None
    train_loss: float | None
    train_runtime_s: float
    train_examples: int
    tokens_seen: int
    peak_memory_mb: float
    log_history: list[dict[str, Any]] = field(default_factory=list)
    # seconds per phase (load, prepare: tokenisation, compile, train, save) and the compile decision
    phases: dict[str, Any] = field(default_factory=dict)

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


def _on_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def device_flags(recipe: TrainingRecipe, compiling: bool | None = None) -> dict[str, Any]:
    """Trainer precision and kernel flags; `compiling` is the run's compile decision (default: torch_compile true)."""
    import torch

    compiling = recipe.torch_compile is True if compiling is None else compiling
    if torch.cuda.is_available():
        # Under compilation the blocks fuse norms, RoPE and SwiGLU themselves (Liger's Triton kernels inside them
        # break the compiler's trace), and TRL fuses the LM head with the loss either way.
        liger = recipe.liger_kernels and not compiling and importlib.util.find_spec("liger_kernel") is not None
        return {"bf16": torch.cuda.is_bf16_supported(), "fp16": not torch.cuda.is_bf16_supported(),
                "use_liger_kernel": liger}
    # bf16 autocast is ~1.5x faster on CPUs with native bf16 (AVX512-BF16, AMX) and slower elsewhere.
    return {"bf16": cpu_has_bf16(), "fp16": False, "use_cpu": True}


def compile_repeated_blocks(model: Any, backend: Any = "inductor", cuda_graphs: bool = False,
                            activation_memory_budget: float = 1.0) -> int:
    """Compile each repeated block (the decoder layers) in place, with dynamic shapes; returns how many.

    Short-sequence steps on a GPU are bound by eager mode's per-op launch cost (LoRA adds five small ops to every
    linear layer); a compiled block runs as a few fused kernels. One graph serves every layer and, being dynamic,
    every row length, so the compile is paid once (regional compilation, as accelerate's `compile_regions`).
    With `cuda_graphs` the kernels are also recorded as CUDA graphs per row length (`pipeline.training.cuda_graphs`).
    Below 1, `activation_memory_budget` is the share of the blocks' activations kept for the backward pass; the
    partitioner recomputes the rest at the least cost it can find."""
    import torch
    from accelerate.utils.other import is_repeated_blocks

    blocks = next((m for m in model.modules() if is_repeated_blocks(m)), None)
    if blocks is None:
        return 0
    embeddings = model.get_input_embeddings()
    if embeddings is not None and not embeddings.weight.requires_grad:
        # A frozen embedding (LoRA) hands the first block an input without grad, every other block one with grad:
        # two graphs to trace, compile and record. With its output requiring grad, one graph serves every block,
        # for one more input-gradient matmul chain in the first block's backward.
        model.enable_input_require_grads()
    # Python floats (LoRA's and attention's scaling) become constants, not 0-d float64 CPU inputs converted by a C++
    # kernel: that one CPU kernel made Inductor probe the CPU's vector ISA, 48 s on the H200 machine, every process
    torch._dynamo.config.specialize_float = True
    # read when each block's graph is split into forward and backward, so it must be set before the first step
    import torch._functorch.config

    torch._functorch.config.activation_memory_budget = activation_memory_budget
    for block in blocks:
        # Dynamo checks ~150-300 us of guards on the block's modules before every call, host time a short-row
        # step waits for 16 times. The blocks' attributes do not change while training; train and eval calls
        # still get graphs of their own, told apart by the grad mode guard, which is kept.
        options = {"guard_filter_fn": torch.compiler.skip_guard_on_all_nn_modules_unsafe}
        if cuda_graphs:
            options["triton.cudagraphs"] = True  # what mode="reduce-overhead" sets; a mode excludes options
        block.compile(dynamic=True, backend=backend, options=options)
    return len(blocks)


def loader_flags(recipe: TrainingRecipe) -> dict[str, Any]:
    """On a GPU the next batch is collated in a worker process while the GPU trains on this one, and copied to the
    GPU without waiting. Collated in the training process (~7 ms for 16 chat examples on the H200 host), it left the
    GPU idle at the start of every step, and each blocking copy of its five tensors waited for the GPU to drain.
    Runs across several processes keep loading in the training process: the worker was measured on one GPU only."""
    import os

    if not _on_gpu() or recipe.distributed != "none" or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return {"dataloader_num_workers": 0}
    return {"dataloader_num_workers": 1, "dataloader_persistent_workers": True, "dataloader_pin_memory": True,
            "accelerator_config": {"non_blocking": True}}


def cuda_graphs_apply(recipe: TrainingRecipe, compiling: bool, reporter: Reporter) -> bool:
    """Whether this run replays its compiled blocks as CUDA graphs: wanted by the recipe, compiled, on a CUDA GPU."""
    if not recipe.wants_cuda_graphs:
        return False
    if not compiling or not _on_gpu():
        if recipe.cuda_graphs is True:
            reporter(f"cuda_graphs off: {'the blocks are not compiled' if _on_gpu() else 'there is no CUDA GPU'}", {})
        return False
    return True


def row_multiple(recipe: TrainingRecipe, cuda_graphs: bool) -> int | None:
    """Padding-free and packed rows on a GPU are padded to a multiple of this many tokens, so rows take a few
    lengths instead of a new one every step: cuDNN attention builds a plan per new shape (~5 ms per layer call), a
    compiled graph specialises on it and CUDA graphs record one per length (hence their coarser multiple)."""
    if not _on_gpu() or not (recipe.padding_free or recipe.packing):
        return None
    return ROW_MULTIPLE if cuda_graphs else 64


def tokenize_rows(rows: list[dict[str, Any]], tokenizer: Any, reporter: Reporter) -> TokenizedRows:
    tokens = tokenize_prompt_completion(rows, tokenizer)
    if tokens.prompt_boundary_shifted:  # TRL warns once; an engineer wants the count
        reporter(f"{tokens.prompt_boundary_shifted} of {len(tokens)} examples: the prompt tokenised alone is not a "
                 "prefix of the whole conversation tokenised; their completion starts where the two diverge", {})
    return tokens


def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _unpacked_padding_free(recipe: TrainingRecipe) -> bool:
    return recipe.padding_free and not recipe.packing


def check_lengths(lengths: list[int], max_length: int) -> None:
    """Padding-free batches keep every token, so an overlong example is an error to fix upstream, not a silent cut."""
    too_long = sum(n > max_length for n in lengths)
    if too_long:
        raise ValueError(f"{too_long} of {len(lengths)} training examples are longer than training.max_length="
                         f"{max_length} tokens (longest {max(lengths)}); padding-free training does not truncate. "
                         "Lower data.quality.max_tokens or raise training.max_length.")


def save_full_model(trainer: Any, model_dir: Path, recipe: TrainingRecipe) -> None:
    """Whole weights as safetensors shards of at most SHARD_SIZE (hashed in parallel for lineage). Sharded runs
    (ZeRO, FSDP) go through the Trainer, which gathers the weights and writes on rank 0."""
    from pipeline.models.base_model import SHARD_SIZE

    if recipe.distributed != "none":
        trainer.save_model(str(model_dir))
    elif trainer.is_world_process_zero():
        trainer.model.save_pretrained(model_dir, safe_serialization=True, max_shard_size=SHARD_SIZE)


def merge_adapter(base_path: Path, adapter_dir: Path, target: Path) -> Path:
    """Fold the adapter into a full-precision copy of the base and save it as safetensors, for servers without adapters."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.models.base_model import SHARD_SIZE

    # a fresh full-precision base, so a QLoRA adapter is merged into real weights, not 4-bit ones
    with whole_model_loading():
        base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
        merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(target, safe_serialization=True, max_shard_size=SHARD_SIZE)
    AutoTokenizer.from_pretrained(adapter_dir).save_pretrained(target)
    return target


def train_sft(train_path: Path, base_path: Path, output_dir: Path, recipe: TrainingRecipe, reporter: Reporter,
              checkpoint_uri: str | None = None, extra_callbacks: list | None = None,
              compile_cache_uri: str | None = None) -> TrainingResult | None:
    """Fine-tune on `train_path` (canonical JSONL) with the recipe's method; resume from the latest complete
    checkpoint under `output_dir/checkpoints` (or mirrored at `checkpoint_uri`, s3://) when a previous attempt
    left one. `extra_callbacks` are more Trainer callbacks (a profiler, say). Compiled blocks load and store their
    kernels under `compile_cache_uri` (s3:// or a folder). Returns None on ranks other than 0."""
    phase_start = time.monotonic()  # the load phase counts these imports too
    from datasets import Dataset
    from transformers import AutoTokenizer, PrinterCallback, set_seed

    from pipeline.training.process_start import resume_collector
    from pipeline.training.trl_import import import_trl

    import_trl()
    from trl import SFTConfig, SFTTrainer

    from pipeline.models.base_model import file_sha256, weights_sha256
    from pipeline.training.trainer_mixins import CachedFlopCount, DeferredSftMetrics, LeanStepHost

    check_method_runs_here(recipe)
    set_seed(recipe.seed)
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    rows = load_prompt_completion(train_path)
    # the eval slice is the tail of the (already shuffled) train split, so it is the same on every attempt
    eval_rows = rows[-recipe.eval_examples:] if recipe.eval_examples else []
    tokenize_started = time.monotonic()
    train_tokens = tokenize_rows(rows[: len(rows) - len(eval_rows)], tokenizer, reporter)
    eval_tokens = tokenize_rows(eval_rows, tokenizer, reporter) if eval_rows else None
    tokenize_s = time.monotonic() - tokenize_started
    lengths = train_tokens.lengths
    if _unpacked_padding_free(recipe):
        check_lengths(lengths, recipe.max_length)
    compiling = plan_compile(base_path, recipe, lengths, compile_cache_uri, reporter)
    graphs = cuda_graphs_apply(recipe, compiling.decision.compile, reporter)

    checkpoint_dir = output_dir / "checkpoints"
    config = SFTConfig(
        output_dir=str(checkpoint_dir),
        num_train_epochs=recipe.epochs,
        max_steps=max(recipe.max_steps, 1) if recipe.max_steps >= 0 else -1,
        learning_rate=recipe.learning_rate,
        lr_scheduler_type=recipe.lr_scheduler,
        warmup_steps=recipe.warmup_ratio,  # transformers 5 reads a value below 1 as a ratio
        per_device_train_batch_size=recipe.batch_size,
        per_device_eval_batch_size=recipe.batch_size,
        gradient_accumulation_steps=recipe.gradient_accumulation_steps,
        gradient_checkpointing=recipe.gradient_checkpointing,
        # padding-free batches are not cut by TRL; their lengths are checked after tokenisation instead
        max_length=None if _unpacked_padding_free(recipe) else recipe.max_length,
        completion_only_loss=True,
        packing=recipe.packing,  # best-fit packing; transformers keeps attention inside each example via position_ids
        padding_free=recipe.padding_free,
        pad_to_multiple_of=row_multiple(recipe, graphs),
        logging_steps=recipe.logging_steps,
        save_strategy="steps",
        save_steps=recipe.save_steps,
        save_total_limit=recipe.save_total_limit,
        eval_strategy="steps" if eval_tokens else "no",
        eval_steps=recipe.eval_steps,
        report_to=[],
        seed=recipe.seed,
        data_seed=recipe.seed,
        include_num_input_tokens_seen="non_padding",  # counted exactly, see trainer_mixins.real_token_count
        logging_nan_inf_filter=False,  # a NaN loss is reported as NaN (the filter also costs a host sync per step)
        optim=recipe.optimizer,
        **loader_flags(recipe),
        disable_tqdm=True,
        **device_flags(recipe, compiling.decision.compile),
        **trainer_args(recipe.distributed),
    )
    # after the config: under ZeRO-3 the config makes from_pretrained load each weight partitioned across the ranks
    # (zero.Init), instead of whole on every rank and repartitioned when DeepSpeed starts
    model = load_base(base_path, recipe)
    phases = {"load_s": time.monotonic() - phase_start - tokenize_s, "tokenize_s": tokenize_s}
    phase_start = time.monotonic()
    # the marker first: the mirror uploads marked ones
    callbacks = [reporting_callback(reporter), no_final_checkpoint_callback(), marker_callback()]
    if checkpoint_uri:
        callbacks.append(mirror_callback(checkpoint_uri))
    if eval_tokens and recipe.early_stopping_patience:
        callbacks.append(early_stopping_callback(recipe.early_stopping_patience))
    callbacks += extra_callbacks or []
    mixins = ((GraphStepBoundary,) if graphs else ()) + (LeanStepHost, CachedFlopCount, DeferredSftMetrics)
    trainer_class = type("PipelineSFTTrainer", (*mixins, SFTTrainer), {})
    # already tokenised: the trainer skips its own preparation
    trainer = trainer_class(model=model, args=config, train_dataset=Dataset.from_dict(train_tokens.columns()),
                            eval_dataset=Dataset.from_dict(eval_tokens.columns()) if eval_tokens else None,
                            processing_class=tokenizer, peft_config=peft_config(recipe), callbacks=callbacks)
    trainer.remove_callback(PrinterCallback)  # progress goes through the reporter, not raw dicts on stdout
    gather_blocks_whole(trainer.model, recipe.distributed)
    compiling.restore(reporter)
    if graphs:
        trainer.data_collator = fixed_shape_collator(trainer.data_collator)
    if compiling.decision.compile:
        if graphs:
            reporter(speed_up_graph_recording(), {})
        blocks = compile_repeated_blocks(trainer.model, cuda_graphs=graphs,
                                         activation_memory_budget=recipe.activation_memory_budget)
        replayed = ", replayed as CUDA graphs per row length" if graphs else ""
        budget = recipe.activation_memory_budget
        kept = f", keeping {budget:.0%} of their activations" if budget < 1 else ""
        reporter(f"compiled {blocks} repeated blocks (dynamic shapes{replayed}{kept})", {})
    phases["prepare_s"] = time.monotonic() - phase_start  # the trainer's set-up, the compile cache restored
    compiled_before = compile_seconds()
    resume_collector()  # set-up is done: its objects are frozen, out of the collector's passes

    resume = resume_point(checkpoint_dir, checkpoint_uri, reporter, trainer.args)
    started = time.monotonic()
    train_loss = None
    if recipe.max_steps != 0:  # zero steps: save the untouched adapter (B = 0), identical to the base
        with terse_parameter_repr(recipe.distributed):
            output = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        train_loss = float(output.training_loss)
    runtime = time.monotonic() - started
    phases["compile_s"] = compile_seconds() - compiled_before  # compiles happen lazily, inside the first steps
    phases["train_s"] = runtime - phases["compile_s"]
    if trainer.is_world_process_zero():
        phases.update(compiling.persist(reporter))
    phase_start = time.monotonic()
    save_final_weights_whole(trainer)  # checkpoints were sharded; what we hand on is whole

    adapter_dir = model_dir = None
    if recipe.method == "full":
        model_dir = output_dir / "model"
        save_full_model(trainer, model_dir, recipe)
        tokenizer.save_pretrained(model_dir)
        reporter(f"saved full model to {model_dir}", {})
    else:
        adapter_dir = output_dir / "adapter"
        trainer.save_model(str(adapter_dir))  # the Trainer gathers sharded (ZeRO-3/FSDP) weights and writes on rank 0
        tokenizer.save_pretrained(adapter_dir)
        reporter(f"saved adapter to {adapter_dir}", {})
        if recipe.merge_adapter and trainer.is_world_process_zero():
            model_dir = merge_adapter(base_path, adapter_dir, output_dir / "merged")
            reporter(f"saved merged model to {model_dir}", {})
    phases["save_s"] = time.monotonic() - phase_start
    if not trainer.is_world_process_zero():  # other ranks are done; rank 0 hashes and reports
        return None
    phase_start = time.monotonic()
    adapter_sha = file_sha256(adapter_dir / "adapter_model.safetensors") if adapter_dir else None
    model_sha = weights_sha256(model_dir) if model_dir else None
    phases["hash_s"] = time.monotonic() - phase_start  # lineage: seconds for a full model's weights
    return TrainingResult(
        method=recipe.method,
        adapter_path=str(adapter_dir) if adapter_dir else None,
        adapter_sha256=adapter_sha,
        model_path=str(model_dir) if model_dir else None,
        model_sha256=model_sha,
        weights_sha256=adapter_sha or model_sha,
        global_step=trainer.state.global_step,
        resumed_from=resume.name if resume else None,
        train_loss=train_loss,
        train_runtime_s=round(runtime, 2),
        train_examples=len(train_tokens),
        tokens_seen=int(trainer.state.num_input_tokens_seen),
        peak_memory_mb=round(peak_memory_mb(), 1),
        log_history=[h for h in trainer.state.log_history if "loss" in h or "eval_loss" in h or "train_loss" in h],
        phases={**{k: round(v, 2) for k, v in phases.items()}, **compiling.summary(), "cuda_graphs": graphs},
    )
