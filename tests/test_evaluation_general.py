"""General-capability regression through lm-eval: a candidate trained to forget fails, a normal candidate passes."""

import json
import random
from pathlib import Path

import pytest

from pipeline.evaluation.general import build_items, regression_failures, run_tasks, write_items
from pipeline.recipe import GeneralCapabilityRecipe, TrainingRecipe
from pipeline.training.sft import train_sft
from tests.conftest import sample_chat_records, trained_copy

GENERAL = GeneralCapabilityRecipe(cloze_docs=24, perplexity_docs=8, passage_words=60, batch_size=8)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def prose_base(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model pretrained briefly on the general prose, so it has a general skill there is to forget."""
    from pipeline.evaluation.general import prose_paragraphs

    paragraphs = prose_paragraphs(GENERAL.prose)
    rng = random.Random(0)

    def batch(tokenizer) -> dict:
        rows = tokenizer(rng.sample(paragraphs, 8), return_tensors="pt", padding=True, truncation=True, max_length=64)
        return {**rows, "labels": rows["input_ids"].masked_fill(rows["attention_mask"] == 0, -100)}

    return trained_copy(tiny_model_dir, tmp_path_factory.mktemp("prose-base"), batch, steps=60)


def score(model_dir: Path, adapter: Path | None, paths) -> dict:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter))
    return run_tasks(model, tokenizer, paths, GENERAL.batch_size)


def test_items_are_built_from_real_prose_deterministically():
    first, second = build_items(GENERAL), build_items(GENERAL)
    assert first == second
    assert len(first["prose_cloze"]) == 24 and len(first["prose_perplexity"]) == 8
    item = first["prose_cloze"][0]
    assert len(item["choices"]) == 4 and 0 <= item["gold"] < 4


def test_forgetting_candidate_fails_the_regression_check_and_a_normal_one_passes(prose_base, tmp_path):
    paths = write_items(build_items(GENERAL), tmp_path / "general")
    records = sample_chat_records(48)
    normal = train_sft(write_jsonl(tmp_path / "train.jsonl", records), prose_base, tmp_path / "normal",
                       TrainingRecipe(max_steps=3, batch_size=4, max_length=256, learning_rate=0.005,
                                      merge_adapter=False), lambda m, x: None)
    # Trained to forget: every answer moved to another example's prompt, full fine-tuning, far more steps.
    answers = [r["messages"][-1]["content"] for r in records]
    random.Random(1).shuffle(answers)
    shuffled = [{"messages": r["messages"][:-1] + [{"role": "assistant", "content": a}]} for r, a in zip(records, answers)]
    forgot = train_sft(write_jsonl(tmp_path / "shuffled.jsonl", shuffled), prose_base, tmp_path / "forgot",
                       TrainingRecipe(method="full", max_steps=20, batch_size=4, max_length=256, learning_rate=0.02,
                                      packing=False, merge_adapter=False), lambda m, x: None)
    base = score(prose_base, None, paths)
    normal_scores = score(prose_base, Path(normal.adapter_path), paths)
    forgot_scores = score(Path(forgot.model_path), None, paths)
    assert regression_failures(base, normal_scores, 0.05, 1.10) == []
    failures = regression_failures(base, forgot_scores, 0.05, 1.10)
    assert any("byte perplexity" in f for f in failures), failures
