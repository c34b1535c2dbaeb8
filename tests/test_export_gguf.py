"""GGUF export: the written file loads back in transformers and computes what the original model computes."""

import pytest

from pipeline.evaluation.export_gguf import export_gguf, load_gguf


def _logits(model, tokenizer, text: str):
    import torch

    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model(input_ids=ids).logits[0], ids


# F32 checks the layout (names, Q/K permutation) exactly; Q8_0 that quantized blocks load back within their noise.
@pytest.mark.parametrize("quant_type, tolerance", [("F32", 1e-4), ("Q8_0", 0.02)])
def test_gguf_loads_back_with_the_same_tokens_and_close_logits(tiny_model_dir, tmp_path, quant_type, tolerance):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    info = export_gguf(tiny_model_dir, tmp_path / "model.gguf", quant_type=quant_type, name="tiny")
    assert info["bytes"] > 0 and (info["quantized"] > 0) == (quant_type == "Q8_0")
    original = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    loaded, loaded_tokenizer = load_gguf(tmp_path / "model.gguf")
    text = "Write the one-line summary of this Debian package: a library for parsing JSON documents."
    want, ids = _logits(original, tokenizer, text)
    got, loaded_ids = _logits(loaded, loaded_tokenizer, text)
    assert loaded_ids.tolist() == ids.tolist()
    assert (want - got).abs().max().item() < tolerance
    assert loaded_tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == \
        tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
