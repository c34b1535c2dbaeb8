"""What the scores mean: pairwise judging, format compliance, slices, intervals and the side-by-side table."""

from __future__ import annotations

from typing import Any

from pipeline.curation.records import Record
from pipeline.evaluation.judge import compare, make_judge
from pipeline.evaluation.scoring import ModelScores
from pipeline.evaluation.slices import bootstrap_ci, format_compliance, slice_table
from pipeline.recipe import EvaluationRecipe


def _request(example: Record) -> str:
    """The last user turn: what the answer responds to."""
    users = [m["content"] for m in example["messages"][:-1] if m["role"] == "user"]
    return users[-1] if users else ""


def analyse(examples: list[Record], scores: list[ModelScores], recipe: EvaluationRecipe) -> dict[str, Any]:
    by_name = {s.name: s for s in scores}
    candidate = by_name["candidate"]
    ci = lambda values: bootstrap_ci(values, recipe.bootstrap_resamples, recipe.confidence)  # noqa: E731

    judge = make_judge(recipe.judge)
    n = min(len(examples), recipe.judge.max_examples)
    ids = [ex["id"] for ex in examples]
    requests = [_request(ex) for ex in examples]
    references = [ex["messages"][-1]["content"] for ex in examples]
    judged = {}
    for other in ("base", "champion"):
        if other in by_name:
            result = compare(judge, requests[:n], references[:n], candidate.answers[:n], by_name[other].answers[:n], ids[:n])
            result["win_rate_ci"] = ci(result["per_example_scores"])
            judged[other] = result

    intervals: dict[str, Any] = {f"{s.name}_rouge_l": ci(s.per_example_rouge_l) for s in scores}
    for other in ("base", "champion"):
        if other in by_name:
            diffs = [c - o for c, o in zip(candidate.per_example_rouge_l, by_name[other].per_example_rouge_l)]
            intervals[f"rouge_l_gain_vs_{other}"] = ci(diffs)  # paired: each example against itself
            intervals[f"judge_win_rate_vs_{other}"] = judged[other]["win_rate_ci"]

    compliance: dict[str, Any] = {}
    per_example_format: dict[str, list[bool]] = {}
    for s in scores:
        ok = format_compliance(s.answers, recipe.answer_format)
        if ok is not None:
            per_example_format[s.name] = ok
            compliance[s.name] = round(sum(ok) / max(len(ok), 1), 4)
            intervals[f"{s.name}_format_compliance"] = ci([float(v) for v in ok])

    table = []
    for i, ex in enumerate(examples):
        row: dict[str, Any] = {"id": ex["id"], "reference": references[i]}
        for s in scores:
            row[f"{s.name}_answer"] = s.answers[i]
            row[f"{s.name}_rouge_l"] = round(s.per_example_rouge_l[i], 3)
            if s.name in per_example_format:
                row[f"{s.name}_format_ok"] = per_example_format[s.name][i]
        for other, result in judged.items():
            row[f"judge_vs_{other}"] = result["per_example_scores"][i] if i < n else None
        table.append(row)

    return {
        "judge": judged,
        "format_compliance": compliance,
        "intervals": intervals,
        "confidence": recipe.confidence,
        "slices": slice_table(examples, "rouge_l", {s.name: s.per_example_rouge_l for s in scores}),
        "table": table,
    }
