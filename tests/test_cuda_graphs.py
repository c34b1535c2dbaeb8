"""CUDA graphs over compiled blocks: rows shaped into few buckets without changing what any example attends to.

The shaping is checked on CPU (with a per-example SDPA standing in for the flash varlen kernel); the graphs
themselves only on a CUDA machine (`pytest tests/test_cuda_graphs.py` on the GPU box)."""

import pytest
import torch

from pipeline.recipe import TrainingRecipe
from pipeline.training.attention import register_varlen_attention
from pipeline.training.cuda_graphs import ROW_BUCKET, SEGMENT_BUCKET, GraphShapedRows, fixed_segments
from pipeline.training.methods import MethodUnavailable, check_method_runs_here
from tests.test_attention import reference_varlen_attn
from tests.test_training import canonical_train_file, training


def padding_free_collator(pad_token_id: int, multiple: int = ROW_BUCKET):
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    return DataCollatorForLanguageModeling(pad_token_id=pad_token_id, padding_free=True, pad_to_multiple_of=multiple)


def examples_of(lengths: list[int]) -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    return [{"input_ids": torch.randint(10, 500, (n,), generator=generator).tolist(),
             "completion_mask": [0] * (n // 2) + [1] * (n - n // 2)} for n in lengths]


def test_padding_becomes_one_segment_and_boundaries_fill_a_bucket():
    lengths = [5, 9, 3, 40]
    batch = padding_free_collator(pad_token_id=0)(examples_of(lengths))
    assert batch["input_ids"].shape[-1] == ROW_BUCKET
    # TRL gives each of the 199 padding tokens a boundary of its own
    assert batch["cu_seq_lens_q"].numel() == len(lengths) + (ROW_BUCKET - sum(lengths)) + 1
    bounds = fixed_segments(batch).tolist()
    assert bounds[:6] == [0, 5, 14, 17, 57, ROW_BUCKET]
    assert len(bounds) == SEGMENT_BUCKET and set(bounds[6:]) == {ROW_BUCKET}


def test_shaped_rows_differ_only_in_length_bucket(tiny_model_dir):
    shaped = GraphShapedRows(padding_free_collator(pad_token_id=0), max_length=512)
    shapes = set()
    for lengths in ([5, 9, 3, 40], [70, 2, 11, 100], [1, 1, 1, 1], [200, 30, 20, 1]):
        batch = shaped(examples_of(lengths))
        assert batch["max_length_q"] == 512
        assert "seq_idx" not in batch
        shapes.add((batch["input_ids"].shape, batch["cu_seq_lens_q"].shape))
    assert shapes == {(torch.Size([1, ROW_BUCKET]), torch.Size([SEGMENT_BUCKET]))}


def test_shaped_rows_give_every_example_the_logits_of_the_unshaped_row(tiny_model_dir, monkeypatch):
    # the merged padding segment and the empty segments must not reach any real token
    from transformers import AutoModelForCausalLM

    monkeypatch.setattr("torch.nn.attention.varlen.varlen_attn", reference_varlen_attn)
    register_varlen_attention()
    examples = examples_of([5, 9, 3, 40])
    plain = padding_free_collator(pad_token_id=0)(examples)
    shaped = GraphShapedRows(padding_free_collator(pad_token_id=0), max_length=512)(examples)
    assert not torch.equal(plain["cu_seq_lens_q"], shaped["cu_seq_lens_q"])
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="varlen").eval()
    keys = ("input_ids", "position_ids", "cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")
    with torch.no_grad():
        expected, got = (model(**{k: b[k] for k in keys}, use_cache=False).logits[:, :57] for b in (plain, shaped))
    torch.testing.assert_close(got, expected)


def test_cuda_graphs_need_compiled_blocks_and_one_micro_batch_a_step():
    with pytest.raises(ValueError, match="torch_compile.*gradient_accumulation_steps 1"):
        TrainingRecipe(cuda_graphs=True, gradient_accumulation_steps=2)
    with pytest.raises(ValueError, match="gradient_checkpointing off"):
        TrainingRecipe(cuda_graphs=True, torch_compile=True, gradient_checkpointing=True)
    TrainingRecipe(cuda_graphs=True, torch_compile=True, padding_free=True, packing=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the error path is for machines without a GPU")
def test_cuda_graphs_without_a_gpu_fail_before_loading_anything():
    with pytest.raises(MethodUnavailable, match="cuda_graphs records CUDA graphs"):
        check_method_runs_here(TrainingRecipe(cuda_graphs=True, torch_compile=True))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")
def test_graphed_blocks_train_to_the_same_losses_as_compiled_ones(tiny_model_dir, tmp_path):
    from pipeline.training.sft import train_sft

    train = canonical_train_file(tmp_path, 48)
    losses, messages = {}, []
    for graphs in (False, True):
        recipe = training(tiny_model_dir, max_steps=8, batch_size=4, max_length=512, packing=False, padding_free=True,
                          torch_compile=True, cuda_graphs=graphs, attn_implementation="varlen", logging_steps=1,
                          lora={"dropout": 0.0}, merge_adapter=False)
        result = train_sft(train, tiny_model_dir, tmp_path / f"out-{graphs}", recipe, lambda m, x: messages.append(m))
        losses[graphs] = [h["loss"] for h in result.log_history if "loss" in h]
    assert "compiled 2 repeated blocks with CUDA graphs" in messages
    assert len(losses[True]) == 8
    assert losses[True] == pytest.approx(losses[False], rel=2e-2)  # bf16 on the GPU, different row padding
