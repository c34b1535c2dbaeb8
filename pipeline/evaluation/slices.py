"""Beyond one number: format compliance, scores per slice, and bootstrap confidence intervals."""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from pipeline.curation.records import Record
from pipeline.recipe import FormatRecipe


def format_compliance(answers: list[str], fmt: FormatRecipe) -> list[bool] | None:
    """Per answer: does it follow the recipe's format (regex full match and/or JSON valid against the schema)?
    None when the recipe defines no format."""
    if fmt.regex is None and fmt.json_schema is None:
        return None
    pattern = re.compile(fmt.regex) if fmt.regex is not None else None
    validator = None
    if fmt.json_schema is not None:
        from jsonschema import Draft202012Validator

        Draft202012Validator.check_schema(fmt.json_schema)  # a bad schema is the recipe's error, said once
        validator = Draft202012Validator(fmt.json_schema)
    ok = []
    for answer in answers:
        good = pattern is None or pattern.fullmatch(answer) is not None
        if good and validator is not None:
            try:
                good = validator.is_valid(json.loads(answer))
            except ValueError:
                good = False
        ok.append(good)
    return ok


def bootstrap_ci(values: list[float], resamples: int, confidence: float, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (scipy); a single value or a constant list has a zero-width one."""
    import numpy as np
    from scipy.stats import bootstrap

    data = np.asarray(values, dtype=float)
    if len(data) < 2 or np.all(data == data[0]):
        v = float(data[0]) if len(data) else float("nan")
        return (round(v, 4), round(v, 4))
    res = bootstrap((data,), np.mean, n_resamples=resamples, confidence_level=confidence, method="percentile",
                    random_state=np.random.default_rng(seed))
    return (round(float(res.confidence_interval.low), 4), round(float(res.confidence_interval.high), 4))


def _length_bucket(words: int) -> str:
    return "1-5 words" if words <= 5 else "6-10 words" if words <= 10 else "11+ words"


def _group_bucket(size: int) -> str:
    return "1" if size == 1 else "2-3" if size <= 3 else "4+"


def slice_labels(examples: list[Record]) -> list[dict[str, str]]:
    """Each example's slice in every dimension: source file, record shape, size of its group in the eval set,
    and length of its reference answer."""
    group_sizes = Counter(ex.get("group") for ex in examples)
    labels = []
    for ex in examples:
        origin = ex.get("origin") or {}
        labels.append({
            "source_file": Path(str(origin.get("file", "unknown"))).name,
            "shape": str(origin.get("format", "unknown")),
            "group_size": _group_bucket(group_sizes[ex.get("group")]),
            "answer_length": _length_bucket(len(ex["messages"][-1]["content"].split())),
        })
    return labels


def slice_table(examples: list[Record], metric: str, per_model: dict[str, list[float]]) -> list[dict[str, Any]]:
    """Mean of one per-example metric per model in every slice (dimension, value), with the slice's size."""
    buckets: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, labels in enumerate(slice_labels(examples)):
        for dimension, value in labels.items():
            buckets[(dimension, value)].append(i)
    rows = []
    for (dimension, value), idx in sorted(buckets.items()):
        row: dict[str, Any] = {"dimension": dimension, "slice": value, "examples": len(idx)}
        for name, values in per_model.items():
            row[f"{name}_{metric}"] = round(sum(values[i] for i in idx) / len(idx), 4)
        rows.append(row)
    return rows
