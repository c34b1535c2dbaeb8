"""Resumable checkpoints: which ones are complete, and the marker that says so.

The Trainer writes `checkpoint-N/` file by file (weights, optimizer, scheduler, RNG, trainer_state.json), so a
killed process can leave a folder that looks like a checkpoint but is not one. A checkpoint counts only when
our marker, written atomically after the Trainer's `on_save`, names its step and its trainer state agrees.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

COMPLETE_MARKER = "checkpoint_complete.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")  # `checkpoint-10.partial`, `checkpoint-10.tmp` never match
_INCOMPLETE_SIGNS = (".partial", ".tmp", "tmp-checkpoint")


def is_complete(folder: Path) -> bool:
    """True when `folder` is a finished checkpoint: marker, trainer state and weights for the same step."""
    match = _CHECKPOINT.match(folder.name)
    if not match or not folder.is_dir():
        return False
    if any((folder / name).exists() for name in (".partial", ".tmp")):
        return False
    try:
        marker = json.loads((folder / COMPLETE_MARKER).read_text())
        state = json.loads((folder / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    step = int(match.group(1))
    return marker.get("global_step") == step and state.get("global_step") == step and has_weights(folder)


def has_weights(folder: Path) -> bool:
    """Weights in one of the layouts the Trainer writes: safetensors (or .bin) files, DeepSpeed's `global_step*/`
    or FSDP's sharded `pytorch_model_fsdp_*/` (torch.distributed.checkpoint, one file per rank)."""
    return any(any(folder.glob(pattern)) for pattern in ("*.safetensors", "*.bin", "global_step*", "pytorch_model_fsdp*"))


def latest_complete(checkpoint_dir: Path) -> Path | None:
    """The complete checkpoint with the highest step under `checkpoint_dir`, or None."""
    if not checkpoint_dir.is_dir():
        return None
    candidates = [p for p in checkpoint_dir.iterdir() if not any(s in p.name for s in _INCOMPLETE_SIGNS)]
    complete = [p for p in candidates if is_complete(p)]
    return max(complete, key=lambda p: int(_CHECKPOINT.match(p.name).group(1)), default=None)


def write_marker(folder: Path, global_step: int) -> None:
    """Mark `folder` complete; write-then-rename, so the marker itself is never half-written."""
    tmp = folder / (COMPLETE_MARKER + ".tmp")
    tmp.write_text(json.dumps({"global_step": global_step}))
    os.replace(tmp, folder / COMPLETE_MARKER)


def marker_callback():
    """A TrainerCallback that marks each checkpoint complete once the Trainer has finished writing it."""
    import torch
    from transformers import TrainerCallback

    class CheckpointMarker(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            # every rank writes its own shards and RNG state; the marker waits for all of them
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.barrier()
            if state.is_world_process_zero:
                folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                if folder.is_dir():
                    write_marker(folder, state.global_step)

    return CheckpointMarker()


def no_final_checkpoint_callback():
    """A TrainerCallback that keeps the Trainer from writing a checkpoint after the last step unless that step is
    a save step anyway. The Trainer saves one at the end by default; the final weights are saved right after
    training, so it would only cost time: for a 1B full fine-tune, 13 GB of weights and optimizer states (18 s on
    an H200 machine's disk), and an upload when checkpoints are mirrored. A crash between the last step and the
    save resumes from the last periodic checkpoint, as a crash during training does."""
    from transformers import TrainerCallback

    class NoFinalCheckpoint(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):  # after the Trainer's own flow callback
            periodic = state.save_steps > 0 and state.global_step % state.save_steps == 0
            if state.global_step >= state.max_steps and not periodic:
                control.should_save = False

    return NoFinalCheckpoint()
