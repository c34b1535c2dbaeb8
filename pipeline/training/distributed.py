"""Several GPUs: the Trainer arguments for DeepSpeed ZeRO-2/3 and FSDP, and the command that starts one
process per GPU. The configs live in recipes/distributed/ so they are reviewed and versioned with the recipe."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

from pipeline.paths import PROJECT_ROOT

CONFIG_DIR = PROJECT_ROOT / "recipes" / "distributed"
CONFIGS = {"zero2": CONFIG_DIR / "ds_zero2.json", "zero3": CONFIG_DIR / "ds_zero3.json", "fsdp": CONFIG_DIR / "fsdp.json"}


def trainer_args(distributed: str) -> dict[str, Any]:
    """Extra TrainingArguments for the recipe's `distributed` setting; empty for `none`."""
    if distributed == "none":
        return {}
    if distributed == "fsdp":
        return {"fsdp": True, "fsdp_config": str(CONFIGS["fsdp"])}
    return {"deepspeed": str(CONFIGS[distributed])}  # "auto" fields are filled from the TrainingArguments


def launch_command(python: str, spec_path: str, gpus: int, sharded: bool = False) -> list[str]:
    """`python -m pipeline.training` for one GPU (or none); torchrun with one process per GPU for more, and
    for a sharded recipe (ZeRO/FSDP) even on one GPU, since accelerate only shards under a distributed launcher.
    Either is tethered to the launching process (`pipeline.training.tethered`), and each rank to torchrun."""
    tether = [python, "-m", "pipeline.training.tethered"]
    workload = ["-m", "pipeline.training", "--spec", spec_path]
    if gpus <= 1 and not sharded:
        return [*tether, *workload]
    # torch.distributed.run is torchrun; every rank runs the workload, rank 0 alone reports
    return [*tether, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={max(gpus, 1)}", *workload]


@contextmanager
def whole_model_loading() -> Iterator[None]:
    """Models loaded inside this block are whole, even in a process that trains under ZeRO-3.

    While a ZeRO-3 Trainer exists, `from_pretrained` partitions every weight it loads (each rank keeps a
    slice, numel 0 outside a forward hook). Merging an adapter into such a base fails with "The size of tensor
    a (0) must match the size of tensor b (hidden)"; seen on an H100 with deepspeed 0.19.8. The merge wants
    the full weights on the one rank that writes them."""
    from transformers.integrations import deepspeed as hf_deepspeed

    active = hf_deepspeed._hf_deepspeed_config_weak_ref
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        if active is not None and active() is not None:
            hf_deepspeed.set_hf_deepspeed_config(active())


def gather_blocks_whole(model: Any, distributed: str) -> int:
    """Under ZeRO-3, when every weight trains (full fine-tuning), have each decoder block gather its weights in
    one go instead of module by module; returns how many blocks. Call it before training starts (DeepSpeed places
    its hooks when the engine is built).

    ZeRO-3 hooks every module that holds weights: ~3,600 hook calls per step for the SmolLM2-135M shape with
    LoRA. On 2 H100s a LoRA step took 2.2 s of host time for 30 ms of GPU work (torch profiler, deepspeed
    0.19.8). A block marked as a ZeRO-3 leaf is fetched whole, as FSDP fetches it: full fine-tuning of that
    shape went from 1,300 to 3,480 tokens/s. With LoRA the same marking broke the backward pass on the GPUs
    ("size of tensor a (0) must match the size of tensor b (16)": a frozen weight already released), so a model
    with frozen weights keeps DeepSpeed's per-module fetching; FSDP is the faster sharding for LoRA."""
    if distributed != "zero3" or not all(p.requires_grad for p in model.parameters()):
        return 0
    from accelerate.utils.other import is_repeated_blocks
    from deepspeed.utils import set_z3_leaf_module

    blocks = next((m for m in model.modules() if is_repeated_blocks(m)), None)
    for block in blocks if blocks is not None else []:
        set_z3_leaf_module(block, True)
    return len(blocks) if blocks is not None else 0


def save_final_weights_whole(trainer: Any) -> None:
    """Have the Trainer's next `save_model` write whole weights (safetensors on rank 0) under FSDP.

    FSDP checkpoints are sharded (`SHARDED_STATE_DICT` in fsdp.json): each rank writes its slice of the weights and
    optimizer state, with no gathering. A full state dict for checkpoints gathers the whole optimizer state to CPU
    at every save; for a 1B model on 2 H100s that save had not finished after 100 s. The model we hand on to
    evaluation and serving must still be whole, so only the final save switches to the full state dict."""
    if not getattr(trainer, "is_fsdp_enabled", False):
        return
    plugin = trainer.accelerator.state.fsdp_plugin
    # the sharded configs would otherwise stay with the new type (accelerate fills in only missing ones)
    plugin.state_dict_config = plugin.optim_state_dict_config = None
    plugin.set_state_dict_type("FULL_STATE_DICT")


def die_with_parent() -> None:
    """Have the kernel SIGKILL this process as soon as its parent dies (Linux; elsewhere nothing changes).

    A launcher killed outright leaves its children running: torchrun even starts each rank in a session of its
    own. A retried run then trains beside them into the same checkpoint folder. Seen on 2 H100s: the ranks of a
    killed ZeRO-3 attempt went on to the last step and wrote the checkpoints that the retry resumed from."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    parent = os.getppid()
    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # it died before the request took effect
        os._exit(1)


def terse_parameter_repr(distributed: str):
    """Under ZeRO-3, a context in which a parameter prints as its shape and dtype, not its values.

    DeepSpeed 0.19.8's ZeRO-3 optimizer and parameter offload build `f"... with args: {locals()}"` for a debug
    line they then drop. Those locals hold a dict keyed by every parameter, so every tensor is formatted. For
    the LoRA DPO policy on 2 H100s, rank 0 was still formatting after 140 s while rank 1 waited for it; with
    parameters printed this way the same run went on to its DPO steps."""
    return _terse_parameter_repr() if distributed == "zero3" else nullcontext()


@contextmanager
def _terse_parameter_repr() -> Iterator[None]:
    import torch

    original = torch.nn.Parameter.__repr__
    torch.nn.Parameter.__repr__ = lambda self: f"Parameter(shape={tuple(self.shape)}, dtype={self.dtype})"
    try:
        yield
    finally:
        torch.nn.Parameter.__repr__ = original
