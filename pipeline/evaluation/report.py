"""Build the evaluation report and decide the gate. Every model sees the same held-out examples."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.curation.records import Record
from pipeline.evaluation.analysis import analyse
from pipeline.evaluation.scoring import ModelScores, comparison_rows, score_model
from pipeline.recipe import EvaluationRecipe, GateRecipe


def win_rate(candidate: ModelScores, other: ModelScores) -> float:
    """Share of examples where the candidate's ROUGE-L beats the other's; ties count half."""
    pairs = list(zip(candidate.per_example_rouge_l, other.per_example_rouge_l))
    wins = sum(1.0 if c > o else 0.5 if c == o else 0.0 for c, o in pairs)
    return wins / max(len(pairs), 1)


def is_adapter(path: Path) -> bool:
    """True for a PEFT adapter folder, False for a full model folder (full fine-tuning, or a merged model)."""
    return (Path(path) / "adapter_config.json").exists()


def evaluate(base_path: Path, candidate_path: Path, heldout: list[Record], recipe: EvaluationRecipe,
             champion_path: Path | None = None, general_paths: dict[str, Path] | None = None) -> dict[str, Any]:
    """Score base, candidate and, when given, the champion on the same examples. Candidate and champion are each
    an adapter (scored over the one base, whose own score comes with adapters disabled) or a full model. With
    `general_paths` (built lm-eval task data), base and candidate also run the general-capability tasks."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    examples = heldout[: recipe.max_examples]
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    args = (tokenizer, examples, recipe.batch_size, recipe.max_new_tokens)
    general: dict[str, Any] = {}

    def run_general(name: str, model) -> None:
        if general_paths:
            from pipeline.evaluation.general import run_tasks

            general[name] = run_tasks(model, tokenizer, general_paths, recipe.general.batch_size)

    def load(path: Path):
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)

    base = load(base_path)
    adapters = {name: p for name, p in (("candidate", candidate_path), ("champion", champion_path))
                if p is not None and is_adapter(p)}
    model = base
    for name, path in adapters.items():
        if isinstance(model, PeftModel):
            model.load_adapter(str(path), adapter_name=name)
        else:
            model = PeftModel.from_pretrained(base, str(path), adapter_name=name)
    if isinstance(model, PeftModel):
        with model.disable_adapter():  # the base itself, without a second copy of its weights
            base_scores = score_model("base", model, *args)
            run_general("base", model)
    else:
        base_scores = score_model("base", model, *args)
        run_general("base", model)

    def score(name: str, path: Path):
        if name in adapters:
            model.set_adapter(name)
            return score_model(name, model, *args), model
        full = load(path)  # a full model: its own weights
        return score_model(name, full, *args), full

    candidate, candidate_model = score("candidate", candidate_path)
    run_general("candidate", candidate_model)
    scores = [base_scores, candidate]
    if champion_path is not None:
        scores.append(score("champion", champion_path)[0])

    report: dict[str, Any] = {
        "examples": len(examples),
        "models": {s.name: s.summary() for s in scores},
        "rouge_l_gain_vs_base": round(candidate.rouge_l - base_scores.rouge_l, 4),
        "loss_ratio_vs_base": round(candidate.loss / base_scores.loss, 4) if base_scores.loss else None,
        "win_rate_vs_base": round(win_rate(candidate, base_scores), 4),
        "rows": comparison_rows(examples, scores),
    }
    if champion_path is not None:
        report["rouge_l_gain_vs_champion"] = round(candidate.rouge_l - scores[2].rouge_l, 4)
        report["win_rate_vs_champion"] = round(win_rate(candidate, scores[2]), 4)
    report.update(analyse(examples, scores, recipe))
    if general:
        report["general"] = general
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
    judged = report.get("judge", {}).get("base")
    if judged and judged["win_rate"] < gate.min_win_rate_vs_base:
        failures.append(f"judge ({judged['judge']}) win rate against the base {judged['win_rate']:.3f} over both orders "
                        f"is below the required {gate.min_win_rate_vs_base:.3f}")
    return failures


def champion_failures(report: dict[str, Any], gate: GateRecipe) -> list[str]:
    """The candidate must beat or tie the champion on the judge; empty when there is no champion."""
    judged = report.get("judge", {}).get("champion")
    if judged and judged["win_rate"] < gate.min_win_rate_vs_champion:
        return [f"judge ({judged['judge']}) win rate against the champion {judged['win_rate']:.3f} over both orders "
                f"({judged['wins']} wins, {judged['ties']} ties or split, {judged['losses']} losses) is below the "
                f"required {gate.min_win_rate_vs_champion:.3f}"]
    return []


def quantized_drop(model, tokenizer, heldout: list[Record], recipe: EvaluationRecipe, report: dict[str, Any]) -> dict[str, Any]:
    """Score the quantized model on the same held-out examples; its drop against the unquantized candidate."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    scores = score_model("quantized", model, tokenizer, heldout[: recipe.max_examples], recipe.batch_size,
                         recipe.max_new_tokens)
    unquantized = report["models"]["candidate"]
    return {"scores": scores.summary(),
            "drop": {"rouge_l": round(scores.rouge_l - unquantized["rouge_l"], 4),
                     "loss_ratio": round(scores.loss / unquantized["loss"], 4) if unquantized["loss"] else None,
                     "same_answers": sum(a == b for a, b in zip(scores.answers, report_answers(report)))}}


def report_answers(report: dict[str, Any]) -> list[str]:
    return [row["candidate_answer"] for row in report["table"]]


def beats_champion(report: dict[str, Any]) -> bool:
    """A candidate becomes champion when there is none, or when it scores higher on the same examples."""
    return "champion" not in report["models"] or report["rouge_l_gain_vs_champion"] > 0
