"""Trainer mixins that keep the host ahead of the GPU: nothing here reads a GPU value inside a step.

A short-row step (16 chat examples, ~2,300 tokens) is tens of milliseconds of GPU work. Each `.item()` in the
step makes the host wait for the GPU to drain before it can queue the next kernels, so the two never overlap.
The Trainer and TRL 1.16 read five such values every step (token counts, entropy, token accuracy); these
mixins keep them on the device and read them once per logging step instead. The logged values are the same.
"""

from __future__ import annotations

from typing import Any

import torch


class CachedFlopCount:
    """The FLOP count in the logs uses a parameter count taken once. The Trainer recounts every step by walking
    the whole module tree, milliseconds of host time per step for a LoRA-wrapped 1B model."""

    def floating_point_ops(self, inputs: dict[str, Any]) -> int:
        if not hasattr(self, "_flop_params"):
            self._flop_params = parameter_count_without_embeddings(self.model)
        main_input = getattr(self.model, "main_input_name", "input_ids")
        return 6 * inputs[main_input].numel() * self._flop_params if main_input in inputs else 0


def parameter_count_without_embeddings(model: torch.nn.Module) -> int:
    """What `num_parameters(exclude_embeddings=True)` counts, with each weight counted whole where ZeRO-3 keeps
    only this rank's slice of it (`ds_numel`); otherwise the FLOPs, and so MFU, count the LoRA weights alone."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    return sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters() if id(p) not in embeddings)


def real_token_count(inputs: dict[str, Any]):
    """Non-padding tokens of a batch, as a device tensor (no host sync).

    Padded batches carry an attention mask. Padding-free and packed rows carry position ids instead, and are
    padded only at the end of the row (position 0, label -100): that trailing run is the padding. Counting pad
    ids instead, as the Trainer does, misses every real `<|im_end|>` where the pad token is the end-of-turn token.
    """
    if "attention_mask" in inputs:
        return inputs["attention_mask"].sum()
    ids = inputs["input_ids"]
    if "position_ids" not in inputs or "labels" not in inputs:
        return torch.tensor(ids.numel(), device=ids.device)
    padding = (inputs["position_ids"] == 0) & (inputs["labels"] == -100)
    trailing = padding.flip(-1).long().cumprod(-1).sum()
    return ids.numel() - trailing


class DeferredTokenCount:
    """`num_input_tokens_seen` counts real tokens on the device and is read only when the Trainer logs, saves,
    evaluates or stops (one gather across ranks then, instead of one every step)."""

    _pending_tokens = None

    def _track_num_input_tokens(self, inputs: dict[str, Any]) -> None:
        if self.args.include_num_input_tokens_seen == "no":
            return
        count = real_token_count(inputs)
        self._pending_tokens = count if self._pending_tokens is None else self._pending_tokens + count

    def _flush_token_count(self) -> None:
        if self._pending_tokens is not None:
            pending = self._pending_tokens.reshape(1).to(self.args.device, dtype=torch.int64)
            self.state.num_input_tokens_seen += int(self.accelerator.gather(pending).sum().item())
            self._pending_tokens = None

    def _maybe_log_save_evaluate(self, *args, **kwargs):
        control = self.control
        if control.should_log or control.should_save or control.should_evaluate or control.should_training_stop:
            self._flush_token_count()
        return super()._maybe_log_save_evaluate(*args, **kwargs)


class DeferredSftMetrics(DeferredTokenCount):
    """For TRL's SFTTrainer: the training loss is TRL's (fused LM head, tokens of the completion only), but its
    per-step entropy and token-accuracy sums stay on the device until the logging step. Anything but the plain
    training loss (eval, label smoothing, DFT, a custom loss, MoE aux loss, sequence parallelism) is TRL's own path."""

    def _plain_training_loss(self, model: Any, return_outputs: bool) -> bool:
        parallelism = getattr(self.accelerator, "parallelism_config", None)
        return (model.training and not return_outputs and self.compute_loss_func is None
                and self.label_smoother is None and self.args.loss_type == "nll" and not self.aux_loss_enabled
                and not (parallelism is not None and getattr(parallelism, "sp_enabled", False)))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not self._plain_training_loss(model, return_outputs):
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        inputs["use_cache"] = False
        outputs = model(**inputs, fused_lm_head=True)
        label_tokens = outputs.label_mask.sum()
        num_tokens = label_tokens if num_items_in_batch is None else num_items_in_batch
        loss = -outputs.log_probs.sum() / torch.as_tensor(num_tokens).clamp(min=1)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())  # DDP averages across ranks
        sums = torch.stack([label_tokens.float(), outputs.entropy.detach().sum().float(), outputs.is_top1.sum().float()])
        self.__dict__.setdefault("_pending_metrics", []).append(sums)
        return loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        pending = self.__dict__.pop("_pending_metrics", None)
        if pending and self.model.training:
            # (ranks x steps x 3) -> per-step sums over ranks, read in one transfer
            local = torch.stack(pending)
            ranks = self.accelerator.gather(local.unsqueeze(0).contiguous())
            for valid, entropy, correct in ranks.reshape(-1, *local.shape).sum(0).tolist():
                self._metrics["train"]["entropy"].append(entropy / valid if valid > 0 else 0.0)
                self._metrics["train"]["mean_token_accuracy"].append(correct / valid if valid > 0 else 0.0)
            self._metrics["train"]["num_tokens"] = [self.state.num_input_tokens_seen]
        super().log(logs, start_time)


class LeanStepHost:
    """Per-step host work that walks the module tree is done from a cached list of the trainable parameters.

    Every step the Trainer calls `model.train()`, `model.zero_grad()` and clips `model.parameters()`, each a
    recursion over the ~4,000 modules of a LoRA-wrapped 1B model: ~60 ms of host time per step measured on an
    H100 machine, more than the step's GPU work. Frozen weights have no gradients, so zeroing and clipping only
    the trainable ones is the same operation; `train()` recurses only when the mode changes (evaluation)."""

    def _trainable_parameters(self) -> list:
        if "_trainable" not in self.__dict__:
            self._trainable = [p for p in self.model.parameters() if p.requires_grad]
        return self._trainable

    def _sharded(self) -> bool:
        return self.is_deepspeed_enabled or self.is_fsdp_enabled

    def _clip_grad_norm(self, model):
        if self._sharded() or self._has_mixed_mesh_grads(model):
            return super()._clip_grad_norm(model)
        return self.accelerator.clip_grad_norm_(self._trainable_parameters(), self.args.max_grad_norm)

    def training_step(self, model, *args, **kwargs):
        if not self._sharded() and not getattr(model, "_lean_host", False):
            lean_module_calls(model, self._trainable_parameters())
        return super().training_step(model, *args, **kwargs)


def lean_module_calls(model: Any, trainable: list) -> None:
    """Give this module instance a `train()` that recurses only on a change of mode and a `zero_grad()` over
    the `trainable` parameters alone."""
    full_train = model.train

    def train(mode: bool = True):
        return model if model.training == mode else full_train(mode)

    def zero_grad(set_to_none: bool = True) -> None:
        for p in trainable:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.detach_().zero_()

    model.train, model.zero_grad, model._lean_host = train, zero_grad, True
