"""Token lengths of examples rendered with the base model's chat template: summary numbers and a histogram."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

from pipeline.curation.records import Record


def token_lengths(records: list[Record], tokenizer) -> list[int]:
    """Tokens per example as training sees it: the whole conversation through the tokenizer's chat template."""
    return [len(tokenizer.apply_chat_template(r["messages"], tokenize=True, return_dict=True)["input_ids"]) for r in records]


def token_counter(tokenizer):
    """A record -> token count function for the curation steps."""
    return lambda record: token_lengths([record], tokenizer)[0]


def length_summary(lengths: Sequence[int], max_length: int) -> dict[str, float | int]:
    """Count, mean, percentiles and how many examples the training max_length would truncate."""
    if not lengths:
        return {"examples": 0, "truncated": 0}
    ordered = sorted(lengths)

    def pct(q: float) -> int:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {"examples": len(ordered), "mean": round(sum(ordered) / len(ordered), 1), "min": ordered[0],
            "p50": pct(0.5), "p95": pct(0.95), "max": ordered[-1], "max_length": max_length,
            "truncated": sum(1 for n in ordered if n > max_length)}


def histogram_png(lengths: Sequence[int], max_length: int, bins: int = 30) -> bytes:
    """A PNG histogram with the truncation limit marked."""
    import matplotlib

    matplotlib.use("Agg")  # no display on workers
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3), dpi=80)
    ax.hist(lengths, bins=bins, color="#4c72b0")
    ax.axvline(max_length, color="#c44e52", linestyle="--", label=f"max_length {max_length}")
    ax.set_xlabel("tokens per example (chat template)")
    ax.set_ylabel("examples")
    ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def histogram_markdown(lengths: Sequence[int], max_length: int) -> str:
    """The histogram as an inline image, which the Dagster UI renders in markdown metadata."""
    encoded = base64.b64encode(histogram_png(lengths, max_length)).decode()
    return f"![token lengths](data:image/png;base64,{encoded})"
