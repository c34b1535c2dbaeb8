"""The model card of a candidate: what it is, what made it, how it scored (with intervals), and what it can't do."""

from __future__ import annotations

import json
from typing import Any

from pipeline.evaluation.report_html import markdown_summary


def model_card(report: dict[str, Any], recipe: dict[str, Any], base: dict[str, Any], candidate: dict[str, Any],
               data_versions: dict[str, str]) -> str:
    """Markdown model card; every number comes from the eval report or the lineage passed in."""
    training = recipe["training"]
    method = candidate["method"] + (" + DPO" if not candidate.get("dpo_skipped", True) else "")
    lora = training["lora"]
    quantized = report.get("quantized") or {}
    lines = [
        f"# {recipe['registry']['model_name']}",
        "",
        f"Fine-tuned from **{base['name']}** (weights sha256 `{base['sha256']}`, source `{base['source']}`) "
        f"by recipe `{recipe['name']}`.",
        "",
        "## Method",
        f"- {method}" + (f", LoRA r={lora['r']} alpha={lora['alpha']} on {lora['target_modules']}" if candidate["method"] != "full" else ""),
        f"- {training['epochs']} epoch(s), learning rate {training['learning_rate']} ({training['lr_scheduler']}), "
        f"batch {training['batch_size']}, max length {training['max_length']}, seed {training['seed']}",
        f"- weights sha256 `{candidate['weights_sha256']}`",
        "",
        "## Data versions",
        *[f"- {name}: `{version}`" for name, version in sorted(data_versions.items())],
        "",
        "## Evaluation",
        markdown_summary(report),
        "",
        "## Serving",
    ]
    if quantized.get("path"):
        lines.append(f"- GGUF ({quantized['quant_type']}, sha256 `{quantized.get('sha256', '')}`) beside the adapter: "
                     "`llama-cli -m model.gguf -cnv` or an Ollama Modelfile `FROM ./model.gguf`.")
    lines += ["- Adapter over the base with PEFT, or the merged safetensors model with transformers.", "",
              "## Known limits", *[f"- {limit}" for limit in known_limits(report, recipe)], "",
              "## Recipe", "```json", json.dumps(recipe, indent=2, sort_keys=True), "```"]
    return "\n".join(lines)


def known_limits(report: dict[str, Any], recipe: dict[str, Any]) -> list[str]:
    limits = [
        f"Scored on {report['examples']} held-out examples; intervals are {int(report.get('confidence', 0.95) * 100)}% "
        "percentile bootstrap over examples and say nothing about other distributions.",
        "Held-out loss has no interval (it is pooled over tokens, not per example).",
    ]
    judges = {j["judge"] for j in report.get("judge", {}).values()}
    if any(j.startswith("reference:") for j in judges):
        limits.append("No LLM judge was configured: win rates compare ROUGE-L against the reference, which rewards "
                      "word overlap, not correctness.")
    if "general" not in report:
        limits.append("General-capability regression was not run (evaluation.general.enabled is off).")
    else:
        limits.append(f"General capability is measured on {recipe['evaluation']['general']['prose']} prose only "
                      "(last-word cloze and perplexity), not on reasoning, code or other languages.")
    if not report.get("format_compliance"):
        limits.append("The recipe defines no answer format, so format compliance was not measured.")
    quantized = report.get("quantized") or {}
    if quantized.get("drop"):
        limits.append(f"The {quantized['quant_type']} GGUF scores ROUGE-L {quantized['drop']['rouge_l']:+.4f} against "
                      "the unquantized model on the held-out set.")
    return limits
