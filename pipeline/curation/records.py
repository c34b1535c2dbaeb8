"""The canonical example record every shape is normalised to, and the hashes that identify it."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

Record = dict[str, Any]
"""{"id", "messages": [{"role", "content"}], "group", "source", "origin": {"file", "line", "format"}, "meta"}"""

_SPACE = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """Case- and whitespace-insensitive form used to spot duplicates."""
    return _SPACE.sub(" ", text).strip().lower()


def sha256_json(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def record_id(messages: list[dict[str, str]]) -> str:
    """Stable id from the conversation itself, so the same example gets the same id in every run."""
    return sha256_json([[m["role"], m["content"]] for m in messages])[:16]


def content_key(messages: list[dict[str, str]]) -> str:
    """Hash of the normalised conversation: equal for exact duplicates up to case and spacing."""
    return sha256_json([[m["role"], normalize_text(m["content"])] for m in messages])


def prompt_key(messages: list[dict[str, str]]) -> str:
    """Hash of the normalised prompt turns (everything before the final answer)."""
    return sha256_json([[m["role"], normalize_text(m["content"])] for m in messages[:-1]])


def dataset_version(records: list[Record]) -> str:
    """Content hash of a record list: the Dagster data version of every data asset."""
    digest = hashlib.sha256()
    for rec in records:
        digest.update(json.dumps(rec, sort_keys=True, ensure_ascii=False).encode())
        digest.update(b"\n")
    return digest.hexdigest()
