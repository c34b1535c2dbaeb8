"""CUDA graphs for compiled blocks: what can be checked without a GPU (the fixed-shape batches, the recipe's
conditions, the step boundaries). The replay itself is measured on a GPU by bench/time_to_model.py."""

import pytest
import torch
from pydantic import ValidationError
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from pipeline.recipe import TrainingRecipe
from pipeline.training import sft
from pipeline.training.compile_cache import cache_key
from pipeline.training.cuda_graphs import ROW_MULTIPLE, GraphStepBoundary, fixed_shape_collator


def _examples(*lengths: int) -> list[dict]:
    return [{"input_ids": list(range(3, 3 + n))} for n in lengths]


def _segment_attention(batch: dict, q: torch.Tensor) -> torch.Tensor:
    """Causal attention within each segment of `cu_seq_lens_q`, as the varlen kernel computes it."""
    row = q.shape[0]
    bounds = batch["cu_seq_lens_q"].tolist()
    segment = torch.zeros(row, dtype=torch.long)
    for i, (start, end) in enumerate(zip(bounds, bounds[1:])):
        segment[start:end] = i
    mask = (segment[:, None] == segment[None, :]) & torch.ones(row, row, dtype=torch.bool).tril()
    return torch.nn.functional.scaled_dot_product_attention(q[None], q[None], q[None], attn_mask=mask[None])[0]


def test_padding_is_one_segment_so_shapes_depend_only_on_the_row_length():
    collate = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True, pad_to_multiple_of=ROW_MULTIPLE)
    fixed = fixed_shape_collator(collate)
    # three batches of 4 examples in the same bucket, with 12 to 484 tokens of padding
    batches = [fixed(_examples(*lengths)) for lengths in ((130, 140, 120, 105), (10, 5, 7, 6), (200, 100, 150, 50))]
    assert {b["input_ids"].shape[-1] for b in batches} == {ROW_MULTIPLE}
    assert {b["cu_seq_lens_q"].shape for b in batches} == {torch.Size([6])}  # 4 examples, the padding, the end
    assert {b["max_length_q"] for b in batches} == {ROW_MULTIPLE}
    assert batches[0]["cu_seq_lens_q"].tolist() == [0, 130, 270, 390, 495, ROW_MULTIPLE]
    assert batches[0]["cu_seq_lens_k"] is batches[0]["cu_seq_lens_q"]
    assert batches[0]["seq_idx"][0, 494:].tolist() == [3] + [4] * (ROW_MULTIPLE - 495)
    # a row filled exactly has no padding segment (and no empty one)
    exact = fixed(_examples(ROW_MULTIPLE // 2, ROW_MULTIPLE // 2))
    assert exact["cu_seq_lens_q"].tolist() == [0, ROW_MULTIPLE // 2, ROW_MULTIPLE]


def test_real_tokens_attend_exactly_as_with_one_segment_per_pad_token():
    collate = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True, pad_to_multiple_of=ROW_MULTIPLE)
    examples = _examples(170, 50, 90)
    trl_batch, fixed_batch = collate(examples), fixed_shape_collator(collate)(examples)
    for key in ("input_ids", "labels", "position_ids"):
        assert torch.equal(trl_batch[key], fixed_batch[key])
    q = torch.randn(ROW_MULTIPLE, 8, generator=torch.Generator().manual_seed(0))
    real = sum(len(e["input_ids"]) for e in examples)
    assert torch.equal(_segment_attention(trl_batch, q)[:real], _segment_attention(fixed_batch, q)[:real])


def test_cuda_graphs_need_single_micro_batch_flat_rows_and_no_sharding():
    assert TrainingRecipe(cuda_graphs=True, packing=False, padding_free=True).wants_cuda_graphs
    assert TrainingRecipe().wants_cuda_graphs  # auto, and the defaults allow it
    for bad, match in (({"packing": False, "padding_free": False}, "packing or training.padding_free"),
                       ({"gradient_accumulation_steps": 2}, "gradient_accumulation_steps 1"),
                       ({"distributed": "zero2"}, "without sharding"),
                       ({"gradient_checkpointing": True}, "gradient_checkpointing")):
        with pytest.raises(ValidationError, match=match):
            TrainingRecipe(cuda_graphs=True, **bad)
        assert not TrainingRecipe(cuda_graphs="auto", **bad).wants_cuda_graphs  # auto turns itself off instead
    assert not TrainingRecipe(cuda_graphs=False).wants_cuda_graphs


def test_cuda_graphs_apply_only_to_compiled_blocks_on_a_gpu(monkeypatch):
    messages = []
    report = lambda message, metrics: messages.append(message)  # noqa: E731
    recipe = TrainingRecipe(cuda_graphs=True)
    monkeypatch.setattr(sft, "_on_gpu", lambda: False)
    assert not sft.cuda_graphs_apply(recipe, True, report)
    assert not sft.cuda_graphs_apply(TrainingRecipe(), True, report)  # auto: off without a word
    assert sft.row_multiple(recipe, False) is None
    monkeypatch.setattr(sft, "_on_gpu", lambda: True)
    assert not sft.cuda_graphs_apply(recipe, False, report)
    assert messages == ["cuda_graphs off: there is no CUDA GPU", "cuda_graphs off: the blocks are not compiled"]
    assert sft.cuda_graphs_apply(recipe, True, report) and sft.cuda_graphs_apply(TrainingRecipe(), True, report)
    assert not sft.cuda_graphs_apply(TrainingRecipe(cuda_graphs=False), True, report)
    assert (sft.row_multiple(recipe, True), sft.row_multiple(recipe, False)) == (ROW_MULTIPLE, 64)


def test_graphed_and_plain_compiles_keep_separate_caches():
    config = {"model_type": "llama", "hidden_size": 64}
    graphed, plain = TrainingRecipe(cuda_graphs=True), TrainingRecipe(cuda_graphs=False)
    assert cache_key(config, graphed, "gpu") != cache_key(config, plain, "gpu")
    assert cache_key(config, graphed, "gpu") == cache_key(config, TrainingRecipe(cuda_graphs="auto"), "gpu")
    accumulating = TrainingRecipe(cuda_graphs="auto", gradient_accumulation_steps=2)
    assert cache_key(config, accumulating, "gpu") == cache_key(config, plain.model_copy(
        update={"gradient_accumulation_steps": 2}), "gpu")


def test_each_training_and_eval_step_marks_a_new_graph_step(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: calls.append("mark"))

    class Trainer:
        def training_step(self, model, inputs):
            calls.append("train")

        def prediction_step(self, model, inputs, prediction_loss_only):
            calls.append("predict")

    trainer = type("T", (GraphStepBoundary, Trainer), {})()
    trainer.training_step(None, {})
    trainer.prediction_step(None, {}, True)
    assert calls == ["mark", "train", "mark", "predict"]
