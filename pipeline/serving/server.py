"""Assemble and run the server: base + live versions from the registry, feedback to the bucket, uvicorn."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable

from pipeline.recipe import ServingRecipe
from pipeline.serving.app import Server, build_app
from pipeline.serving.feedback_writer import FeedbackWriter
from pipeline.serving.pool import ModelPool
from pipeline.serving.registry_source import RegistrySource
from pipeline.serving.watcher import AliasWatcher

log = logging.getLogger(__name__)


def build_server(base_path: Path, settings: ServingRecipe, model_name: str, source: RegistrySource,
                 write: Callable[[str, bytes], Any], token: str | None = None, pool: ModelPool | None = None) -> Server:
    """Load the base and whatever the registry names live now; refuse to start without a champion."""
    live = source.lookup()
    if "champion" not in live:
        raise RuntimeError(f"the registry has no `champion` version of {model_name}: nothing to serve yet "
                           "(materialize registry_entry, or `python -m pipeline promote VERSION`)")
    pool = pool or ModelPool(base_path, threads=settings.torch_threads)
    pool.sync({alias: source.fetch(version) for alias, version in live.items()})
    writer = FeedbackWriter(write, settings.flush_events, settings.flush_seconds, settings.max_buffered_events)
    server = Server(pool, settings, model_name, writer, token=token)
    server.watcher = AliasWatcher(pool, source.lookup, source.fetch, settings.poll_seconds, on_swap=server.on_swap,
                                  on_error=lambda error: server.metrics.poll_errors.inc())
    return server


def token_from_env(settings: ServingRecipe) -> str | None:
    return os.environ.get(settings.token_env) or None


def run(server: Server, host: str, port: int) -> None:
    import uvicorn

    if host not in ("127.0.0.1", "localhost", "::1") and not server.token:
        log.warning("serving on %s without a bearer token: anyone who reaches it can use it", host)
    uvicorn.run(build_app(server), host=host, port=port, log_level="info", timeout_graceful_shutdown=30)
