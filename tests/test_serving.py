"""The serving app over real HTTP: completions marked with model/version/alias, streaming, feedback written to
the bucket in the contract's format, clear 4xx errors, the canary share, and a hot swap under load."""

from __future__ import annotations

import gzip
import json
import re
import threading
import time
from collections import Counter

import jsonschema
import pytest
import requests

from pipeline.recipe import ServingRecipe
from pipeline.serving.app import build_app
from pipeline.serving.events import load_schema
from pipeline.serving.registry_source import RegistrySource
from pipeline.serving.server import build_server
from resources import Bucket
from tests.conftest import free_port, running, wait_until
from tests.serving_helpers import gated_registry, tiny_adapter

NAME = "tiny-summarizer"
TOKEN = "s3cret-token"
KEY = re.compile(r"^feedback/dt=(\d{4}-\d{2}-\d{2})/(.+)-(\d{8}T\d{6})-(\d+)\.jsonl\.gz$")


@pytest.fixture(scope="module")
def adapters(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return [tiny_adapter(tiny_model_dir, root / f"a{i}", seed=i) for i in range(3)]


@pytest.fixture(scope="module")
def live(tiny_model_dir, adapters, tmp_path_factory):
    """v1 champion, v2 canary at a 30% share, a token set; the server runs for the whole module."""
    store = tmp_path_factory.mktemp("store")
    registry, versions = gated_registry(store, NAME, adapters[:2])
    registry.move_alias(NAME, "champion", versions[0], actor="test", reason="first")
    registry.move_alias(NAME, "canary", versions[1], actor="test", reason="candidate")
    bucket = Bucket(root=str(store / "bucket"))
    settings = ServingRecipe(canary_share=0.3, flush_events=50, flush_seconds=0.5, max_input_chars=2000,
                             max_body_bytes=20_000, max_new_tokens=16, default_max_tokens=4, torch_threads=1)
    server = build_server(tiny_model_dir, settings, NAME, RegistrySource(registry, NAME), bucket.write_bytes, token=TOKEN)
    with running(build_app(server), free_port()) as url:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {TOKEN}"
        yield url, session, server, bucket
    # shut down: the writer has flushed


def chat(session, url, content="Summarize: a tool to frobnicate widgets", **extra):
    body = {"model": NAME, "messages": [{"role": "user", "content": content}], "max_tokens": 4, **extra}
    return session.post(f"{url}/v1/chat/completions", json=body, timeout=60)


def test_a_completion_names_its_model_version_and_alias_in_body_and_headers(live):
    url, session, _, _ = live
    r = chat(session, url, user="alice")
    assert r.status_code == 200, r.text
    body = r.json()
    served = body["served_by"]
    assert served["name"] == NAME and served["alias"] in ("champion", "canary")
    assert served["version"] == {"champion": "1", "canary": "2"}[served["alias"]]
    assert (r.headers["x-model-name"], r.headers["x-model-version"], r.headers["x-model-alias"]) == (
        NAME, served["version"], served["alias"])
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert isinstance(body["choices"][0]["message"]["content"], str)
    assert 0 < body["usage"]["completion_tokens"] <= 4


def test_pinned_aliases_answer_with_their_own_adapters(live):
    url, session, _, _ = live
    answers = {}
    for alias in ("champion", "canary"):
        r = chat(session, url, model=f"{NAME}:{alias}", max_tokens=8)
        assert r.json()["served_by"]["alias"] == alias
        answers[alias] = r.json()["choices"][0]["message"]["content"]
    assert answers["champion"] != answers["canary"]  # two adapters on one base, not one model twice


def test_streaming_sends_openai_chunks_then_done(live):
    url, session, _, _ = live
    body = {"model": f"{NAME}:champion", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 6, "stream": True}
    with session.post(f"{url}/v1/chat/completions", json=body, stream=True, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-model-version"] == "1"
        lines = [line for line in r.iter_lines(decode_unicode=True) if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[len("data: "):]) for line in lines[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["served_by"]["version"] == "1" for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    pinned = chat(session, url, content="hi", model=f"{NAME}:champion", max_tokens=6).json()
    assert text == pinned["choices"][0]["message"]["content"]  # greedy: the same words, streamed


@pytest.mark.parametrize("case, status, code", [
    ("malformed_json", 400, "invalid_json"),
    ("unknown_model", 404, "model_not_found"),
    ("oversize_body", 413, "body_too_large"),
    ("too_many_chars", 413, "input_too_long"),
    ("no_messages", 422, "invalid_request"),
    ("max_tokens_too_large", 400, "max_tokens_too_large"),
    ("missing_token", 401, "invalid_api_key"),
    ("wrong_token", 401, "invalid_api_key"),
    ("unknown_route", 404, "not_found"),
])
def test_bad_requests_get_a_clear_4xx_and_never_a_stack_trace(live, case, status, code):
    url, session, _, _ = live
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    good = {"model": NAME, "messages": [{"role": "user", "content": "hi"}]}
    target, data = f"{url}/v1/chat/completions", json.dumps(good)
    if case == "malformed_json":
        data = '{"model": "tiny-summarizer", "messages": [ '
    elif case == "unknown_model":
        data = json.dumps({**good, "model": "gpt-4"})
    elif case == "oversize_body":
        data = json.dumps({**good, "messages": [{"role": "user", "content": "x" * 30_000}]})
    elif case == "too_many_chars":
        data = json.dumps({**good, "messages": [{"role": "user", "content": "x" * 3000}]})
    elif case == "no_messages":
        data = json.dumps({**good, "messages": []})
    elif case == "max_tokens_too_large":
        data = json.dumps({**good, "max_tokens": 10_000})
    elif case == "missing_token":
        headers.pop("Authorization")
    elif case == "wrong_token":
        headers["Authorization"] = "Bearer nope"
    elif case == "unknown_route":
        target = f"{url}/v1/completely/unknown"
    r = requests.post(target, data=data, headers=headers, timeout=30)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code and error["message"]
    assert "Traceback" not in r.text and "File \"" not in r.text


def test_health_models_and_metrics_say_what_is_live(live):
    url, session, _, _ = live
    chat(session, url, model=f"{NAME}:canary")
    health = requests.get(f"{url}/healthz", timeout=10).json()
    assert health["live"] == {"champion": "1", "canary": "2"} and health["canary_share"] == 0.3
    ids = {m["id"] for m in session.get(f"{url}/v1/models", timeout=10).json()["data"]}
    assert ids == {NAME, f"{NAME}:champion", f"{NAME}:canary"}
    metrics = requests.get(f"{url}/metrics", timeout=10).text
    assert 'llm_completions_total{alias="canary",version="2"}' in metrics
    assert 'llm_live_version{alias="champion",version="1"} 1.0' in metrics
    assert re.search(r'llm_http_requests_total\{route="/v1/chat/completions",status="200"\} \d', metrics)
    assert "llm_http_request_latency_seconds_bucket" in metrics
    from pipeline.oncall import served_counts

    assert served_counts(metrics)["canary v2"] >= 1  # what `python -m pipeline status` prints per live version


def test_canary_share_holds_over_hundreds_of_requests_and_each_user_sticks(live):
    url, session, _, _ = live
    n, share = 300, 0.3
    aliases = [chat(session, url, content="hi", user=f"user-{i}", max_tokens=1).json()["served_by"]["alias"] for i in range(n)]
    canary = aliases.count("canary")
    sd = (n * share * (1 - share)) ** 0.5
    assert abs(canary - n * share) < 4 * sd, f"{canary} of {n} went to the canary"
    again = {chat(session, url, content="hi", user="user-7", max_tokens=1).json()["served_by"]["alias"] for _ in range(8)}
    assert again == {aliases[7]}


def test_feedback_posts_are_accepted_or_refused_clearly(live):
    url, session, _, _ = live
    first, second = (chat(session, url, model=f"{NAME}:{a}").json()["id"] for a in ("champion", "canary"))
    ok = [{"response_id": first, "rating": 1},
          {"response_id": second, "rating": -1, "correction": "widget frobnicator", "comment": "too vague"},
          {"response_id": second, "correction": "widget frobnicator"},
          {"response_id": first, "compared_with": second, "winner": "a"}]
    kinds = [session.post(f"{url}/v1/feedback", json=body, timeout=10) for body in ok]
    assert [r.status_code for r in kinds] == [202] * 4
    assert [r.json()["kind"] for r in kinds] == ["feedback"] * 3 + ["comparison"]
    bad = [({"response_id": first}, 422), ({"response_id": first, "rating": 5}, 422), ({"response_id": "x", "rating": 1}, 422),
           ({"response_id": first, "compared_with": "0" * 8 + "-0000-0000-0000-" + "0" * 12, "winner": "a"}, 404)]
    for body, status in bad:
        r = session.post(f"{url}/v1/feedback", json=body, timeout=10)
        assert r.status_code == status, (body, r.text)
        assert r.json()["error"]["message"]


def test_feedback_files_read_back_valid_against_the_contract(live, tmp_path):
    url, session, server, bucket = live
    response = chat(session, url, content="Summarize: the contract test", user="bob").json()
    other = chat(session, url, content="Summarize: the contract test", user="carol").json()
    session.post(f"{url}/v1/feedback", json={"response_id": response["id"], "rating": -1, "correction": "better"}, timeout=10)
    session.post(f"{url}/v1/feedback", json={"response_id": response["id"], "compared_with": other["id"], "winner": "tie"}, timeout=10)
    server.writer.flush()
    schema = load_schema()
    files = sorted(bucket.local_path("feedback").rglob("*"))
    objects = [f for f in files if f.is_file()]
    assert objects and all(not f.name.endswith(".tmp") for f in objects)
    events = []
    for path in objects:
        key = path.relative_to(bucket.local_path("")).as_posix()
        day, writer, _, _ = KEY.match(key).groups()
        assert writer == server.writer.writer
        for line in gzip.decompress(path.read_bytes()).decode("utf-8").splitlines():
            event = json.loads(line)
            jsonschema.validate(event, schema)
            assert event["ts"][:10] == day  # each event in the folder of its own UTC day
            events.append(event)
    by_id = {e["id"]: e for e in events}
    interaction = by_id[response["id"].removeprefix("chatcmpl-")]
    assert interaction["model"] == response["served_by"] and interaction["response"] == response["choices"][0]["message"]["content"]
    assert interaction["messages"] == [{"role": "user", "content": "Summarize: the contract test"}]
    rating = next(e for e in events if e["kind"] == "feedback" and e["interaction_id"] == interaction["id"])
    assert (rating["rating"], rating["correction"]) == (-1, "better")
    assert len(by_id) == len(events)
    assert {e["kind"] for e in events} == {"interaction", "feedback", "comparison"}


def test_the_contract_schema_rejects_what_the_contract_forbids():
    schema = load_schema()
    good = {"kind": "feedback", "id": "0" * 8 + "-0000-0000-0000-" + "0" * 12, "ts": "2026-12-01T12:34:56.789Z",
            "interaction_id": "x", "rating": 1, "extra_field": "kept"}
    jsonschema.validate(good, schema)
    for broken in ({**good, "rating": 0}, {k: v for k, v in good.items() if k != "ts"}, {**good, "ts": "2026-12-01 12:34"},
                   {k: v for k, v in good.items() if k != "rating"}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, schema)



def test_an_alias_move_is_swapped_in_while_requests_keep_flowing(tiny_model_dir, adapters, tmp_path):
    registry, versions = gated_registry(tmp_path, NAME, adapters)
    registry.move_alias(NAME, "champion", versions[0], actor="test", reason="first")
    settings = ServingRecipe(canary_share=0.5, poll_seconds=0.2, flush_seconds=0.5, default_max_tokens=2, torch_threads=1)
    bucket = Bucket(root=str(tmp_path / "bucket"))
    server = build_server(tiny_model_dir, settings, NAME, RegistrySource(registry, NAME), bucket.write_bytes)
    seen, failures, stop = Counter(), [], threading.Event()

    def client():
        with requests.Session() as s:
            while not stop.is_set():
                try:
                    r = chat(s, url, max_tokens=2)
                    if r.status_code != 200:
                        failures.append(r.text)
                    else:
                        seen[r.json()["served_by"]["version"]] += 1
                except requests.RequestException as error:
                    failures.append(repr(error))

    with running(build_app(server), free_port()) as url:
        threads = [threading.Thread(target=client) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        registry.move_alias(NAME, "champion", versions[2], actor="test", reason="hot swap")
        deadline = time.monotonic() + 30
        while seen["3"] < 10 and time.monotonic() < deadline:
            time.sleep(0.1)
        health = requests.get(f"{url}/healthz", timeout=10).json()
        registry.move_alias(NAME, "canary", versions[1], actor="test", reason="canary while traffic flows")
        canary_live = wait_until(lambda: requests.get(f"{url}/healthz", timeout=10).json()["live"].get("canary") == "2",
                                 timeout=30)
        registry.remove_alias(NAME, "canary", actor="test", reason="rolled back while traffic flows")
        canary_gone = wait_until(lambda: "canary" not in requests.get(f"{url}/healthz", timeout=10).json()["live"],
                                 timeout=30)
        stop.set()
        for t in threads:
            t.join()
    assert failures == []
    assert seen["1"] > 0 and seen["3"] >= 10, seen
    assert health["live"] == {"champion": "3"}
    assert canary_live and canary_gone
    assert server.pool.loaded_versions() in (["3"], ["1", "3"])  # v1 unloaded, or kept as PEFT's last adapter


def test_a_version_swapped_out_stays_loaded_until_its_last_request_returns(tiny_model_dir, adapters):
    from pipeline.serving.pool import ModelPool, VersionSpec

    pool = ModelPool(tiny_model_dir, threads=1)
    specs = [VersionSpec(str(i + 1), path, True) for i, path in enumerate(adapters)]
    pool.sync({"champion": specs[0], "canary": specs[1]})
    messages = [{"role": "user", "content": "hi"}]
    with pool.lease("champion") as held:
        pool.sync({"champion": specs[2]})  # champion moves, canary removed, while a request holds v1
        assert pool.live() == {"champion": "3"}
        assert "1" in pool.loaded_versions() and "2" not in pool.loaded_versions()
        old = pool.generate(held, messages, 4)  # the request finishes on the version it started with
    with pool.lease("champion") as new:
        assert new.version == "3"
        assert pool.generate(new, messages, 4).text != old.text
    assert pool.loaded_versions() == ["3"]
