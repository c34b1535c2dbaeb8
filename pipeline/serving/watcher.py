"""Hot swap: poll the registry's aliases; when one moved, download the new version, load it, then swap."""

from __future__ import annotations

import logging
import threading
from typing import Callable

from pipeline.serving.pool import ModelPool, VersionSpec

log = logging.getLogger(__name__)

Lookup = Callable[[], dict[str, str]]  # alias -> version, as the registry says now
Fetch = Callable[[str], VersionSpec]  # version -> its weights on local disk


class AliasWatcher:
    def __init__(self, pool: ModelPool, lookup: Lookup, fetch: Fetch, interval: float,
                 on_swap: Callable[[list[str]], None] = lambda changes: None,
                 on_error: Callable[[Exception], None] = lambda error: None):
        self.pool, self.lookup, self.fetch, self.interval = pool, lookup, fetch, interval
        self.on_swap, self.on_error = on_swap, on_error
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self) -> list[str]:
        """One poll: swap in whatever moved; returns the changes."""
        wanted, live = self.lookup(), self.pool.live()
        if all(live.get(a) == v for a, v in wanted.items()) and ("canary" not in live or "canary" in wanted):
            return []
        changes = self.pool.sync({alias: self.pool.spec(version) or self.fetch(version) for alias, version in wanted.items()})
        if changes:
            self.on_swap(changes)
        return changes

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check()
            except Exception as error:  # the registry is down or a download failed: keep serving what is live
                log.warning("registry poll failed; the live models stay: %s", error)
                self.on_error(error)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="alias-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=60)
