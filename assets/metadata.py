"""Turn plain results into Dagster UI metadata: tables, markdown previews and numbers."""


from collections import Counter
from typing import Any

import dagster as dg

from pipeline.curation.records import Record


def table(rows: list[dict[str, Any]]) -> dg.MetadataValue:
    """A typed table; column types follow the first row."""
    if not rows:
        return dg.MetadataValue.md("_(none)_")
    kinds = {bool: "bool", int: "int", float: "float"}
    columns = [dg.TableColumn(name, kinds.get(type(value), "string")) for name, value in rows[0].items()]
    records = [dg.TableRecord({k: (v if isinstance(v, (bool, int, float)) or v is None else str(v)) for k, v in r.items()}) for r in rows]
    return dg.MetadataValue.table(records=records, schema=dg.TableSchema(columns=columns))


def counts_table(counter: Counter, key: str = "reason") -> dg.MetadataValue:
    return table([{key: k, "count": v} for k, v in counter.most_common()])


def _clip(text: str, n: int = 120) -> str:
    text = text.replace("\n", " ").replace("|", "\\|")
    return text if len(text) <= n else text[: n - 1] + "…"


def preview(records: list[Record], n: int = 5) -> dg.MetadataValue:
    """The first records as a markdown table: prompt, answer, group and origin."""
    lines = ["| id | group | prompt | answer | origin |", "|---|---|---|---|---|"]
    for rec in records[:n]:
        origin = rec.get("origin", {})
        lines.append(f"| {rec['id']} | {_clip(rec['group'], 30)} | {_clip(rec['messages'][-2]['content'])} | "
                     f"{_clip(rec['messages'][-1]['content'])} | {origin.get('file')}:{origin.get('line')} |")
    return dg.MetadataValue.md("\n".join(lines))
