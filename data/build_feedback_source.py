"""Build data/sample/feedback_source.jsonl: Debian packages the demo's synthetic production traffic asks about.

Families outside the seed sample and the golden set (so feedback is new data, not a copy of the seeds), with
each package's real summary (what a reviewer's correction says) and a same-section neighbour's summary (what a
weak model answers). Run from the repository root: python data/build_feedback_source.py [--shared ...]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from build_sample import FAMILIES, GOLDEN_FAMILIES, load_families, pick, stable_rank  # noqa: E402

PACKAGES = 160


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shared", type=Path, default=Path("../shared/data/debian-package-summaries"))
    parser.add_argument("--out", type=Path, default=Path("data/sample/feedback_source.jsonl"))
    args = parser.parse_args()
    families = load_families(args.shared)
    sample, golden = pick(families)
    taken = {r["source"] for r in sample + golden}
    order = [s for s in sorted(families, key=lambda s: stable_rank(f"feedback:{s}")) if s not in taken]
    picked = [sorted(families[s], key=lambda r: r["package"])[0] for s in order[:PACKAGES]]
    by_section: dict[str, list[dict]] = {}
    for rec in picked:
        by_section.setdefault(rec["section"], []).append(rec)
    rows = []
    for rec in picked:
        peers = [p for p in by_section[rec["section"]] if p["package"] != rec["package"]] or [p for p in picked if p is not rec]
        neighbour = peers[int(stable_rank(rec["package"]), 16) % len(peers)]
        rows.append({"package": rec["package"], "source": rec["source"], "section": rec["section"],
                     "description": rec["description"], "summary": rec["summary"], "weak_summary": neighbour["summary"]})
    args.out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    print(f"{len(rows)} packages outside the {FAMILIES} sample and {GOLDEN_FAMILIES} golden families -> {args.out}")


if __name__ == "__main__":
    main()
