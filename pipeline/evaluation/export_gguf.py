"""Quantized export for serving: a merged Llama-family model written as GGUF (llama.cpp, Ollama) with the `gguf`
package's writer, tensor names and Q/K layout as llama.cpp's own converter writes them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

QUANT_TYPES = {"Q8_0", "F16", "F32"}
# GGUF file_type codes (llama.cpp's LLAMA_FTYPE): what the 2-D weights mostly are.
_FILE_TYPE = {"F32": 0, "F16": 1, "Q8_0": 7}


def _permute_rope(weights, heads: int):
    """HF Llama keeps rotary halves apart (rotate_half); GGUF interleaves them. Same permutation as llama.cpp's
    convert_hf_to_gguf.py; transformers reverses it when it loads a GGUF."""
    return (weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def _tokenizer_fields(model_dir: Path) -> dict[str, Any]:
    """Byte-level BPE vocabulary, token types and merges from tokenizer.json (the `gpt2` GGUF tokenizer model)."""
    data = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    model = data["model"]
    if model.get("type") != "BPE":
        raise ValueError(f"GGUF export supports byte-level BPE tokenizers; {model_dir} has {model.get('type')}")
    vocab = dict(model["vocab"])
    special = {t["content"]: t["special"] for t in data.get("added_tokens", [])}
    for t in data.get("added_tokens", []):
        vocab.setdefault(t["content"], t["id"])
    size = max(vocab.values()) + 1
    tokens, types = [f"[PAD{i}]" for i in range(size)], [5] * size  # 5: unused, for ids the vocab skips
    for token, idx in vocab.items():
        tokens[idx] = token
        types[idx] = (3 if special[token] else 4) if token in special else 1  # 3 control, 4 user-defined, 1 normal
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return {"tokens": tokens, "types": types, "merges": merges}


def export_gguf(model_dir: Path, target: Path, quant_type: str = "Q8_0", tokenizer_pre: str = "smollm",
                name: str = "model") -> dict[str, Any]:
    """Write `model_dir` (a Llama-architecture safetensors folder with a tokenizer) to `target` as GGUF."""
    import gguf
    import numpy as np
    from safetensors.numpy import load_file
    from transformers import AutoConfig, AutoTokenizer

    if quant_type not in QUANT_TYPES:
        raise ValueError(f"quant_type {quant_type!r}; expected one of {sorted(QUANT_TYPES)}")
    config = AutoConfig.from_pretrained(model_dir)
    if config.model_type != "llama":
        raise ValueError(f"GGUF export supports Llama-architecture models; {model_dir} is {config.model_type} "
                         "(set evaluation.quantized.enabled: false for this base)")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads

    writer = gguf.GGUFWriter(str(target), "llama")
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(float(getattr(config, "rope_theta", None) or config.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_dimension_count(head_dim)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(_FILE_TYPE[quant_type])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    fields = _tokenizer_fields(model_dir)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(tokenizer_pre)
    writer.add_token_list(fields["tokens"])
    writer.add_token_types(fields["types"])
    writer.add_token_merges(fields["merges"])
    for add, token_id in ((writer.add_bos_token_id, tokenizer.bos_token_id), (writer.add_eos_token_id, tokenizer.eos_token_id),
                          (writer.add_pad_token_id, tokenizer.pad_token_id), (writer.add_unk_token_id, tokenizer.unk_token_id)):
        if token_id is not None:
            add(token_id)
    writer.add_add_bos_token(False)
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    tensors: dict[str, Any] = {}
    for shard in sorted(model_dir.glob("*.safetensors")):
        tensors.update(load_file(shard))
    counts = {"quantized": 0, "kept_float": 0}
    for hf_name, value in sorted(tensors.items()):
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # tied to token_embd, as in the base's own GGUF
        data = value.astype(np.float32)
        if hf_name.endswith("q_proj.weight"):
            data = _permute_rope(data, heads)
        elif hf_name.endswith("k_proj.weight"):
            data = _permute_rope(data, kv_heads)
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ValueError(f"no GGUF name for tensor {hf_name}")
        if data.ndim == 2 and quant_type == "Q8_0" and data.shape[-1] % 32 == 0:
            writer.add_tensor(gguf_name, gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0),
                              raw_dtype=gguf.GGMLQuantizationType.Q8_0)
            counts["quantized"] += 1
        elif data.ndim == 2 and quant_type in ("Q8_0", "F16"):
            writer.add_tensor(gguf_name, data.astype(np.float16))  # rows too short for Q8_0 blocks stay F16
            counts["kept_float"] += 1
        else:
            writer.add_tensor(gguf_name, data)  # norms (1-D) stay F32, as llama.cpp writes them
            counts["kept_float"] += 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {"path": str(target), "quant_type": quant_type, "bytes": target.stat().st_size, **counts}


def merged_model_dir(base_path: Path, adapter_path: Path, target: Path) -> Path:
    """Fold a LoRA adapter into its base and save the whole model (what GGUF export needs)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path), str(adapter_path))
    model.merge_and_unload().save_pretrained(target, safe_serialization=True)
    AutoTokenizer.from_pretrained(base_path).save_pretrained(target)
    return target


def load_gguf(path: Path):
    """The GGUF loaded back with transformers, dequantized to float32, and its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return model, tokenizer
