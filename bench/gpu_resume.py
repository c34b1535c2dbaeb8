"""The crash test on every GPU of this machine: the training workload, started the way the training asset starts it
(`launch_command`: torchrun with one process per GPU), killed as a whole after its first complete checkpoint (as a
lost pod would be), started again, and checked to have resumed and ended at the planned step.

    python bench/gpu_resume.py --distributed zero3 --method lora --out bench/out/resume-zero3-lora.json

Model: the SmolLM2-135M shape with random weights; data: the real Debian chat sample.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.gpu_training import build_model_dir, write_examples  # noqa: E402
from pipeline.paths import PROJECT_ROOT  # noqa: E402
from pipeline.training.checkpoints import latest_complete  # noqa: E402
from pipeline.training.distributed import launch_command  # noqa: E402


def _descendants(pid: int) -> list[int]:
    children = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return children + [d for c in children for d in _descendants(c)]


def _kill_all(pid: int) -> None:
    """SIGKILL `pid` and every process under it at once, as losing the pod would. (Killing torchrun alone would
    now do as well, since each rank dies with it, but a lost pod takes everything at the same instant.)"""
    for victim in [pid, *_descendants(pid)]:
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _log_tail(log: str, lines: int = 12) -> list[str]:
    # progress bars redraw on one line; what is left says where the run was
    return [line[:300] for line in log.splitlines() if line.strip() and "/s]" not in line][-lines:]


def _step(checkpoint_name: str) -> int:
    return int(checkpoint_name.rsplit("-", 1)[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--distributed", choices=["none", "zero2", "zero3", "fsdp"], default="zero3")
    parser.add_argument("--method", choices=["lora", "full"], default="lora")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--save-steps", type=int, default=10)
    parser.add_argument("--tokenizer", type=Path, default=Path(".bench_assets/smollm2"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-resume"))
    parser.add_argument("--timeout", type=float, default=240, help="seconds each attempt may take")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import torch

    work = args.work / f"{args.distributed}-{args.method}"
    work.mkdir(parents=True, exist_ok=True)
    write_examples(work / "train.jsonl", repeat=8)
    build_model_dir("135m", args.tokenizer, work / "base")
    out = work / "run"
    shutil.rmtree(out, ignore_errors=True)  # an earlier run's checkpoints would be resumed from by the first attempt
    spec = {"train_path": str(work / "train.jsonl"), "base_path": str(work / "base"), "output_dir": str(out),
            "training": {"method": args.method, "distributed": args.distributed, "max_steps": args.steps,
                         "save_steps": args.save_steps, "save_total_limit": 2, "logging_steps": 5, "batch_size": 4,
                         "max_length": 1024, "attn_implementation": "sdpa", "packing": False, "padding_free": True,
                         "learning_rate": 2e-4 if args.method == "lora" else 2e-5}}
    (work / "spec.json").write_text(json.dumps(spec))
    gpus = torch.cuda.device_count()
    command = launch_command(sys.executable, str(work / "spec.json"), gpus, sharded=args.distributed != "none")
    print("command:", " ".join(command), flush=True)

    start = time.monotonic()
    with open(work / "first.log", "w") as log:
        first = subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=log)
        while latest_complete(out / "checkpoints") is None and first.poll() is None and time.monotonic() - start < args.timeout:
            time.sleep(0.1)
        _kill_all(first.pid)
        first.wait()
    time.sleep(1)  # let the killed ranks' files close
    killed_at = latest_complete(out / "checkpoints")
    report = {"gpus": gpus, "distributed": args.distributed, "method": args.method, "planned_steps": args.steps,
              "first_attempt": {"returncode": first.returncode, "killed_after_s": round(time.monotonic() - start, 1),
                                "latest_complete_checkpoint": killed_at.name if killed_at else None,
                                "checkpoint_layout": sorted(p.name for p in killed_at.iterdir()) if killed_at else None,
                                "finished_before_kill": (out / "result.json").exists()}}
    print(report, flush=True)

    # the retry writes to a file, so a retry stopped at the time limit still shows how far it got
    with open(work / "second.log", "w") as log:
        second = subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=log)
        try:
            second.wait(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            _kill_all(second.pid)
            second.wait()
    second_log = (work / "second.log").read_text(errors="replace")
    resumed = [line for line in second_log.splitlines() if "resuming from checkpoint-" in line]
    result = json.loads((out / "result.json").read_text()) if (out / "result.json").exists() else {}
    report["second_attempt"] = {"returncode": second.returncode, "resume_line": resumed[0].strip() if resumed else None,
                                "resumed_from": result.get("resumed_from"), "global_step": result.get("global_step"),
                                "checkpoints_kept": sorted(p.name for p in (out / "checkpoints").glob("checkpoint-*")),
                                "log_tail": _log_tail(second_log) if second.returncode else None}
    # a checkpoint may complete between the last look and the kill, so the resume may start from a later one
    report["ok"] = bool(second.returncode == 0 and resumed and killed_at is not None and result.get("resumed_from")
                        and _step(result["resumed_from"]) >= _step(killed_at.name) and result.get("global_step") == args.steps)
    print(json.dumps(report, indent=2), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"gpu": torch.cuda.get_device_name() if gpus else "cpu", **report}, indent=2))


if __name__ == "__main__":
    main()
