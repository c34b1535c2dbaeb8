"""What a training run reports while it runs: loss, learning rate, grad norm, tokens/s, peak memory, a progress
line; early stopping on eval loss; and the loss-curve plot for the asset's metadata."""

from __future__ import annotations

import io
import math
import time
from collections.abc import Callable
from typing import Any

Reporter = Callable[[str, dict[str, Any]], None]
"""Called as reporter(message, metrics) at every logging step: the door to Dagster Pipes and MLflow."""


def peak_memory_mb() -> float:
    """Peak GPU memory allocated by torch on a GPU; the process's peak resident memory on CPU."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def reporting_callback(reporter: Reporter):
    """Turns every Trainer log into one progress line and a metrics dict (rank 0 only)."""
    from transformers import TrainerCallback

    class ReportingCallback(TrainerCallback):
        def __init__(self) -> None:
            self._last: tuple[float, int] | None = None

        def on_train_begin(self, args, state, control, **kwargs):
            self._last = (time.monotonic(), state.num_input_tokens_seen)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero:
                return
            metrics = {k: float(v) for k, v in (logs or {}).items() if isinstance(v, (int, float)) and math.isfinite(v)}
            now, tokens = time.monotonic(), state.num_input_tokens_seen
            if self._last and now > self._last[0] and "loss" in metrics:
                metrics["tokens_per_second"] = (tokens - self._last[1]) / (now - self._last[0])
                self._last = (now, tokens)
            metrics["num_input_tokens_seen"] = float(tokens)
            metrics["peak_memory_mb"] = peak_memory_mb()
            progress = f"step {state.global_step}/{state.max_steps} ({100 * state.global_step / max(state.max_steps, 1):.0f}%)"
            reporter(progress + " " + " ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items())),
                     {**metrics, "step": state.global_step})

    return ReportingCallback()


def early_stopping_callback(patience: int):
    """Stops training after `patience` evaluations without a lower eval loss."""
    from transformers import TrainerCallback

    class EarlyStopping(TrainerCallback):
        def __init__(self) -> None:
            self.best, self.bad = math.inf, 0

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            loss = (metrics or {}).get("eval_loss")
            if loss is None:
                return
            if loss < self.best:
                self.best, self.bad = loss, 0
            else:
                self.bad += 1
                if self.bad >= patience:
                    control.should_training_stop = True

    return EarlyStopping()


def loss_curve_png(history: list[dict[str, Any]]) -> bytes | None:
    """A PNG of train (and eval) loss against the step; None when nothing was logged."""
    train = [(h["step"], h["loss"]) for h in history if "loss" in h]
    evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
    if not train and not evals:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=80)
    for points, label in ((train, "train loss"), (evals, "eval loss")):
        if points:
            ax.plot(*zip(*points), marker=".", label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
