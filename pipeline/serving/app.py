"""The OpenAI-compatible HTTP app: /v1/chat/completions (streaming too), /v1/feedback, /v1/models, /healthz, /metrics.
Every response names the model, version and alias that answered; every interaction goes to the feedback writer."""

from __future__ import annotations

import hmac
import json
import logging
import threading
import time
import uuid
from collections import OrderedDict
from contextlib import asynccontextmanager
from typing import Any, Iterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from pipeline.recipe import ServingRecipe
from pipeline.serving import events
from pipeline.serving.api import ChatRequest, FeedbackPost, interaction_id
from pipeline.serving.feedback_writer import FeedbackWriter
from pipeline.serving.metrics import ServingMetrics
from pipeline.serving.pool import Generated, ModelPool
from pipeline.serving.router import CANARY, CHAMPION, CanaryRouter
from pipeline.serving.watcher import AliasWatcher

log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(self, status: int, message: str, code: str):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


def _error(status: int, message: str, code: str, headers: dict[str, str] | None = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse({"error": {"message": message, "type": kind, "code": code}}, status_code=status, headers=headers)


class Server:
    """What the app serves: the pool, the router, the feedback writer, the limits and the optional token."""

    def __init__(self, pool: ModelPool, settings: ServingRecipe, model_name: str, writer: FeedbackWriter,
                 watcher: AliasWatcher | None = None, token: str | None = None, seed: int = 0):
        self.pool, self.settings, self.model_name, self.writer, self.watcher = pool, settings, model_name, writer, watcher
        self.token = token or None
        self.router = CanaryRouter(settings.canary_share, seed=seed)
        self.metrics = ServingMetrics()
        self.metrics.watch_writer(writer)
        self.metrics.show_live(pool.live())
        self.recent: OrderedDict[str, dict[str, Any]] = OrderedDict()  # id -> interaction, for comparisons
        self._recent_lock = threading.Lock()
        self.started = time.time()

    def remember(self, event: dict[str, Any]) -> None:
        with self._recent_lock:
            self.recent[event["id"]] = event
            while len(self.recent) > self.settings.recent_interactions:
                self.recent.popitem(last=False)

    def on_swap(self, changes: list[str]) -> None:
        self.metrics.swaps.inc()
        self.metrics.show_live(self.pool.live())

    def alias_for(self, request: ChatRequest) -> str:
        """`name` is routed (canary share, sticky per user); `name:champion` / `name:canary` pin an alias."""
        live = self.pool.live()
        name, _, alias = request.model.partition(":")
        if name != self.model_name or (alias and alias not in live):
            served = ", ".join([self.model_name] + [f"{self.model_name}:{a}" for a in sorted(live)])
            raise ApiError(404, f"model '{request.model}' is not served here; served: {served}", "model_not_found")
        return alias or self.router.route(request.user, CANARY in live)

    def check_limits(self, request: ChatRequest) -> int:
        s = self.settings
        if len(request.messages) > s.max_messages:
            raise ApiError(413, f"{len(request.messages)} messages; at most {s.max_messages} are accepted", "too_many_messages")
        chars = sum(len(m.content) for m in request.messages)
        if chars > s.max_input_chars:
            raise ApiError(413, f"the messages hold {chars} characters; at most {s.max_input_chars} are accepted", "input_too_long")
        wanted = request.max_completion_tokens or request.max_tokens or s.default_max_tokens
        if wanted > s.max_new_tokens:
            raise ApiError(400, f"max_tokens {wanted} is above this server's limit of {s.max_new_tokens}", "max_tokens_too_large")
        return wanted


async def _body(request: Request, limit: int) -> dict[str, Any]:
    """The JSON body, refused past `limit` bytes before it is all read."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body of {declared} bytes is above the limit of {limit}", "body_too_large")
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > limit:
            raise ApiError(413, f"request body is above the limit of {limit} bytes", "body_too_large")
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError) as error:
        raise ApiError(400, f"the body is not valid JSON: {error}", "invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object", "invalid_json")
    return body


def _validated(model, body: dict[str, Any]):
    try:
        return model.model_validate(body)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in error.errors())
        raise ApiError(422, problems, "invalid_request") from None


def build_app(server: Server) -> FastAPI:
    s = server.settings

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if server.watcher:
            server.watcher.start()
        yield
        if server.watcher:
            server.watcher.stop()
        server.writer.close()  # the last events reach the bucket on shutdown

    app = FastAPI(title=f"{server.model_name} (OpenAI-compatible)", lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.exception_handler(ApiError)
    async def api_error(_: Request, error: ApiError):
        return _error(error.status, error.message, error.code)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, error: StarletteHTTPException):
        return _error(error.status_code, str(error.detail), "not_found" if error.status_code == 404 else "http_error")

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, error: RequestValidationError):
        return _error(422, "; ".join(str(e.get("msg")) for e in error.errors()), "invalid_request")

    @app.exception_handler(Exception)
    async def internal_error(_: Request, error: Exception):
        log.exception("request failed")  # the trace stays in the server log, never in the response
        return _error(500, "internal error; the server log has the details", "internal_error")

    @app.middleware("http")
    async def guard_and_count(request: Request, call_next):
        route = request.url.path if request.url.path in ROUTES else "other"
        start = time.perf_counter()
        if server.token and request.url.path.startswith("/v1/"):
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {server.token}".encode()):
                server.metrics.requests.labels(route, "401").inc()
                return _error(401, "missing or wrong bearer token (Authorization: Bearer <token>)", "invalid_api_key",
                              headers={"WWW-Authenticate": "Bearer"})
        response = await call_next(request)
        server.metrics.requests.labels(route, str(response.status_code)).inc()
        server.metrics.latency.labels(route).observe(time.perf_counter() - start)
        return response

    @app.get("/healthz")
    def healthz():
        live = server.pool.live()
        return {"status": "ok" if CHAMPION in live else "no champion", "model": server.model_name, "live": live,
                "canary_share": s.canary_share if CANARY in live else 0.0, "feedback_buffered": server.writer.buffered,
                "uptime_s": round(time.time() - server.started, 1)}

    @app.get("/metrics")
    def metrics():
        return Response(generate_latest(server.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    def models():
        live = server.pool.live()
        entries = [{"id": server.model_name, "object": "model", "owned_by": "pipeline", "routes": live}]
        entries += [{"id": f"{server.model_name}:{a}", "object": "model", "owned_by": "pipeline", "version": v}
                    for a, v in sorted(live.items())]
        return {"object": "list", "data": entries}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        chat = _validated(ChatRequest, await _body(request, s.max_body_bytes))
        max_tokens = server.check_limits(chat)
        alias = server.alias_for(chat)
        messages = [m.model_dump() for m in chat.messages]
        event_id = str(uuid.uuid4())
        args = (messages, max_tokens, chat.temperature, chat.top_p, chat.seed)
        if chat.stream:
            return _stream(server, alias, event_id, chat, args)
        return await run_in_threadpool(_complete, server, alias, event_id, args)

    @app.post("/v1/feedback", status_code=202)
    async def feedback(request: Request):
        post = _validated(FeedbackPost, await _body(request, s.max_body_bytes))
        first = interaction_id(post.response_id)
        if post.compared_with is None:
            event = events.feedback(first, post.rating, post.correction, post.comment)
        else:
            pair = [server.recent.get(first), server.recent.get(interaction_id(post.compared_with))]
            if None in pair:
                raise ApiError(404, "a comparison needs both responses among this server's recent interactions", "unknown_response")
            a, b = ({"response": e["response"], "model": {k: e["model"][k] for k in ("name", "version")}} for e in pair)
            event = events.comparison(pair[0]["messages"], a, b, post.winner)
        server.writer.record(event)
        server.metrics.feedback.labels(event["kind"]).inc()
        return {"id": event["id"], "kind": event["kind"], "status": "accepted"}

    return app


ROUTES = {"/v1/chat/completions", "/v1/feedback", "/v1/models", "/healthz", "/metrics"}


def _served(server: Server, alias: str, version: str) -> dict[str, str]:
    return {"name": server.model_name, "version": version, "alias": alias}


def _headers(model: dict[str, str]) -> dict[str, str]:
    return {"x-model-name": model["name"], "x-model-version": model["version"], "x-model-alias": model["alias"]}


def _record(server: Server, event_id: str, model: dict[str, str], args: tuple, result: Generated, started: float) -> None:
    messages, max_tokens, temperature, top_p, _ = args
    latency = time.perf_counter() - started
    event = events.interaction(model, messages, result.text, {"temperature": temperature, "top_p": top_p, "max_tokens": max_tokens},
                               {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens},
                               int(latency * 1000), event_id=event_id)
    server.writer.record(event)
    server.remember(event)
    server.metrics.completions.labels(model["version"], model["alias"]).inc()
    server.metrics.completion_tokens.labels(model["version"], model["alias"]).inc(result.completion_tokens)
    server.metrics.completion_latency.labels(model["version"]).observe(latency)


def _complete(server: Server, alias: str, event_id: str, args: tuple) -> JSONResponse:
    started = time.perf_counter()
    with server.pool.lease(alias) as lease:
        result = server.pool.generate(lease, *args)
    model = _served(server, alias, lease.version)
    _record(server, event_id, model, args, result, started)
    body = {"id": f"chatcmpl-{event_id}", "object": "chat.completion", "created": int(time.time()),
            "model": server.model_name, "served_by": model, "system_fingerprint": f"{server.model_name}-v{lease.version}",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text},
                         "finish_reason": result.finish_reason}],
            "usage": {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
                      "total_tokens": result.prompt_tokens + result.completion_tokens}}
    return JSONResponse(body, headers=_headers(model))


def _stream(server: Server, alias: str, event_id: str, chat: ChatRequest, args: tuple) -> StreamingResponse:
    """Server-sent events in OpenAI's chunk format. The generator is started here, so it holds its lease before the
    first byte (the headers name that version) and a client that leaves early still closes it (and the lease)."""

    def body() -> Iterator[Any]:
        with server.pool.lease(alias) as lease:
            model = _served(server, alias, lease.version)
            yield model
            base = {"id": f"chatcmpl-{event_id}", "object": "chat.completion.chunk", "created": int(time.time()),
                    "model": server.model_name, "served_by": model}

            def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
                return f"data: {json.dumps({**base, 'choices': [{'index': 0, 'delta': delta, 'finish_reason': finish}]})}\n\n"

            started = time.perf_counter()
            try:
                yield chunk({"role": "assistant", "content": ""})
                for piece in server.pool.stream(lease, *args):
                    if isinstance(piece, Generated):
                        _record(server, event_id, model, args, piece, started)
                        yield chunk({}, piece.finish_reason)
                    else:
                        yield chunk({"content": piece})
                yield "data: [DONE]\n\n"
            except Exception:
                log.exception("streamed completion failed")
                yield f"data: {json.dumps({'error': {'message': 'internal error', 'type': 'server_error'}})}\n\n"

    events_out = body()
    model = next(events_out)
    return StreamingResponse(events_out, media_type="text/event-stream", headers=_headers(model))
