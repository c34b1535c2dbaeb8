"""Shared fixtures: a tiny Llama with its own tokenizer, built here from a config (no download), and test recipes."""

from __future__ import annotations

import json
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from pipeline.paths import PROJECT_ROOT
from pipeline.recipe import Recipe

CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _sample_texts() -> list[str]:
    texts = []
    for line in (PROJECT_ROOT / "data/sample/chatml.jsonl").read_text().splitlines():
        try:
            texts += [m["content"] for m in json.loads(line)["messages"]]
        except (ValueError, KeyError, TypeError):
            continue
    return texts


def free_port() -> int:
    """A port nothing listens on now, on loopback, for a server a test starts."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition, timeout: float, interval: float = 0.1) -> bool:
    """Poll `condition` until it is true (True) or `timeout` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return False


@contextmanager
def running(app, port: int, start_timeout: float = 30):
    """uvicorn serving `app` on 127.0.0.1:port in a thread, yielding its base URL; shut down (lifespan included) on
    exit, also when the test fails."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    if not wait_until(lambda: server.started or not thread.is_alive(), start_timeout, interval=0.05) or not server.started:
        raise RuntimeError("uvicorn did not start")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=60)


def trained_copy(model_dir: Path, target: Path, batch, steps: int, lr: float = 1e-2) -> Path:
    """A copy of the model at `model_dir` trained for `steps` AdamW steps (seed 0) and saved to `target` as
    safetensors: a model with a planted skill or bias. `batch(tokenizer)` gives each step's model keyword arguments,
    labels included."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    shutil.copytree(model_dir, target, dirs_exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(target)
    model = AutoModelForCausalLM.from_pretrained(target)
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    for _ in range(steps):
        model(**batch(tokenizer)).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(target, safe_serialization=True)
    return target


def sample_chat_records(limit: int) -> list[dict]:
    """The first `limit` well-formed chatml sample records, as the training stage receives them."""
    rows = []
    for line in (PROJECT_ROOT / "data/sample/chatml.jsonl").read_text().splitlines():
        try:
            messages = json.loads(line)["messages"]
        except (ValueError, KeyError, TypeError):
            continue
        if isinstance(messages, list) and len(messages) >= 2:
            rows.append({"messages": messages})
    return rows[:limit]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer Llama (~100k parameters) and a 600-token byte-level BPE trained on the sample, saved as safetensors."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-llama")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(_sample_texts(), trainers.BpeTrainer(vocab_size=600, special_tokens=SPECIAL,
                                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        bos_token=None, unk_token=None)
    tokenizer.chat_template = CHATML_TEMPLATE
    tokenizer.save_pretrained(folder)

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
                         tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    return folder


def tiny_recipe(model_dir: Path, **overrides) -> Recipe:
    """The demo recipe shrunk for the tiny model: a few steps, a small eval, a gate any candidate passes."""
    base = {
        "base_model": {"path": str(model_dir), "name": "tiny-llama"},
        "training": {"max_steps": 3, "batch_size": 4, "max_length": 256, "learning_rate": 0.005, "logging_steps": 1},
        "evaluation": {"max_examples": 12, "max_new_tokens": 6, "batch_size": 12, "bootstrap_resamples": 200,
                       "general": {"cloze_docs": 8, "perplexity_docs": 4, "passage_words": 40}},
        "gate": {"min_rouge_l_gain": -1.0, "max_loss_ratio": 100.0, "min_win_rate_vs_base": 0.0,
                 "max_general_accuracy_drop": 1.0, "max_general_perplexity_ratio": 100.0},
        "registry": {"model_name": "tiny-summarizer"},
    }
    for section, values in overrides.items():
        base[section] = {**base.get(section, {}), **values} if isinstance(values, dict) else values
    return Recipe.model_validate(base)


@pytest.fixture
def store(tmp_path) -> Path:
    return tmp_path / "store"
