"""Build the evaluation report and decide the gate. Every model sees the same held-out examples."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.curation.records import Record
from pipeline.evaluation.scoring import ModelScores, comparison_rows, score_model
from pipeline.recipe import EvaluationRecipe, GateRecipe


def win_rate(candidate: ModelScores, other: ModelScores) -> float:
    """Share of examples where the candidate's ROUGE-L beats the other's; ties count half."""
    pairs = list(zip(candidate.per_example_rouge_l, other.per_example_rouge_l))
    wins = sum(1.0 if c > o else 0.5 if c == o else 0.0 for c, o in pairs)
    return wins / max(len(pairs), 1)


def evaluate(base_path: Path, adapter_path: Path, heldout: list[Record], recipe: EvaluationRecipe,
             champion_adapter: Path | None = None) -> dict[str, Any]:
    """Score base (adapter disabled), candidate and, when given, the champion adapter on the same examples."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    examples = heldout[: recipe.max_examples]
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(adapter_path), adapter_name="candidate")
    args = (tokenizer, examples, recipe.batch_size, recipe.max_new_tokens)

    with model.disable_adapter():  # the base itself, without a second copy of its weights
        base_scores = score_model("base", model, *args)
    candidate = score_model("candidate", model, *args)
    scores = [base_scores, candidate]
    if champion_adapter is not None:
        model.load_adapter(str(champion_adapter), adapter_name="champion")
        model.set_adapter("champion")
        scores.append(score_model("champion", model, *args))
        model.set_adapter("candidate")

    report: dict[str, Any] = {
        "examples": len(examples),
        "models": {s.name: s.summary() for s in scores},
        "rouge_l_gain_vs_base": round(candidate.rouge_l - base_scores.rouge_l, 4),
        "loss_ratio_vs_base": round(candidate.loss / base_scores.loss, 4) if base_scores.loss else None,
        "win_rate_vs_base": round(win_rate(candidate, base_scores), 4),
        "rows": comparison_rows(examples, scores),
    }
    if champion_adapter is not None:
        report["rouge_l_gain_vs_champion"] = round(candidate.rouge_l - scores[2].rouge_l, 4)
        report["win_rate_vs_champion"] = round(win_rate(candidate, scores[2]), 4)
    return report


def gate_failures(report: dict[str, Any], gate: GateRecipe) -> list[str]:
    """Reasons the candidate may not be promoted; empty when it passes."""
    failures = []
    gain = report["rouge_l_gain_vs_base"]
    if gain < gate.min_rouge_l_gain:
        failures.append(f"ROUGE-L gain over base {gain:+.4f} is below the required {gate.min_rouge_l_gain:+.4f} "
                        f"(base {report['models']['base']['rouge_l']:.4f}, candidate {report['models']['candidate']['rouge_l']:.4f})")
    ratio = report["loss_ratio_vs_base"]
    if ratio is not None and ratio > gate.max_loss_ratio:
        failures.append(f"held-out loss is {ratio:.3f}x the base's, above the allowed {gate.max_loss_ratio:.3f}x")
    return failures


def beats_champion(report: dict[str, Any]) -> bool:
    """A candidate becomes champion when there is none, or when it scores higher on the same examples."""
    return "champion" not in report["models"] or report["rouge_l_gain_vs_champion"] > 0
