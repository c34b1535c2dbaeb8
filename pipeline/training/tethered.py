"""Run a Python command tied to the process that started it: the kernel SIGKILLs it when that process dies.

    python -m pipeline.training.tethered -m torch.distributed.run --nproc-per-node=2 -m pipeline.training --spec s.json

The `TrainingLauncher` starts training this way. When the Dagster step that launched it is killed outright (the
OOM killer, a lost run worker), the training stops with it instead of training on beside the retried run. The
request survives the exec, so the command runs as this very process and Dagster Pipes sees its exit status.
"""

import os
import sys

from pipeline.training.distributed import die_with_parent

if __name__ == "__main__":
    die_with_parent()
    os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
