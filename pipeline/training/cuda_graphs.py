"""CUDA graphs for short-row steps: the compiled blocks' kernels are recorded once per row length and replayed.

A compiled LoRA step of 16 short chat examples is still bound by the host: launching each block's kernels and
running its compiled wrapper costs more than the GPU work (~64 ms a step against ~30 ms of kernels on an H200).
With `training.cuda_graphs` the blocks compile with Inductor's CUDA graphs (`mode="reduce-overhead"`): each block's
forward and backward is recorded the first times a row length is seen and replayed after, one launch instead of
dozens. A recording holds fixed shapes, so a row's shape may only vary with its length, in few steps:

- rows are padded to a multiple of `ROW_MULTIPLE` tokens (5 lengths for batches of 16 chat examples);
- the padding is one attention segment, not one per pad token as TRL's collator makes it, so the segment
  boundaries (`cu_seq_lens`) have one entry per example plus two, whatever the padding;
- the longest segment given to the attention kernel is the row length, an upper bound that only sizes its grid.

Recorded gradients live in the graphs' memory until the next step overwrites them, which is why CUDA graphs need
one micro-batch per optimizer step (the recipe checks it) and a step boundary marked before each step.
"""

from __future__ import annotations

from typing import Any, Callable

# Each new row length costs a recording of every block's forward and backward: 7.1 s for the 14 lengths of 128-token
# multiples over 313 batches of 16 chat examples (H200). A replayed step still waits on the host, not the GPU (~47 ms
# against ~27 ms of kernels), so padding to 512 (5 lengths, 12% more tokens, recorded in 2.6 s) costs no step time
# (bench/results/README.md, fourth session).
ROW_MULTIPLE = 512


def one_padding_segment(batch: dict[str, Any], real_tokens: int) -> dict[str, Any]:
    """A padding-free batch whose shapes depend only on its row length and number of examples: the trailing
    padding after `real_tokens` becomes one segment, and the longest segment is given as the row length."""
    import torch

    if "cu_seq_lens_q" not in batch:
        return batch
    row = batch["input_ids"].shape[-1]
    bounds = batch["cu_seq_lens_q"]
    bounds = bounds[bounds <= real_tokens]  # each example's start, then where the padding starts (or the row's end)
    if row > real_tokens:
        bounds = torch.cat([bounds, torch.tensor([row], dtype=bounds.dtype)])
    batch["cu_seq_lens_q"] = batch["cu_seq_lens_k"] = bounds
    batch["max_length_q"] = batch["max_length_k"] = row
    if "seq_idx" in batch:  # the segment of each token, read by linear-attention layers
        segments = torch.arange(bounds.numel() - 1, dtype=batch["seq_idx"].dtype)
        batch["seq_idx"] = torch.repeat_interleave(segments, bounds.diff())[None]
    return batch


def fixed_shape_collator(collate: Callable[[list[dict[str, Any]]], dict[str, Any]]) -> Callable:
    """Wrap TRL's padding-free collator with `one_padding_segment`; the real tokens are the examples' own."""

    def collate_fixed(examples: list[dict[str, Any]]) -> dict[str, Any]:
        return one_padding_segment(collate(examples), sum(len(e["input_ids"]) for e in examples))

    return collate_fixed


class GraphStepBoundary:
    """Trainer mixin: tell CUDA graph trees where each step starts, so the previous step's recorded outputs (its
    activations and gradients, read by then) may be overwritten by this one's replays."""

    def training_step(self, *args, **kwargs):
        import torch

        torch.compiler.cudagraph_mark_step_begin()
        return super().training_step(*args, **kwargs)

    def prediction_step(self, *args, **kwargs):
        import torch

        torch.compiler.cudagraph_mark_step_begin()
        return super().prediction_step(*args, **kwargs)
