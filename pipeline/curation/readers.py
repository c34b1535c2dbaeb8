"""Read raw example files line by line, keeping where each line came from and why a bad one is bad."""

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


def read_jsonl(path: Path, max_line_bytes: int = 1 << 20) -> Iterator[RawLine]:
    """Yield every non-blank line of a JSONL or JSONL.gz file; unreadable lines carry an error, never raise."""
    if not path.exists():
        raise FileNotFoundError(f"source file {path} does not exist")
    with _open_binary(path) as f:
        for number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            if len(raw) > max_line_bytes:
                yield RawLine(path.name, number, error="oversize", detail=f"line of {len(raw)} bytes")
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield RawLine(path.name, number, error="invalid_utf8", detail=str(e))
                continue
            try:
                yield RawLine(path.name, number, value=json.loads(text))
            except json.JSONDecodeError as e:
                yield RawLine(path.name, number, error="invalid_json", detail=str(e))
