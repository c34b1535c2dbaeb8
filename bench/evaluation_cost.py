"""Time the fuller evaluation's added pieces on a real model with the demo recipe's defaults.

    python bench/evaluation_cost.py --model .store/models/base/SmolLM2-135M-Instruct-<sha12> [--heldout N]

Prints wall and CPU seconds of: building the general tasks, lm-eval on one model, the contamination report over the
demo's sample, the reference judge on both orders, GGUF export, loading the GGUF back and scoring it on held-out
examples. Each is paid once per evaluation (lm-eval twice: base and candidate).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project root, not an installed copy


@contextmanager
def timed(name: str, results: dict):
    wall, cpu = time.perf_counter(), time.process_time()
    yield
    results[name] = {"wall_s": round(time.perf_counter() - wall, 1), "cpu_s": round(time.process_time() - cpu, 1)}
    print(f"{name}: {results[name]}", flush=True)


def main() -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.curation.steps import read_golden, read_sources
    from pipeline.evaluation import contamination, general
    from pipeline.evaluation.export_gguf import export_gguf, load_gguf
    from pipeline.evaluation.judge import ReferenceJudge, compare
    from pipeline.evaluation.scoring import score_model
    from pipeline.recipe import Recipe

    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--heldout", type=int, default=80, help="held-out examples scored for the GGUF's drop")
    parser.add_argument("--recipe", default="recipes/default.yaml")
    parser.add_argument("--skip-general", action="store_true", help="leave out the lm-eval tasks (timed apart)")
    args = parser.parse_args()
    recipe = Recipe.from_yaml(args.recipe)
    ev = recipe.evaluation
    results: dict = {"threads": torch.get_num_threads()}
    records = read_sources(recipe.data).records
    heldout, train = records[: args.heldout], records[args.heldout :]
    work = Path(tempfile.mkdtemp(prefix="eval-cost-"))

    with timed("general_build_items", results):
        items = general.build_items(ev.general)
        paths = general.write_items(items, work / "general")
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    if not args.skip_general:
        with timed("lm_eval_one_model", results):
            scores = general.run_tasks(model, tokenizer, paths, ev.general.batch_size)
        results["general_scores"] = {k: v for k, v in scores.items() if not k.startswith("per_doc")}
    with timed("contamination_report", results):
        grams = contamination.training_ngrams([contamination.record_text(r) for r in train], ev.contamination_ngram)
        sets = {"heldout": [(r["id"], contamination.record_text(r)) for r in heldout],
                "golden": [(r["id"], contamination.record_text(r)) for r in read_golden(recipe.data)],
                **general.item_texts(items)}
        contamination.overlap_report(sets, grams, ev.contamination_ngram, recipe.gate.max_contamination_overlap)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    with timed("heldout_scoring_unquantized", results):
        plain = score_model("model", model, tokenizer, heldout, ev.batch_size, ev.max_new_tokens)
    with timed("reference_judge_both_orders", results):
        refs = [r["messages"][-1]["content"] for r in heldout][: ev.judge.max_examples]
        compare(ReferenceJudge(), refs, refs, plain.answers[: len(refs)], refs, [str(i) for i in range(len(refs))])
    with timed("gguf_export", results):
        info = export_gguf(args.model, work / "model.gguf", ev.quantized.quant_type, ev.quantized.tokenizer_pre)
    results["gguf_mb"] = round(info["bytes"] / 1e6, 1)
    with timed("gguf_load_and_heldout_scoring", results):
        q_model, q_tokenizer = load_gguf(work / "model.gguf")
        if q_tokenizer.pad_token is None:
            q_tokenizer.pad_token = q_tokenizer.eos_token
        quant = score_model("gguf", q_model, q_tokenizer, heldout, ev.batch_size, ev.max_new_tokens)
    results["quality"] = {"unquantized": plain.summary(), "gguf": quant.summary(),
                          "same_answers": sum(a == b for a, b in zip(plain.answers, quant.answers)), "of": len(heldout)}
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
