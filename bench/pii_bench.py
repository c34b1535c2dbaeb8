"""Precision and recall of the PII/secret scrubber per type on a hand-labelled set, and what it wrongly scrubs.

Each row of `bench/pii_labelled.jsonl` holds a text, its PII and secret values by type (`pii`) and the values that
must stay (`keep`: versions, section and OID numbers, number lists, git remotes, hashes, UUIDs, ...); rows marked
`debian` are excerpts of the real Debian package descriptions. A labelled value counts as found when a detection of
its type overlaps it; a detection that overlaps no labelled value of its type is a false positive. The independent
detector of the blocking check (`pii_audit`) is measured per row: does it flag rows with PII, does it stay quiet on
rows without, and does it find anything left after scrubbing.

    python bench/pii_bench.py            # writes bench/results/pii.md and bench/results/pii.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.curation.pii import PII_TYPES, find_pii, scrub_text  # noqa: E402
from pipeline.curation.pii_audit import audit_text  # noqa: E402


def locate(text: str, values: list[str]) -> list[tuple[int, int]]:
    """Spans of each value, repeated values taken in order of appearance."""
    spans, next_from = [], Counter()
    for value in values:
        start = text.find(value, next_from[value])
        if start < 0:
            raise ValueError(f"labelled value {value!r} is not in {text!r}")
        spans.append((start, start + len(value)))
        next_from[value] = start + len(value)
    return spans


def score(rows: list[dict]) -> dict:
    tp, fn, fp = Counter(), Counter(), Counter()
    kept, negatives, misses, false_hits, scrubbed_negatives = Counter(), Counter(), [], [], []
    for row in rows:
        text, found = row["text"], find_pii(row["text"])
        labels = list(zip([p["type"] for p in row["pii"]], locate(text, [p["value"] for p in row["pii"]])))
        for kind, (start, end) in labels:
            if any(f.type == kind and f.start < end and start < f.end for f in found):
                tp[kind] += 1
            else:
                fn[kind] += 1
                misses.append({"type": kind, "value": text[start:end], "text": text})
        for f in found:
            if not any(kind == f.type and f.start < end and start < f.end for kind, (start, end) in labels):
                fp[f.type] += 1
                false_hits.append({"type": f.type, "value": f.value, "text": text})
        for item, (start, end) in zip(row["keep"], locate(text, [k["value"] for k in row["keep"]])):
            negatives[item["kind"]] += 1
            if any(f.start < end and start < f.end for f in found):
                scrubbed_negatives.append({"kind": item["kind"], "value": item["value"], "text": text})
            else:
                kept[item["kind"]] += 1
    per_type = {}
    for kind in PII_TYPES:
        t, n, p = tp[kind], fn[kind], fp[kind]
        per_type[kind] = {"labelled": t + n, "found": t, "missed": n, "false_positives": p,
                          "precision": round(t / (t + p), 3) if t + p else None,
                          "recall": round(t / (t + n), 3) if t + n else None}
    total = {k: sum(v[k] for v in per_type.values()) for k in ("labelled", "found", "missed", "false_positives")}
    total["precision"] = round(total["found"] / (total["found"] + total["false_positives"]), 3)
    total["recall"] = round(total["found"] / total["labelled"], 3)
    return {"per_type": per_type, "total": total,
            "negatives": {k: {"listed": negatives[k], "kept": kept[k]} for k in sorted(negatives)},
            "missed": misses, "false_positives": false_hits, "scrubbed_negatives": scrubbed_negatives}


def audit(rows: list[dict]) -> dict:
    """The blocking check's detector at row level, before and after scrubbing."""
    with_pii = [r for r in rows if r["pii"]]
    without = [r for r in rows if not r["pii"]]
    flagged = [r for r in with_pii if audit_text(r["text"])]
    false_alarms = [{"text": r["text"], "found": dict(audit_text(r["text"]))} for r in without if audit_text(r["text"])]
    left = [{"text": scrub_text(r["text"])[0], "found": dict(audit_text(scrub_text(r["text"])[0]))}
            for r in rows if audit_text(scrub_text(r["text"])[0])]
    return {"rows_with_pii": len(with_pii), "flagged_before_scrubbing": len(flagged),
            "row_recall": round(len(flagged) / len(with_pii), 3),
            "rows_without_pii": len(without), "false_alarms": false_alarms,
            "rows_flagged_after_scrubbing": left}


def markdown(result: dict, labelled: str) -> str:
    s, a = result["scrubber"], result["audit"]
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    lines = [f"# PII and secret scrubbing on `{labelled}`", "",
             f"{result['rows']} rows ({result['debian_rows']} excerpts of the real Debian descriptions), "
             f"{s['total']['labelled']} labelled PII/secret values, {sum(v['listed'] for v in s['negatives'].values())} "
             "values that must stay. Command: `python bench/pii_bench.py`.", "",
             "## Scrubber (`pipeline.curation.pii`), per type", "",
             "| type | labelled | found | missed | false positives | precision | recall |", "|---|---|---|---|---|---|---|"]
    for kind, v in s["per_type"].items():
        lines.append(f"| {kind} | {v['labelled']} | {v['found']} | {v['missed']} | {v['false_positives']} | "
                     f"{fmt(v['precision'])} | {fmt(v['recall'])} |")
    t = s["total"]
    lines += [f"| **all** | {t['labelled']} | {t['found']} | {t['missed']} | {t['false_positives']} | "
              f"{fmt(t['precision'])} | {fmt(t['recall'])} |", "",
              "## Values that must stay", "", "| kind | listed | kept |", "|---|---|---|"]
    lines += [f"| {k} | {v['listed']} | {v['kept']} |" for k, v in s["negatives"].items()]
    for title, items, key in (("Missed", s["missed"], "type"), ("False positives", s["false_positives"], "type"),
                              ("Scrubbed though they must stay", s["scrubbed_negatives"], "kind")):
        lines += ["", f"### {title}: {len(items)}", ""]
        lines += [f"- {i[key]} `{i['value']}` in: {i['text'][:120]!r}" for i in items] or ["none"]
    lines += ["", "## Independent detector of `no_pii_or_secrets_left` (`pipeline.curation.pii_audit`), per row", "",
              f"- flags {a['flagged_before_scrubbing']} of {a['rows_with_pii']} rows holding PII or secrets "
              f"(row recall {a['row_recall']:.3f})",
              f"- false alarms on {len(a['false_alarms'])} of {a['rows_without_pii']} rows holding none",
              f"- rows it still flags after scrubbing: {len(a['rows_flagged_after_scrubbing'])}"]
    lines += [f"  - false alarm {i['found']}: {i['text'][:120]!r}" for i in a["false_alarms"]]
    lines += [f"  - after scrubbing {i['found']}: {i['text'][:120]!r}" for i in a["rows_flagged_after_scrubbing"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--labelled", default="bench/pii_labelled.jsonl")
    parser.add_argument("--out", default="bench/results/pii")
    args = parser.parse_args()
    rows = [json.loads(line) for line in (ROOT / args.labelled).read_text().splitlines() if line.strip()]
    result = {"rows": len(rows), "debian_rows": sum(r["source"].startswith("debian") for r in rows),
              "scrubber": score(rows), "audit": audit(rows)}
    out = ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    out.with_suffix(".md").write_text(markdown(result, args.labelled))
    print(markdown(result, args.labelled))


if __name__ == "__main__":
    main()
