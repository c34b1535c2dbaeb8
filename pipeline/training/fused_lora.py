"""Each LoRA linear layer as one autograd operation: the frozen base matmul and the adapter's two matmuls in one
forward and one backward, instead of PEFT's chain of modules (dropout, A, B, scale, add) and their autograd nodes.

A short-row LoRA step on a GPU (16 chat examples, ~2,300 tokens) waits on the host: the GPU work of a 1B model's
step is tens of milliseconds, and eager PEFT spends Python, module-call and autograd time on every op of its 112
adapted layers, twice (forward and backward). The fused layer launches about as many kernels but does the host
work of one op, and adds the adapter's product into the base output inside the GEMM (`addmm_`), one rounding
fewer than PEFT's separate add.

The parameters stay PEFT's (same names, dtypes and saved adapter): only the forward of each eligible layer is
replaced, and a layer is eligible only where the fused op computes exactly PEFT's result: one active, vanilla LoRA
adapter (no DoRA), a plain `nn.Linear` base with a frozen weight, on a process that holds whole weights (no
ZeRO-3 or FSDP shards, whose hooks gather weights around the base module's own call). Anything else at call time
(adapters disabled or merged, per-call adapter names) falls back to PEFT's forward.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


class LoraLinearFunction(torch.autograd.Function):
    """y = x W^T + b + s * dropout(x) A^T B^T, with gradients for x, A and B (W and b are frozen)."""

    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scaling: float, dropout_p: float):
        dtype = _compute_dtype(x, weight)
        rows = x.reshape(-1, x.shape[-1]).to(dtype)
        w, a, b = weight.to(dtype), lora_a.to(dtype), lora_b.to(dtype)
        out = F.linear(rows, w, None if bias is None else bias.to(dtype))
        mask = None
        dropped = rows
        if dropout_p > 0:
            dropped, mask = torch.native_dropout(rows, dropout_p, True)
        scaled_xa = F.linear(dropped, a).mul_(scaling)  # [tokens, r]: tiny, so scaling it is free
        out.addmm_(scaled_xa, b.t())
        ctx.save_for_backward(dropped, mask, scaled_xa, w, a, b)
        ctx.scaling, ctx.dropout_p, ctx.in_shape = scaling, dropout_p, x.shape
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad_out):
        dropped, mask, scaled_xa, w, a, b = ctx.saved_tensors
        grad_rows = grad_out.reshape(-1, grad_out.shape[-1]).to(w.dtype)
        grad_x = grad_a = grad_b = None
        scaled_gb = (grad_rows @ b).mul_(ctx.scaling)  # [tokens, r]
        if ctx.needs_input_grad[0]:
            grad_x = grad_rows @ w
            if mask is None:
                grad_x.addmm_(scaled_gb, a)
            else:  # the adapter saw dropout(x): its share of the input gradient goes back through the same mask
                grad_x += torch.ops.aten.native_dropout_backward(scaled_gb @ a, mask, 1.0 / (1.0 - ctx.dropout_p))
            grad_x = grad_x.view(ctx.in_shape)
        if ctx.needs_input_grad[3]:
            grad_a = scaled_gb.t() @ dropped
        if ctx.needs_input_grad[4]:
            grad_b = grad_rows.t() @ scaled_xa
        # autograd casts each gradient to its input's dtype (fp32 adapter weights get fp32 gradients)
        return grad_x, None, None, grad_a, grad_b, None, None


def _compute_dtype(x: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The dtype PEFT's layer computes in: autocast's under autocast (bf16 training), else the base weight's."""
    device = x.device.type
    if device != "meta" and torch.is_autocast_enabled(device):  # meta: measuring host overhead, no autocast
        return torch.get_autocast_dtype(device)
    return weight.dtype


def fused_forward(layer: Any, fallback: Any):
    """A forward for one PEFT LoRA `Linear` that runs the fused op, or `fallback` (PEFT's) when it can't."""
    adapter = layer.active_adapters[0]
    dropout = layer.lora_dropout[adapter]
    p = dropout.p if isinstance(dropout, torch.nn.Dropout) else 0.0

    def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if args or kwargs or layer.disable_adapters or layer.merged or layer.active_adapters != [adapter]:
            return fallback(x, *args, **kwargs)
        base = layer.base_layer  # looked up per call: loading a checkpoint may replace the tensors
        return LoraLinearFunction.apply(x, base.weight, base.bias, layer.lora_A[adapter].weight,
                                        layer.lora_B[adapter].weight, layer.scaling[adapter],
                                        p if layer.training else 0.0)

    return forward


def fusable(layer: Any) -> bool:
    """Whether the fused op computes exactly what this PEFT LoRA layer does."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    if type(layer) is not LoraLinear or type(layer.base_layer) is not torch.nn.Linear:
        return False
    if len(layer.active_adapters) != 1 or layer.fan_in_fan_out:
        return False
    adapter = layer.active_adapters[0]
    if adapter not in layer.lora_A or adapter in getattr(layer, "lora_variant", {}) or layer.use_dora.get(adapter):
        return False
    dropout = layer.lora_dropout[adapter]
    if not isinstance(dropout, (torch.nn.Dropout, torch.nn.Identity)):
        return False
    weight = layer.base_layer.weight
    return not weight.requires_grad and weight.dim() == 2 and weight.numel() > 0  # sharded weights are empty


def fuse_lora_layers(model: torch.nn.Module) -> int:
    """Give every eligible LoRA layer of `model` the fused forward; returns how many were fused."""
    fused = 0
    for module in model.modules():
        if getattr(module, "_fused_lora", False) or not fusable(module):
            continue
        module.forward = fused_forward(module, module.forward)
        module._fused_lora = True
        fused += 1
    return fused
