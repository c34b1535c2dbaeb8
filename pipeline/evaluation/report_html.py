"""The evaluation report as a short markdown summary (Dagster metadata) and a standalone HTML page (MLflow)."""

from __future__ import annotations

import html
from typing import Any


def _interval(report: dict[str, Any], key: str) -> str:
    low_high = report.get("intervals", {}).get(key)
    return f" [{low_high[0]:.3f}, {low_high[1]:.3f}]" if low_high else ""


def headline_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per model: held-out scores with intervals, general capability, format, judge win rate."""
    rows = []
    general = report.get("general", {})
    for name, s in report["models"].items():
        row = {"model": name, "rouge_l": f"{s['rouge_l']:.4f}{_interval(report, f'{name}_rouge_l')}",
               "loss": s["loss"], "perplexity": s["perplexity"]}
        if name in general:
            row["general_cloze_acc"] = general[name]["cloze_accuracy"]
            row["general_byte_ppl"] = general[name]["byte_perplexity"]
        if name in report.get("format_compliance", {}):
            row["format_ok"] = f"{report['format_compliance'][name]:.3f}{_interval(report, f'{name}_format_compliance')}"
        if name in report.get("judge", {}):
            j = report["judge"][name]
            row["candidate_win_rate_vs_this"] = f"{j['win_rate']:.3f}{_interval(report, f'judge_win_rate_vs_{name}')}"
            row["judge_order_agreement"] = j["order_agreement"]
        rows.append(row)
    quantized = report.get("quantized")
    if quantized and quantized.get("scores"):
        q = quantized["scores"]
        rows.append({"model": f"candidate {quantized['quant_type']} GGUF", "rouge_l": f"{q['rouge_l']:.4f}",
                     "loss": q["loss"], "perplexity": q["perplexity"]})
    keys = list(dict.fromkeys(k for r in rows for k in r))
    return [{k: r.get(k) for k in keys} for r in rows]  # one set of columns, for table metadata


def _md_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    cell = lambda v: "" if v is None else str(v).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines += ["| " + " | ".join(cell(r.get(k)) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def markdown_summary(report: dict[str, Any]) -> str:
    gate = report.get("gate", {})
    failed = [f"- **{check}**: {reason}" for check, reasons in gate.items() for reason in reasons]
    parts = [f"**Gate**: {'blocked' if failed else 'passes'} ({report['examples']} held-out examples, "
             f"{int(report.get('confidence', 0.95) * 100)}% bootstrap intervals)", *failed, "",
             _md_table(headline_rows(report))]
    for other, j in report.get("judge", {}).items():
        parts.append(f"\nJudge `{j['judge']}` vs {other}: win rate {j['win_rate']:.3f} over both orders "
                     f"({j['wins']} wins, {j['ties']} ties or split, {j['losses']} losses); candidate-first-only "
                     f"{j['win_rate_candidate_first_only']:.3f}; order agreement {j['order_agreement']:.3f}.")
    contamination = report.get("contamination")
    if contamination:
        parts.append(f"\nContamination ({contamination['ngram']}-gram overlap with training data):")
        parts.append(_md_table([{"set": name, "examples": s["examples"], "mean": s["mean_overlap"], "max": s["max_overlap"],
                                 f"> {contamination['max_overlap']}": s["contaminated"]}
                                for name, s in contamination["sets"].items()]))
    quantized = report.get("quantized")
    if quantized and quantized.get("drop"):
        d = quantized["drop"]
        parts.append(f"\nQuantized export {quantized['quant_type']} ({quantized['bytes'] / 1e6:.1f} MB): ROUGE-L "
                     f"{d['rouge_l']:+.4f}, loss x{d['loss_ratio']:.4f} against the unquantized candidate.")
    return "\n".join(parts)


def _html_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "<p>(none)</p>"
    keys = list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
    body = "".join("<tr>" + "".join(f"<td>{html.escape('' if r.get(k) is None else str(r[k]))}</td>" for k in keys) + "</tr>"
                   for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def html_report(report: dict[str, Any], title: str) -> str:
    """One self-contained page: gate, headline scores, judge, general capability, contamination, slices, examples."""
    sections = [f"<h1>{html.escape(title)}</h1>", f"<h2>Gate</h2><pre>{html.escape(markdown_summary(report).split(chr(10) + chr(10))[0])}</pre>",
                "<h2>Scores</h2>", _html_table(headline_rows(report))]
    for other, j in report.get("judge", {}).items():
        sections += [f"<h2>Judge vs {html.escape(other)} ({html.escape(j['judge'])})</h2>",
                     f"<p>win rate {j['win_rate']:.3f}, order agreement {j['order_agreement']:.3f}, "
                     f"candidate-first-only {j['win_rate_candidate_first_only']:.3f}, invalid verdicts {j['invalid_verdicts']}</p>",
                     _html_table(j["rows"])]
    if report.get("general"):
        sections += ["<h2>General capability (lm-eval)</h2>",
                     _html_table([{"model": m, **{k: v for k, v in g.items() if not k.startswith("per_doc")}}
                                  for m, g in report["general"].items()])]
    if report.get("contamination"):
        c = report["contamination"]
        sections.append(f"<h2>Contamination ({c['ngram']}-grams, threshold {c['max_overlap']})</h2>")
        for name, s in c["sets"].items():
            sections += [f"<h3>{html.escape(name)}: mean {s['mean_overlap']}, max {s['max_overlap']}, "
                         f"above threshold {s['contaminated']} of {s['examples']}</h3>", _html_table(s["worst"])]
    if report.get("quantized"):
        sections += ["<h2>Quantized export</h2>", _html_table([{k: v for k, v in report["quantized"].items()
                                                                if k not in ("scores", "drop")},
                                                               {**report["quantized"].get("drop", {})}])]
    sections += ["<h2>Slices (ROUGE-L)</h2>", _html_table(report.get("slices", [])),
                 "<h2>Per example</h2>", _html_table(report.get("table", report.get("rows", [])))]
    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:13px}"
             "td,th{border:1px solid #ccc;padding:3px 6px;vertical-align:top;max-width:40em}")
    return f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{style}</style></head><body>{''.join(sections)}</body></html>"
