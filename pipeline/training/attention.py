"""`varlen` attention: PyTorch's flash-attention kernel for variable-length sequences over padding-free and packed
rows, registered as a transformers attention implementation.

A padding-free row holds many examples back to back. SDPA keeps them apart with a dense block-diagonal mask,
so every row pays for all T x T scores (most of them masked); the varlen kernel reads the example boundaries
(`cu_seq_lens_q`, which TRL's padding-free collator passes down) and computes only each example's own causal
triangle. Needs a CUDA GPU with flash attention (Ampere or newer) and a torch with
`torch.nn.attention.varlen`.
"""

from __future__ import annotations

import inspect
from typing import Any

NAME = "varlen"


def varlen_available() -> str | None:
    """None when `varlen` attention can run here, else the reason it can't."""
    import torch

    if not torch.cuda.is_available():
        return "attn_implementation varlen needs a CUDA GPU (flash attention); use sdpa on this machine"
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        return f"attn_implementation varlen needs torch.nn.attention.varlen (torch {torch.__version__} has none)"
    return None


def varlen_attention_forward(module: Any, query: Any, key: Any, value: Any, attention_mask: Any,
                             dropout: float = 0.0, scaling: float | None = None, **kwargs: Any) -> tuple[Any, None]:
    """transformers' attention signature: query [1, H, T, D], key/value [1, Hkv, T, D] -> ([1, T, H, D], None)."""
    import torch
    from torch.nn.attention.varlen import varlen_attn

    cu_seq = kwargs.get("cu_seq_lens_q")
    if cu_seq is None:
        if attention_mask is not None or query.shape[0] != 1:
            raise ValueError("varlen attention needs padding-free or packed rows (training.padding_free or "
                             "training.packing); this batch is padded")
        cu_seq = torch.tensor([0, query.shape[2]], dtype=torch.int32, device=query.device)
        max_len = query.shape[2]
    else:
        max_len = kwargs["max_length_q"]
    # flash kernels take bf16/fp16 only; fp32 master weights under autocast still leave q/k/v in fp32 after RoPE
    dtype = query.dtype if query.dtype in (torch.float16, torch.bfloat16) else (
        torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else torch.bfloat16)
    q, k, v = (t.transpose(1, 2).squeeze(0).to(dtype) for t in (query, key, value))  # [T, heads, D]
    options = dict(_KERNEL["causal"])
    if q.shape[1] != k.shape[1]:
        if _KERNEL["native_gqa"]:
            options["enable_gqa"] = True
        else:
            k, v = (t.repeat_interleave(q.shape[1] // k.shape[1], dim=1) for t in (k, v))
    cu_seq = cu_seq.to(device=q.device, dtype=torch.int32)
    out = varlen_attn(q, k, v, cu_seq, cu_seq, max_len, max_len, scale=scaling, **options)
    return out.unsqueeze(0).to(query.dtype), None


# The keywords for causal masking and native GQA differ between torch releases; read once at registration,
# not on every call (the attention runs inside compiled blocks, in every layer of every step).
_KERNEL: dict[str, Any] = {"causal": {"is_causal": True}, "native_gqa": False}


def _read_kernel_keywords() -> None:
    from torch.nn.attention.varlen import varlen_attn

    params = inspect.signature(varlen_attn).parameters
    _KERNEL["causal"] = {"window_size": (-1, 0)} if "window_size" in params else {"is_causal": True}
    _KERNEL["native_gqa"] = "enable_gqa" in params


def register_varlen_attention() -> None:
    """Make `attn_implementation="varlen"` loadable; no mask is built, as for flash attention."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

    _read_kernel_keywords()
    AttentionInterface.register(NAME, varlen_attention_forward)
    AttentionMaskInterface.register(NAME, flash_attention_mask)
