"""Read raw examples (JSONL, JSONL.gz, Parquet, `datasets.save_to_disk` folders, plain folders of those) row by
row, keeping where each row came from and why a bad one is bad."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class RawLine:
    file: str
    line: int
    value: Any = None
    error: str | None = None  # a quarantine reason when the line can't even be parsed
    detail: str = ""


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_jsonl(path: Path, max_line_bytes: int = 1 << 20, label: str | None = None) -> Iterator[RawLine]:
    """Yield every non-blank line of a JSONL or JSONL.gz file; unreadable lines carry an error, never raise."""
    name = label or path.name
    if not path.exists():
        raise FileNotFoundError(f"source file {path} does not exist")
    with _open_binary(path) as f:
        for number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            if len(raw) > max_line_bytes:
                yield RawLine(name, number, error="oversize", detail=f"line of {len(raw)} bytes")
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield RawLine(name, number, error="invalid_utf8", detail=str(e))
                continue
            try:
                yield RawLine(name, number, value=json.loads(text))
            except json.JSONDecodeError as e:
                yield RawLine(name, number, error="invalid_json", detail=str(e))


def _present(row: dict) -> dict:
    # columnar files hold the union of every row's keys; an alpaca row must not look like chatml because of
    # a null `messages` column
    return {k: v for k, v in row.items() if v is not None}


def read_parquet(path: Path, batch_size: int = 1024, label: str | None = None) -> Iterator[RawLine]:
    """Yield every row of a Parquet file as a dict; `line` is the 1-based row number."""
    import pyarrow.parquet as pq

    name = label or path.name
    number = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size):
        for row in batch.to_pylist():
            number += 1
            yield RawLine(name, number, value=_present(row))


def read_saved_dataset(path: Path, label: str | None = None) -> Iterator[RawLine]:
    """Yield the rows of a dataset saved with `datasets.save_to_disk` (a DatasetDict's splits in name order)."""
    import datasets

    loaded = datasets.load_from_disk(str(path))
    splits = [(name, loaded[name]) for name in sorted(loaded)] if isinstance(loaded, datasets.DatasetDict) else [("", loaded)]
    for name, split in splits:
        split_label = f"{label or path.name}/{name}" if name else label or path.name
        for number, row in enumerate(split, start=1):
            yield RawLine(split_label, number, value=_present(row))


def _is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()


READABLE_SUFFIXES = (".jsonl", ".jsonl.gz", ".parquet")


def read_any(path: Path, label: str | None = None) -> Iterator[RawLine]:
    """Dispatch on what `path` is: a saved dataset folder, a folder of files (sorted, recursive) or one file.
    Rows are labelled `label` (default: the name of `path`), files in a folder by their path under it
    ("folder/x/data.jsonl"), so that files of one name in different folders stay apart."""
    label = label or path.name
    if path.is_dir():
        if _is_saved_dataset(path):
            yield from read_saved_dataset(path, label)
            return
        for child in sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(READABLE_SUFFIXES)):
            yield from read_any(child, f"{label}/{child.relative_to(path).as_posix()}")
    elif path.name.endswith(".parquet"):
        yield from read_parquet(path, label=label)
    else:
        yield from read_jsonl(path, label=label)
