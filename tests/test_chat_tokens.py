"""The batched tokenisation gives exactly the ids and labels TRL's SFTTrainer makes itself."""

import os

import pytest
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

from pipeline.training.chat_tokens import IGNORE_INDEX, tokenize_prompt_completion
from tests.conftest import sample_chat_records

# the prompt rendered for generation ends in a block the whole conversation does not have (as Gemma's thinking
# templates do), so the prompt's tokens are not a prefix of the conversation's
SHIFTING_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                     "{% if add_generation_prompt %}<|assistant|><think></think>{% endif %}")


def prompt_completion_rows(limit: int = 64) -> list[dict]:
    return [{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in sample_chat_records(limit)]


def trl_prepared(model_dir, tokenizer, rows, tmp_path) -> Dataset:
    """What SFTTrainer makes of the raw rows with the pipeline's settings (padding-free, loss on the completion)."""
    config = SFTConfig(output_dir=str(tmp_path), max_length=None, padding_free=True, completion_only_loss=True,
                       report_to=[], use_cpu=True, per_device_train_batch_size=2)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    return trainer.train_dataset


@pytest.mark.parametrize("template", ["model's", "shifting"])
def test_ids_and_labels_are_those_trl_makes(tiny_model_dir, tmp_path, template):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    if template == "shifting":
        tokenizer.chat_template = SHIFTING_TEMPLATE
    rows = prompt_completion_rows()
    ours = tokenize_prompt_completion(rows, tokenizer)
    theirs = trl_prepared(tiny_model_dir, tokenizer, rows, tmp_path)
    assert ours.input_ids == theirs["input_ids"]
    assert ours.labels == theirs["labels"]
    assert len(ours) == len(rows) and all(IGNORE_INDEX in labels for labels in ours.labels)
    assert all(any(t != IGNORE_INDEX for t in labels) for labels in ours.labels)  # every example trains on something
    assert ours.prompt_boundary_shifted == (len(rows) if template == "shifting" else 0)
    assert ours.lengths == [len(ids) for ids in theirs["input_ids"]]


def test_the_tokenizer_threads_are_on_only_while_encoding(tiny_model_dir, monkeypatch):
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    seen = []
    encode = tokenizer.__class__.__call__

    def encode_and_note_the_setting(self, *args, **kwargs):
        seen.append(os.environ["TOKENIZERS_PARALLELISM"])
        return encode(self, *args, **kwargs)

    monkeypatch.setattr(tokenizer.__class__, "__call__", encode_and_note_the_setting)
    tokenize_prompt_completion(prompt_completion_rows(4), tokenizer)
    assert seen == ["true", "true"]
    assert os.environ["TOKENIZERS_PARALLELISM"] == "false"
    assert tokenize_prompt_completion([], tokenizer).input_ids == []
