"""Build the small demo dataset in data/sample/ from the real Debian package summaries.

Run from the repository root: python data/build_sample.py [--shared ../shared/data/debian-package-summaries]
The output is deterministic: the same source files give byte-identical samples.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import re
from collections import defaultdict
from pathlib import Path

INSTRUCTION = "Write the one-line summary of this Debian package from its description."
EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+")
FAMILIES = 330  # about 500 examples: ~420 train and ~80 held-out after the split
GOLDEN_FAMILIES = 40  # a frozen eval set from families that never enter the sample
PREFERENCE_PAIRS = 150  # for the DPO stage; only families already in the sample, so the split covers them


def stable_rank(key: str) -> str:
    return hashlib.sha256(f"sample-v1:{key}".encode()).hexdigest()


def load_families(path: Path) -> dict[str, list[dict]]:
    families: dict[str, list[dict]] = defaultdict(list)
    with gzip.open(path / "records.jsonl.gz", "rt", encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            # Keep descriptions short enough for a CPU demo, long enough to summarise.
            if 120 <= len(rec["description"]) <= 900 and rec["summary"].strip():
                families[rec["source"]].append(rec)
    return families


def pick(families: dict[str, list[dict]]) -> tuple[list[dict], list[dict]]:
    """Families with e-mail addresses first (to exercise scrubbing), then a seeded shuffle."""
    order = sorted(families, key=stable_rank)
    with_email = [s for s in order if any(EMAIL.search(r["description"]) for r in families[s])][:12]
    rest = [s for s in order if s not in with_email]
    chosen = with_email + rest[: FAMILIES - len(with_email)]
    golden = rest[FAMILIES - len(with_email) : FAMILIES - len(with_email) + GOLDEN_FAMILIES]
    sample = [r for s in chosen for r in sorted(families[s], key=lambda r: r["package"])[:4]]
    golden_recs = [sorted(families[s], key=lambda r: r["package"])[0] for s in golden]
    return sample, golden_recs


def prompt(rec: dict) -> str:
    return f"{INSTRUCTION}\n\n{rec['description']}"


def as_alpaca(rec: dict) -> dict:
    return {"instruction": INSTRUCTION, "input": rec["description"], "output": rec["summary"],
            "source": rec["source"], "package": rec["package"]}


def as_sharegpt(rec: dict) -> dict:
    return {"conversations": [{"from": "human", "value": prompt(rec)}, {"from": "gpt", "value": rec["summary"]}],
            "source": rec["source"], "package": rec["package"]}


def as_chatml(rec: dict) -> dict:
    return {"messages": [{"role": "user", "content": prompt(rec)}, {"role": "assistant", "content": rec["summary"]}],
            "source": rec["source"], "package": rec["package"]}


# Lines that a real export contains now and then; the pipeline must quarantine them, not crash.
MALFORMED_ALPACA = [
    '{"instruction": "Write the one-line summary", "input": "truncated line',
    '{"instruction": "Write the one-line summary of this Debian package.", "input": "A tool.", "output": ""}',
    '{"instruction": 42, "input": "numbers are not text", "output": "bad types"}',
    "[1, 2, 3]",
]
MALFORMED_CHATML = [
    '{"messages": [{"role": "user", "content": "No answer follows this turn."}]}',
    '{"messages": "not a list"}',
]


def preference_pairs(path: Path, sample: list[dict]) -> list[dict]:
    """Preference pairs whose prompt is a sampled package's description, tagged with its `source` family."""
    by_description = {r["description"]: r for r in sample}
    pairs = []
    with gzip.open(path / "preferences.jsonl.gz", "rt", encoding="utf-8") as f:
        for line in f:
            pair = json.loads(line)
            rec = by_description.get(pair["prompt"].split("\n\n", 1)[-1])
            if rec is not None:
                pairs.append({"prompt": pair["prompt"], "chosen": pair["chosen"], "rejected": pair["rejected"],
                              "source": rec["source"], "package": rec["package"]})
    pairs.sort(key=lambda p: stable_rank(f"pref:{p['package']}:{p['rejected']}"))
    return pairs[:PREFERENCE_PAIRS]


def write_jsonl(path: Path, rows: list[dict], extra_lines: list[str] = ()) -> None:
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    # Malformed lines are spread through the file, not appended, as in a real export.
    for i, bad in enumerate(extra_lines):
        lines.insert((i + 1) * len(lines) // (len(extra_lines) + 1), bad)
    text = "\n".join(lines) + "\n"
    if path.suffix == ".gz":
        with gzip.GzipFile(path, "wb", mtime=0) as f:  # mtime=0 keeps the bytes reproducible
            f.write(text.encode())
    else:
        path.write_text(text, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shared", type=Path, default=Path("../shared/data/debian-package-summaries"))
    parser.add_argument("--out", type=Path, default=Path("data/sample"))
    args = parser.parse_args()

    sample, golden = pick(load_families(args.shared))
    thirds = [[], [], []]
    for rec in sample:
        thirds[int(stable_rank(rec["package"]), 16) % 3].append(rec)
    alpaca, sharegpt, chatml = thirds
    # Exact duplicates across files and shapes: the same package exported twice.
    chatml_dupes = [as_chatml(r) for r in alpaca[:6]]

    args.out.mkdir(parents=True, exist_ok=True)
    write_jsonl(args.out / "alpaca.jsonl", [as_alpaca(r) for r in alpaca], MALFORMED_ALPACA)
    write_jsonl(args.out / "sharegpt.jsonl.gz", [as_sharegpt(r) for r in sharegpt])
    write_jsonl(args.out / "chatml.jsonl", [as_chatml(r) for r in chatml] + chatml_dupes, MALFORMED_CHATML)
    write_jsonl(args.out / "golden.jsonl", [as_chatml(r) for r in golden])
    preferences = preference_pairs(args.shared, sample)
    write_jsonl(args.out / "preferences.jsonl", preferences)
    print(f"sample: {len(sample)} records from {FAMILIES} families "
          f"(alpaca {len(alpaca)}, sharegpt {len(sharegpt)}, chatml {len(chatml)} + {len(chatml_dupes)} duplicates); "
          f"golden: {len(golden)}; preference pairs: {len(preferences)}")


if __name__ == "__main__":
    main()
