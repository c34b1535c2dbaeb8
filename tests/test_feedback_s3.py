"""The feedback bucket on S3: a real S3-compatible HTTP endpoint (moto's server on a free local port) behind a
proxy that throttles and drops connections; boto3's retries absorb both, and a corrupt object is quarantined
while the rest of its day is read."""

import gzip
import http.client
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3
import dagster as dg
import pytest
from moto.server import ThreadedMotoServer

from assets.feedback import build_feedback_assets
from pipeline.feedback.synthetic import write_days
from pipeline.recipe import FeedbackRecipe, Recipe
from resources import Bucket, BucketJsonIOManager, RecipeResource
from tests.conftest import free_port

DAY = "2026-11-20"


class FlakyProxy(ThreadingHTTPServer):
    """Forwards to moto; of every 5 requests, one gets a 503 SlowDown and one loses its connection unanswered."""

    daemon_threads = True

    def __init__(self, upstream: int):
        super().__init__(("127.0.0.1", free_port()), _Handler)
        self.upstream, self.seen, self.injected, self.lock = upstream, 0, {"slow_down": 0, "dropped": 0}, threading.Lock()


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _forward(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with self.server.lock:
            self.server.seen += 1
            turn = self.server.seen % 5
        if turn == 1:
            self.server.injected["slow_down"] += 1
            error = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
            self.send_response(503)
            self.send_header("Content-Length", str(len(error)))
            self.end_headers()
            self.wfile.write(error)
            return
        if turn == 3:
            self.server.injected["dropped"] += 1
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)  # no status line at all: a dropped connection
            return
        conn = http.client.HTTPConnection("127.0.0.1", self.server.upstream, timeout=30)
        conn.request(self.command, self.path, body=body, headers=dict(self.headers))
        reply = conn.getresponse()
        data = reply.read()
        self.send_response(reply.status)
        for k, v in reply.getheaders():
            if k.lower() not in ("content-length", "transfer-encoding", "connection", "server", "date"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward


@pytest.fixture
def flaky_s3(monkeypatch):
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    proxy = FlakyProxy(port)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}", f"http://127.0.0.1:{proxy.server_address[1]}", proxy
    finally:
        proxy.shutdown()
        proxy.server_close()
        server.stop()


def test_a_day_is_read_from_s3_through_retries_and_a_corrupt_object_is_quarantined(flaky_s3):
    direct, flaky, proxy = flaky_s3
    s3 = boto3.client("s3", endpoint_url=direct)
    s3.create_bucket(Bucket="feedback-prod")
    written = write_days([DAY], lambda key, body: s3.put_object(Bucket="feedback-prod", Key=f"serving/{key}", Body=body),
                         per_day=12, flush_every=10)
    keys = written[DAY]
    assert len(keys) >= 2
    # one more object whose gzip stream is cut off halfway, and one with a broken line among good ones
    good_lines = [json.dumps(e) for e in _events_of(s3, keys[0])]
    cut = gzip.compress(("\n".join(line.replace('"id": "', '"id": "cut-') for line in good_lines) + "\n").encode(), mtime=0)
    s3.put_object(Bucket="feedback-prod", Key=f"serving/feedback/dt={DAY}/serve-b-20261120T235959-000001.jsonl.gz",
                  Body=cut[: len(cut) // 2])
    broken = gzip.compress(b'{"kind": "interaction", "id": "x1", "ts": "2026-11-20T01:00:00.000Z"\n' + good_lines[0].encode()
                           .replace(b'"id": "', b'"id": "copy-') + b"\n", mtime=0)
    s3.put_object(Bucket="feedback-prod", Key=f"serving/feedback/dt={DAY}/serve-c-20261120T235959-000002.jsonl.gz", Body=broken)

    bucket = Bucket(root="s3://feedback-prod/serving", endpoint_url=flaky, max_attempts=8)
    events_asset = build_feedback_assets(FeedbackRecipe(start_date="2026-11-01", end_date="2026-11-30"))[0]
    result = dg.materialize([events_asset], partition_key=DAY, resources={
        "bucket": bucket, "io_manager": BucketJsonIOManager(bucket=bucket),
        "recipe": RecipeResource.of(Recipe(feedback={"max_quarantine_share": 0.9}))})
    assert result.success
    assert proxy.injected["slow_down"] > 0 and proxy.injected["dropped"] > 0  # the retries had work to do
    # boto3 absorbed them: the asset's own retry policy (a whole-step rerun) was never needed
    assert not [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]

    value = result.output_for_node("feedback_events")
    expected = sum(len(_events_of(s3, k)) for k in keys)
    originals = [e for e in value["events"] if not e["_origin"]["key"].split("/")[-1].startswith(("serve-b", "serve-c"))]
    assert len(originals) == expected  # every event of the intact objects kept
    by_key = {q["key"].split("/")[-1][:7]: q for q in value["quarantined"]}
    assert by_key["serve-b"]["reason"] in ("truncated_gzip", "corrupt_gzip")
    assert by_key["serve-c"]["reason"] == "invalid_json" and by_key["serve-c"]["line"] == 1
    assert any(e["id"].startswith("copy-") for e in value["events"])  # the good line after the broken one is kept
    meta = result.get_asset_materialization_events()[0].materialization.metadata
    assert meta["lines"].value == meta["events"].value + meta["quarantined"].value + meta["duplicate_events"].value
    assert meta["objects"].value == len(keys) + 2


def _events_of(s3, key: str) -> list[dict]:
    body = s3.get_object(Bucket="feedback-prod", Key=f"serving/{key}")["Body"].read()
    return [json.loads(line) for line in gzip.decompress(body).decode().splitlines()]
