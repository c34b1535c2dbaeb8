"""The buffered feedback writer: flushes on its timer and when full, never makes a request wait on the bucket,
keeps events while the bucket is down, and files each event under its own UTC day."""

from __future__ import annotations

import gzip
import json
import threading
import time

from pipeline.serving import events
from pipeline.serving.feedback_writer import FeedbackWriter
from tests.conftest import wait_until


class FlakyBucket:
    """Fails the first `failures` writes, can be made slow, and keeps what it was given."""

    def __init__(self, failures: int = 0, delay: float = 0.0):
        self.failures, self.delay, self.objects = failures, delay, {}
        self.lock = threading.Lock()

    def write(self, key: str, data: bytes) -> None:
        time.sleep(self.delay)
        with self.lock:
            if self.failures:
                self.failures -= 1
                raise ConnectionError("bucket unreachable")
            self.objects[key] = [json.loads(line) for line in gzip.decompress(data).decode().splitlines()]


def event(ts: str | None = None) -> dict:
    e = events.feedback("00000000-0000-0000-0000-000000000000", 1, None, None)
    return {**e, "ts": ts} if ts else e



def test_the_timer_flushes_without_being_asked():
    bucket = FlakyBucket()
    writer = FeedbackWriter(bucket.write, flush_events=1000, flush_seconds=0.2)
    writer.record(event())
    assert wait_until(lambda: bucket.objects, timeout=10)
    writer.close()


def test_a_full_buffer_flushes_at_once_and_record_never_waits_on_a_slow_bucket():
    bucket = FlakyBucket(delay=1.0)
    writer = FeedbackWriter(bucket.write, flush_events=5, flush_seconds=3600)
    start = time.perf_counter()
    for _ in range(50):
        writer.record(event())
    assert time.perf_counter() - start < 0.2  # the one-second writes happen on the writer's thread
    assert wait_until(lambda: sum(len(v) for v in bucket.objects.values()) >= 5, timeout=10)
    writer.close()
    assert sum(len(v) for v in bucket.objects.values()) == 50


def test_events_survive_a_bucket_outage_and_overflow_is_counted():
    bucket = FlakyBucket(failures=2)
    writer = FeedbackWriter(bucket.write, flush_events=10_000, flush_seconds=3600, max_buffered=8)
    for _ in range(5):
        writer.record(event())
    assert writer.flush() == 0 and writer.buffered == 5  # the failed flush put them back
    for _ in range(5):
        writer.record(event())
    assert writer.buffered == 8 and writer.dropped_events == 2  # the oldest go first, counted
    assert writer.flush() == 0
    assert writer.flush() == 8 and writer.buffered == 0
    writer.close()
    assert writer.failed_flushes == 2 and len(bucket.objects) == 1


def test_each_event_is_filed_under_its_own_utc_day_in_a_new_object_per_flush():
    bucket = FlakyBucket()
    writer = FeedbackWriter(bucket.write, flush_events=10_000, flush_seconds=3600, writer="w1")
    writer.record(event("2026-11-30T23:59:59.999Z"))
    writer.record(event("2026-12-01T00:00:00.000Z"))
    writer.flush()
    writer.record(event("2026-12-01T00:00:01.000Z"))
    writer.close()
    keys = sorted(bucket.objects)
    assert [k.split("/")[1] for k in keys] == ["dt=2026-11-30", "dt=2026-12-01", "dt=2026-12-01"]
    assert all(k.split("/")[2].startswith("w1-") and k.endswith(".jsonl.gz") for k in keys)
    assert len(set(keys)) == 3  # never one object rewritten
