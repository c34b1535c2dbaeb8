"""General-capability regression: lm-evaluation-harness tasks defined in tasks/*.yaml, on real English prose.

The prose ships on every machine that runs the pipeline, so nothing is downloaded and nothing is written by hand:
the Python language reference (`pydoc_data.topics`, part of CPython) or Debian's license texts. Items are built
deterministically from it (seeded), written as JSONL, and handed to lm-eval's own `json` loader.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path
from typing import Any

import yaml

from pipeline.recipe import GeneralCapabilityRecipe

TASKS_DIR = Path(__file__).parent / "tasks"
LICENSES = Path("/usr/share/common-licenses")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_LAST_WORD = re.compile(r"^(.*\S)\s+([A-Za-z]{4,})\.$", re.DOTALL)


def prose_paragraphs(source: str) -> list[str]:
    """Paragraphs of running prose: unindented blocks (indented ones are code or grammar) of 15+ words ending a sentence."""
    if source == "python_reference":
        import pydoc_data.topics

        texts = [pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics)]
    else:
        if not LICENSES.is_dir():
            raise FileNotFoundError(f"{LICENSES} not found (Debian's base-files); use prose: python_reference")
        texts = [p.read_text(errors="replace") for p in sorted(LICENSES.iterdir()) if p.is_file()]
    paragraphs = []
    for text in texts:
        for block in re.split(r"\n\s*\n", text):
            lines = block.splitlines()
            if not lines or any(line.startswith((" ", "\t", "*", "=", "-")) for line in lines):
                continue
            para = " ".join(line.strip() for line in lines)
            if len(para.split()) >= 15 and para.endswith(".") and sum(c.isalpha() for c in para) > 0.7 * len(para):
                paragraphs.append(para)
    return list(dict.fromkeys(paragraphs))  # the reference repeats some paragraphs across topics


def build_items(recipe: GeneralCapabilityRecipe) -> dict[str, list[dict[str, Any]]]:
    """Cloze items (context, 4 choices, gold index) and perplexity passages, sampled with the recipe's seed."""
    rng = random.Random(recipe.seed)
    paragraphs = prose_paragraphs(recipe.prose)
    sentences = [s for p in paragraphs for s in _SENTENCE_END.split(p) if 8 <= len(s.split()) <= 40]
    candidates = [(m.group(1), m.group(2)) for s in sentences if (m := _LAST_WORD.match(s))]
    rng.shuffle(candidates)
    pool = sorted({word.lower() for _, word in candidates})
    cloze = []
    for context, word in candidates[: recipe.cloze_docs]:
        distractors = rng.sample([w for w in pool if w != word.lower()], 3)
        choices = [word.lower()] + distractors
        rng.shuffle(choices)
        cloze.append({"context": context, "choices": [c + "." for c in choices], "gold": choices.index(word.lower())})
    passages, words = [], [w for p in paragraphs for w in p.split()]
    starts = sorted(rng.sample(range(0, max(len(words) - recipe.passage_words, 1), recipe.passage_words),
                           min(recipe.perplexity_docs, max(len(words) // recipe.passage_words - 1, 1))))
    for start in starts:
        passages.append({"text": " ".join(words[start : start + recipe.passage_words])})
    return {"prose_cloze": cloze, "prose_perplexity": passages}


def write_items(items: dict[str, list[dict[str, Any]]], folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for task, docs in items.items():
        paths[task] = folder / f"{task}.jsonl"
        paths[task].write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8")
    return paths


def items_version(items: dict[str, list[dict[str, Any]]]) -> str:
    return hashlib.sha256(json.dumps(items, sort_keys=True).encode()).hexdigest()


def item_texts(items: dict[str, list[dict[str, Any]]]) -> dict[str, list[tuple[str, str]]]:
    """(id, text) pairs of every task, for the contamination report."""
    return {
        "general/prose_cloze": [(f"cloze-{i}", f"{d['context']} {d['choices'][d['gold']]}") for i, d in enumerate(items["prose_cloze"])],
        "general/prose_perplexity": [(f"passage-{i}", d["text"]) for i, d in enumerate(items["prose_perplexity"])],
    }


def task_configs(paths: dict[str, Path]) -> list[dict[str, Any]]:
    """The repo's YAML task definitions with their data files filled in."""
    configs = []
    for task, path in paths.items():
        config = yaml.safe_load((TASKS_DIR / f"{task}.yaml").read_text())
        config["dataset_kwargs"]["data_files"]["test"] = str(path)
        configs.append(config)
    return configs


def run_tasks(model, tokenizer, paths: dict[str, Path], batch_size: int) -> dict[str, Any]:
    """Score one loaded model (a transformers or PEFT model) on the tasks through lm-eval; per-document results kept."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    out = simple_evaluate(model=lm, tasks=task_configs(paths), task_manager=TaskManager(include_defaults=False),
                          bootstrap_iters=0, log_samples=True, random_seed=0, numpy_random_seed=0,
                          torch_random_seed=0, fewshot_random_seed=0)
    results = out["results"]
    samples = out["samples"]
    return {
        "cloze_accuracy": round(results["prose_cloze"]["acc,none"], 4),
        "word_perplexity": round(results["prose_perplexity"]["word_perplexity,none"], 4),
        "byte_perplexity": round(results["prose_perplexity"]["byte_perplexity,none"], 4),
        "bits_per_byte": round(results["prose_perplexity"]["bits_per_byte,none"], 4),
        "per_doc_cloze": [float(s["acc"]) for s in sorted(samples["prose_cloze"], key=lambda s: s["doc_id"])],
    }


def regression_failures(base: dict[str, Any], candidate: dict[str, Any], max_accuracy_drop: float,
                        max_perplexity_ratio: float) -> list[str]:
    """Reasons the candidate forgot general skills the base had; empty when within tolerance."""
    failures = []
    drop = base["cloze_accuracy"] - candidate["cloze_accuracy"]
    if drop > max_accuracy_drop:
        failures.append(f"general cloze accuracy fell {drop:.3f} (base {base['cloze_accuracy']:.3f}, candidate "
                        f"{candidate['cloze_accuracy']:.3f}), more than the allowed {max_accuracy_drop:.3f}")
    ratio = candidate["byte_perplexity"] / base["byte_perplexity"]
    if ratio > max_perplexity_ratio:
        failures.append(f"byte perplexity on general prose is {ratio:.3f}x the base's (base {base['byte_perplexity']:.3f}, "
                        f"candidate {candidate['byte_perplexity']:.3f}), above the allowed {max_perplexity_ratio:.3f}x")
    return failures
