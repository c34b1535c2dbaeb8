"""Where the project lives and where the embedded default keeps its state."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def store_root() -> str:
    """The artifact store: a local folder by default, `s3://bucket/prefix` when PIPELINE_STORE says so."""
    return os.environ.get("PIPELINE_STORE", str(PROJECT_ROOT / ".store"))


def resolve(path: str | Path) -> Path:
    """Resolve a recipe path: absolute paths stay, relative ones are taken from the project root."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else PROJECT_ROOT / p
