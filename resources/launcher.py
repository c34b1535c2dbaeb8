"""Launch the training workload in its own process and talk to it through Dagster Pipes."""


import json
import os
import sys
from pathlib import Path
from typing import Any, Literal

import dagster as dg

from pipeline.paths import PROJECT_ROOT
from pipeline.training.distributed import launch_command

# glibc returns large freed blocks to the OS and faults them back in on the next step; on CPU that was
# a third of the training time here. Keeping them mapped is harmless on a GPU.
ALLOCATOR_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "100000000000"}


class TrainingLauncher(dg.ConfigurableResource):
    """`subprocess` runs `python -m pipeline.training` on this machine, on its CPU or GPUs: one process, or
    torchrun with one process per GPU when it has several."""

    mode: Literal["subprocess"] = "subprocess"
    python: str = sys.executable
    env: dict[str, str] = {}
    gpus: int | None = None  # None: every GPU this machine shows

    def process_count(self) -> int:
        if self.gpus is not None:
            return self.gpus
        import torch

        return torch.cuda.device_count()

    def launch(self, context: dg.AssetExecutionContext, spec: dict[str, Any], workdir: Path) -> dict[str, Any]:
        """Run one training job; return the result it reports, or raise with the job's own error."""
        workdir.mkdir(parents=True, exist_ok=True)
        spec_path = workdir / "spec.json"
        spec_path.write_text(json.dumps(spec, indent=2))
        client = dg.PipesSubprocessClient(
            env={**ALLOCATOR_ENV, "TOKENIZERS_PARALLELISM": "false", **self.env},
            cwd=str(PROJECT_ROOT),
        )
        invocation = client.run(
            context=context,
            command=launch_command(self.python, str(spec_path), self.process_count(),
                                   sharded=spec["training"].get("distributed", "none") != "none"),
            extras={"spec_path": str(spec_path)},
        )
        messages = invocation.get_custom_messages()
        if not messages:
            raise dg.Failure(f"training process finished without reporting a result; see {workdir}")
        return messages[-1]
