"""The buffered feedback writer: requests append events in memory; a background thread flushes them to the
bucket as new immutable objects (every N events, every T seconds, and on close). A request never waits on the bucket."""

from __future__ import annotations

import gzip
import json
import logging
import os
import socket
import threading
import uuid
from collections import defaultdict, deque
from datetime import datetime, timezone
from typing import Any, Callable

from pipeline.serving.events import object_key

log = logging.getLogger(__name__)


def writer_id() -> str:
    """Unique per server process: host, pid and a random suffix (a restarted pid never reuses a name)."""
    host = "".join(c if c.isalnum() or c == "-" else "-" for c in socket.gethostname())[:40] or "host"
    return f"{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class FeedbackWriter:
    """`record(event)` is O(1) and never blocks on I/O; `write(key, data)` (the bucket) runs on the flush thread."""

    def __init__(self, write: Callable[[str, bytes], Any], flush_events: int = 200, flush_seconds: float = 10.0,
                 max_buffered: int = 50_000, writer: str | None = None):
        self._write = write
        self.flush_events, self.flush_seconds, self.max_buffered = flush_events, flush_seconds, max_buffered
        self.writer = writer or writer_id()
        self._buffer: deque[dict[str, Any]] = deque()
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()  # one flush at a time: the timer's, a full buffer's or close()'s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._seq = 0
        self.written_events = self.written_objects = self.dropped_events = self.failed_flushes = 0
        self._thread = threading.Thread(target=self._run, name="feedback-writer", daemon=True)
        self._thread.start()

    def record(self, event: dict[str, Any]) -> None:
        with self._lock:
            self._buffer.append(event)
            while len(self._buffer) > self.max_buffered:  # the bucket has been down for long: keep the newest
                self._buffer.popleft()
                self.dropped_events += 1
            full = len(self._buffer) >= self.flush_events
        if full:
            self._wake.set()

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            self.flush()

    def flush(self) -> int:
        """Write what is buffered, one object per UTC day of the events' `ts`; failed days go back to the buffer."""
        with self._flush_lock:
            with self._lock:
                events = list(self._buffer)
                self._buffer.clear()
            if not events:
                return 0
            by_day: dict[str, list[dict[str, Any]]] = defaultdict(list)
            for event in events:
                by_day[event["ts"][:10]].append(event)
            written, failed = 0, []
            stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
            for day, day_events in sorted(by_day.items()):
                self._seq += 1
                data = gzip.compress("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in day_events).encode())
                try:
                    self._write(object_key(day, self.writer, stamp, self._seq), data)
                    written += len(day_events)
                    self.written_objects += 1
                except Exception as error:  # the bucket is down: keep the events for the next flush
                    log.warning("feedback flush of %d events for %s failed: %s", len(day_events), day, error)
                    self.failed_flushes += 1
                    failed += day_events
            if failed:
                with self._lock:
                    self._buffer.extendleft(reversed(failed))
            self.written_events += written
            return written

    def close(self, timeout: float = 30.0) -> None:
        """Stop the timer and flush what is left (shutdown)."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)
        self.flush()
