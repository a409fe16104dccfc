"""An OpenAI-compatible HTTP API over the async text API: `swarm-client serve`.

`/v1/models`, `/v1/completions` and `/v1/chat/completions`, streamed as server-sent events when
asked. The server runs on the same asyncio loop as the model (an `AsyncSwarm`'s gRPC channels, or a
`LocalModel`'s worker threads), so concurrent requests are concurrent sessions, which the swarm's
nodes batch. Every error has the OpenAI shape `{"error": {"message", "type", "param", "code"}}`.

Needs fastapi and uvicorn (`pip install 'swarm-llm[serve]'`); nothing else in swarm imports this module.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import socket
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol, cast

import uvicorn
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from swarm.apps.openai_api import (
    COMPLETION_DEFAULT_MAX_TOKENS,
    ApiError,
    Body,
    ChatBody,
    CompletionBody,
    Envelope,
    Job,
    Outcome,
    chat_messages,
    delta_choice,
    from_swarm_error,
    make_job,
    message_choice,
    new_id,
    prompt_ids_of,
    run_job,
    text_choice,
)
from swarm.apps.status import StatusProbe
from swarm.apps.swarm_view import LiveSessions, SwarmView, route_hops
from swarm.apps.web_page import FILES as PAGE_FILES
from swarm.apps.web_page import add_page
from swarm.client import AsyncSwarm
from swarm.conversation import fit_conversation
from swarm.errors import SwarmError
from swarm.textgen import TextGenerator

SHUTDOWN_GRACE_S = 5  # open streams get this long to finish when the server stops
log = logging.getLogger("swarm.openai")

Chunks = AsyncGenerator[dict[str, Any], None]  # response objects, one per server-sent event
QUIET_PATHS = {"/v1/swarm", *PAGE_FILES}  # logged at debug when they succeed: the web page polls the first


class HasText(Protocol):
    """`LocalModel` and `AsyncSwarm`: anything with the async text API as `.text`."""

    @property
    def text(self) -> TextGenerator: ...


def from_validation_error(exc: RequestValidationError) -> ApiError:
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    if first.get("type") == "json_invalid":
        return ApiError(400, f"the request body is not valid JSON ({first['msg']})")
    where = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = ".".join(where) or None
    return ApiError(400, f"{param}: {first['msg']}" if param else str(first["msg"]), param=param)


# ---- generation, seen by the swarm map


def swarm_stats(outcome: Outcome) -> dict[str, Any]:
    """The reply's timings and route: an extra `swarm` field on the last chunk (or the reply), which
    OpenAI clients keep as an unknown field and the web page shows under the reply."""
    stats = outcome.stats
    fields = {"ttft_ms": round(stats.ttft_s * 1000, 1), "tokens_per_s": round(stats.decode_tokens_per_s, 1),
              "route": [vars(hop) for hop in route_hops(stats.route)], "recoveries": len(stats.recoveries)}  # fmt: skip
    if stats.draft_proposed:  # speculative decoding (serve --speculative): how well the drafts did
        fields["speculative"] = {"acceptance": round(stats.acceptance_rate, 3),
                                 "tokens_per_pass": round(stats.tokens_per_pass, 2),
                                 "passes_chained": stats.passes_chained,
                                 "passes_dropped": stats.passes_dropped}  # fmt: skip
    return fields


async def _tracked_job(model: TextGenerator, job: Job, outcome: Outcome, env: Envelope,
                       live: LiveSessions) -> AsyncIterator[str]:  # fmt: skip
    """`run_job`, listed among the live sessions (`GET /v1/swarm`) while it runs."""
    with live.track(env.id, outcome.stats):
        async with aclosing(cast(AsyncGenerator[str, None], run_job(model, job, outcome))) as pieces:
            async for piece in pieces:
                yield piece


def _finished(env: Envelope, choice: dict[str, Any], outcome: Outcome) -> dict[str, Any]:
    return env.wrap([choice]) | {"swarm": swarm_stats(outcome)}


# ---- streaming


async def _text_chunks(pieces: AsyncIterator[str], outcome: Outcome, env: Envelope, with_usage: bool) -> Chunks:
    async for text in pieces:
        yield env.wrap([text_choice(text, None)])
    yield _finished(env, text_choice("", outcome.finish_reason), outcome)
    if with_usage:
        yield env.wrap([], outcome.usage())


async def _chat_chunks(pieces: AsyncIterator[str], outcome: Outcome, env: Envelope, with_usage: bool) -> Chunks:
    yield env.wrap([delta_choice({"role": "assistant", "content": ""}, None)])
    async for text in pieces:
        yield env.wrap([delta_choice({"content": text}, None)])
    yield _finished(env, delta_choice({}, outcome.finish_reason), outcome)
    if with_usage:
        yield env.wrap([], outcome.usage())


async def _server_sent_events(chunks: Chunks) -> AsyncIterator[str]:
    async with aclosing(chunks):
        try:
            async for chunk in chunks:
                yield f"data: {json.dumps(chunk)}\n\n"
        except SwarmError as exc:  # the status line is sent already: the error goes in the stream
            yield f"data: {json.dumps(from_swarm_error(exc).body)}\n\n"
    yield "data: [DONE]\n\n"


def _event_stream(chunks: Chunks) -> StreamingResponse:
    return StreamingResponse(_server_sent_events(chunks), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})  # fmt: skip


def _include_usage(body: Body) -> bool:
    return bool((body.stream_options or {}).get("include_usage"))


# ---- the app


class RequestLog:
    """One info line per request once its response is sent (a stream's last event too): method,
    path, status, model, prompt and completion tokens, seconds, and the generation's time to first
    token and decode rate, as `GenerationStats` defines them for every front end. The web page's
    files and map polls are logged at debug, unless refused."""

    def __init__(self, app: ASGIApp, model_name: str) -> None:
        self.app, self.model_name = app, model_name

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status, finished = time.perf_counter(), 500, False
        state = scope.setdefault("state", {})  # what a handler sets on request.state lands here

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
            finished = True
        finally:
            fields: dict[str, Any] = {"status": status, "seconds": round(time.perf_counter() - started, 3)}
            outcome = state.get("outcome")
            if isinstance(outcome, Outcome):
                stats = outcome.stats
                fields |= {"model": self.model_name, "prompt_tokens": outcome.prompt_tokens,
                           "completion_tokens": outcome.completion_tokens,
                           "ttft_ms": round(stats.ttft_s * 1000, 1),
                           "decode_tokens_per_s": round(stats.decode_tokens_per_s, 1)}  # fmt: skip
            ended = "" if finished else " (the client went away)"
            # what an open page fetches every few seconds would bury the requests: debug, unless refused
            quiet = scope["path"] in QUIET_PATHS and status < 400
            log.log(logging.DEBUG if quiet else logging.INFO, "%s %s%s", scope["method"], scope["path"], ended,
                    extra=fields)  # fmt: skip


def _key_check(api_key: str | None) -> Callable[[Request], Awaitable[None]]:
    async def check(request: Request) -> None:
        if api_key is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise ApiError(401, "no API key given: send the header 'Authorization: Bearer KEY'")
        if not secrets.compare_digest(given.strip().encode(), api_key.encode()):
            raise ApiError(401, "incorrect API key", code="invalid_api_key")

    return check


def _install_error_handlers(app: FastAPI) -> None:
    async def api_error(request: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, SwarmError):
            exc = from_swarm_error(exc)
        elif isinstance(exc, RequestValidationError):
            exc = from_validation_error(exc)
        elif isinstance(exc, HTTPException):
            exc = ApiError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}")
        assert isinstance(exc, ApiError)
        return JSONResponse(exc.body, status_code=exc.status)

    for kind in (ApiError, SwarmError, RequestValidationError, HTTPException):
        app.add_exception_handler(kind, api_error)


def create_app(model: TextGenerator | HasText, model_name: str | None = None, api_key: str | None = None,
               speculative: str | None = None) -> FastAPI:  # fmt: skip
    """The HTTP app over `model`'s async text API; it must be served on the loop the model runs on.

    `model_name` is the id clients pass as `model` (default: the package's name); `speculative`:
    every request decodes speculatively from that draft source (swarm/speculative.py). Given an
    `AsyncSwarm` (not only its `.text`), `GET /v1/swarm` describes its nodes too, for the web page."""
    text = model if isinstance(model, TextGenerator) else model.text
    name = model_name or text.manifest.name
    live = LiveSessions()
    view = SwarmView(text.manifest, live, StatusProbe(model) if isinstance(model, AsyncSwarm) else None)
    app = FastAPI(title="swarm", description="OpenAI-compatible API over a swarm")
    _install_error_handlers(app)
    app.add_middleware(RequestLog, model_name=name)
    add_page(app)  # open: the page asks for the key, and the API below checks it
    api = APIRouter(dependencies=[Depends(_key_check(api_key))])

    def check_model(requested: str) -> None:
        if requested != name:
            raise ApiError(404, f"the model '{requested}' does not exist; this server serves '{name}'",
                           param="model", code="model_not_found")  # fmt: skip

    def model_card() -> dict[str, Any]:
        return {"id": name, "object": "model", "created": 0, "owned_by": "swarm"}

    @api.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card()]}

    @api.get("/v1/models/{requested:path}")
    async def get_model(requested: str) -> dict[str, Any]:
        check_model(requested)
        return model_card()

    @api.post("/v1/completions", response_model=None)
    async def completions(body: CompletionBody, request: Request) -> dict[str, Any] | StreamingResponse:
        check_model(body.model)
        max_tokens = body.max_tokens or COMPLETION_DEFAULT_MAX_TOKENS
        job = make_job(text, body, prompt_ids_of(text, body.prompt), max_tokens, speculative)
        env = Envelope("text_completion", name, new_id("cmpl"))
        outcome = request.state.outcome = Outcome(len(job.request.prompt_ids))  # for the request's log line
        pieces = _tracked_job(text, job, outcome, env, live)
        if body.stream:
            return _event_stream(_text_chunks(pieces, outcome, env, _include_usage(body)))
        completion = "".join([piece async for piece in pieces])
        reply = env.wrap([text_choice(completion, outcome.finish_reason)], outcome.usage())
        return reply | {"swarm": swarm_stats(outcome)}

    @api.post("/v1/chat/completions", response_model=None)
    async def chat_completions(body: ChatBody, request: Request) -> dict[str, Any] | StreamingResponse:
        check_model(body.model)
        # a conversation longer than the context loses its oldest turns, not the request
        fitted = fit_conversation(text.codec, chat_messages(body.messages), text.manifest.max_context,
                                  body.max_completion_tokens or body.max_tokens)  # fmt: skip
        job = make_job(text, body, fitted.prompt_ids, fitted.max_tokens, speculative)
        outcome = request.state.outcome = Outcome(len(job.request.prompt_ids))  # for the request's log line
        env = Envelope("chat.completion.chunk" if body.stream else "chat.completion", name, new_id("chatcmpl"))
        pieces = _tracked_job(text, job, outcome, env, live)
        if body.stream:
            return _event_stream(_chat_chunks(pieces, outcome, env, _include_usage(body)))
        reply = "".join([piece async for piece in pieces])
        message = env.wrap([message_choice(reply, outcome.finish_reason)], outcome.usage())
        return message | {"swarm": swarm_stats(outcome)}

    @api.get("/v1/swarm")
    async def swarm_map() -> dict[str, Any]:
        """What `swarm-client status --json` shows, and this server's live sessions with their routes."""
        return {**await view.view(), "served_model": name}

    app.include_router(api)
    return app


# ---- serving


@dataclass
class RunningServer:
    host: str
    port: int  # the real bound port, also when asked for port 0
    task: asyncio.Task[None]

    @property
    def page_url(self) -> str:
        """The web page: chat and swarm map (swarm/apps/web_page.py)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    @property
    def url(self) -> str:
        """The base URL an OpenAI client takes (`base_url=`)."""
        return self.page_url + "v1"

    async def wait(self) -> None:
        """Until the server stops (Ctrl-C or SIGTERM when this is the main thread)."""
        await asyncio.shield(self.task)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise SwarmError(f"cannot listen on {host}:{port} ({exc.strerror}); choose another --host or --port") from exc
    sock.set_inheritable(True)
    return sock


@asynccontextmanager
async def run_server(app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[RunningServer]:
    """Serve `app` on the running loop until the block ends; port 0 takes any free port."""
    sock = _bind(host, port)
    config = uvicorn.Config(app, log_config=None, log_level="warning", lifespan="off",
                            timeout_graceful_shutdown=SHUTDOWN_GRACE_S)  # fmt: skip
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]), name="openai-server")
    try:
        while not server.started:
            if task.done():
                task.result()  # startup failed: raise why
                raise SwarmError(f"the HTTP server on {host}:{port} stopped while starting")
            await asyncio.sleep(0.01)
        yield RunningServer(host, sock.getsockname()[1], task)
    finally:
        server.should_exit = True
        await asyncio.wait([task])
        sock.close()


async def serve(
    model: TextGenerator | HasText,
    host: str,
    port: int,
    model_name: str | None = None,
    api_key: str | None = None,
    on_ready: Callable[[RunningServer], None] | None = None,
    speculative: str | None = None,
) -> None:
    """Serve `model` over HTTP until the server is stopped."""
    async with run_server(create_app(model, model_name, api_key, speculative), host, port) as running:
        if on_ready is not None:
            on_ready(running)
        await running.wait()
