"""varlen attention: the glue between transformers and PyTorch's flash varlen kernel, checked on CPU against SDPA."""

import pytest
import torch

from pipeline.recipe import TrainingRecipe
from pipeline.training.attention import register_varlen_attention
from pipeline.training.methods import MethodUnavailable, check_method_runs_here


def reference_varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1), enable_gqa=False,
                          is_causal=False, **_):
    """What the flash kernel computes: causal SDPA within each example of the flattened row ([T, heads, D])."""
    out = []
    for start, end in zip(cu_q[:-1].tolist(), cu_q[1:].tolist()):
        qs, ks, vs = (t[start:end].transpose(0, 1) for t in (q, k, v))
        causal = is_causal or tuple(window_size) == (-1, 0)
        out.append(torch.nn.functional.scaled_dot_product_attention(qs, ks, vs, is_causal=causal, scale=scale,
                                                                    enable_gqa=enable_gqa).transpose(0, 1))
    return torch.cat(out)


def reference_without_gqa(q, k, v, cu_q, cu_k, max_q, max_k, *, return_aux=None, scale=None, window_size=(-1, -1)):
    """torch 2.11's signature: no native GQA, so the caller must repeat the key/value heads itself."""
    return reference_varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k, scale=scale, window_size=window_size)


@pytest.mark.parametrize("kernel", [reference_varlen_attn, reference_without_gqa], ids=["native_gqa", "repeated_kv"])
def test_a_varlen_row_gives_each_example_the_logits_it_has_alone(tiny_model_dir, monkeypatch, kernel):
    from transformers import AutoModelForCausalLM

    monkeypatch.setattr("torch.nn.attention.varlen.varlen_attn", kernel)
    register_varlen_attention()
    bounds = [(0, 5), (5, 14), (14, 17)]
    input_ids = torch.randint(10, 500, (1, 17))
    position_ids = torch.cat([torch.arange(end - start) for start, end in bounds]).unsqueeze(0)
    cu = torch.tensor([0, 5, 14, 17], dtype=torch.int32)
    with torch.no_grad():
        # bf16, as the flash kernel computes; a leak across examples moves logits by tenths, far above bf16 rounding
        alone = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa", dtype=torch.bfloat16).eval()
        expected = torch.cat([alone(input_ids=input_ids[:, start:end]).logits for start, end in bounds], dim=1)
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="varlen", dtype=torch.bfloat16).eval()
        logits = model(input_ids=input_ids, position_ids=position_ids, use_cache=False, cu_seq_lens_q=cu,
                       cu_seq_lens_k=cu, max_length_q=9, max_length_k=9).logits
    assert torch.linalg.norm((logits - expected).float()) / torch.linalg.norm(expected.float()) < 1e-2


@pytest.mark.skipif(torch.cuda.is_available(), reason="the error path is for machines without a GPU")
def test_varlen_without_a_gpu_fails_before_loading_anything():
    with pytest.raises(MethodUnavailable, match="varlen needs a CUDA GPU"):
        check_method_runs_here(TrainingRecipe(attn_implementation="varlen", padding_free=True, packing=False))


def test_varlen_needs_flattened_rows():
    with pytest.raises(ValueError, match="varlen needs training.packing or training.padding_free"):
        TrainingRecipe(attn_implementation="varlen", packing=False, padding_free=False)
