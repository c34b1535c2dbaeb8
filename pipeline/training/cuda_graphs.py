"""CUDA graphs for the compiled decoder blocks: each block's forward and backward replayed as one graph launch.

A LoRA step of 16 short chat examples is ~40 ms of GPU work, but issuing it takes the host longer: ~900 cuBLAS
calls (every adapted linear layer adds two small matmuls, forward and backward) plus inductor's kernels, each
costing microseconds of Python and driver time. A replayed graph issues all of a block's kernels at once.

A graph is recorded for fixed shapes, and padding-free rows change shape every step: their length, the number
of example boundaries (TRL gives every padding token a boundary of its own) and the longest example. So rows
are padded to multiples of `ROW_BUCKET` tokens, the padding becomes one segment, the boundary list is padded
with empty segments to a multiple of `SEGMENT_BUCKET`, and the kernel's longest-example bound is fixed. A run
then records a handful of graphs (one per row length) and replays them. Inductor's CUDA-graph trees do the
recording; `torch.compiler.cudagraph_mark_step_begin` tells them where each training step starts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

ROW_BUCKET = 256  # tokens: ~8 row lengths for 16 chat examples a step, at ~5% padding
SEGMENT_BUCKET = 32  # boundaries: a packed row of short examples stays within one or two counts


def longest_segment_bound(max_length: int) -> int:
    """The fixed bound given to the varlen kernel: no example is longer than max_length, no padding run than a bucket."""
    return max(max_length, ROW_BUCKET)


def fixed_segments(batch: dict[str, Any]) -> "torch.Tensor":
    """A flattened row's example boundaries with its trailing padding as one segment, padded with empty segments
    (repeats of the row length) to a multiple of SEGMENT_BUCKET. The real examples' boundaries are unchanged, so
    attention within them is too; padding attends only to padding, and its labels are ignored."""
    import torch

    from pipeline.training.trainer_mixins import real_token_count

    length = batch["input_ids"].shape[-1]
    real_end = int(real_token_count(batch))  # padding runs from here to the row's end
    bounds = [b for b in batch["cu_seq_lens_q"].tolist() if b < real_end] + [real_end, length]
    bounds += [length] * (-len(bounds) % SEGMENT_BUCKET)
    return torch.tensor(bounds, dtype=torch.int32)


class GraphShapedRows:
    """Wraps TRL's padding-free collator (built with pad_to_multiple_of=ROW_BUCKET) so every row's shapes fall
    in few buckets; rows without boundaries (padded batches) pass unchanged."""

    def __init__(self, collate: Any, max_length: int) -> None:
        self.collate = collate
        self.max_length = longest_segment_bound(max_length)

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collate(examples)
        if "cu_seq_lens_q" in batch and batch["position_ids"].shape[0] == 1:
            bounds = fixed_segments(batch)
            batch["cu_seq_lens_q"] = batch["cu_seq_lens_k"] = bounds
            batch["max_length_q"] = batch["max_length_k"] = self.max_length
            batch.pop("seq_idx", None)  # only linear-attention layers read it, and its values follow the old boundaries
        return batch


def compile_blocks_with_graphs(model: Any) -> int:
    """Compile each repeated block with inductor's CUDA-graph trees (one recording per row length); returns how many."""
    from accelerate.utils.other import is_repeated_blocks

    blocks = next((m for m in model.modules() if is_repeated_blocks(m)), None)
    if blocks is None:
        return 0
    for block in blocks:
        block.compile(dynamic=True, mode="reduce-overhead")
    return len(blocks)


class CudaGraphSteps:
    """Trainer mixin: each training step starts a new CUDA-graph generation, so the graphs' static outputs from
    the previous step (already consumed by the optimizer) may be overwritten."""

    def training_step(self, *args, **kwargs):
        import torch

        torch.compiler.cudagraph_mark_step_begin()
        return super().training_step(*args, **kwargs)

    def prediction_step(self, *args, **kwargs):
        import torch

        torch.compiler.cudagraph_mark_step_begin()
        return super().prediction_step(*args, **kwargs)
