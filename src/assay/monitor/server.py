"""The monitor over HTTP: OpenAI-shaped `/v1/moderations`, assay's `/v1/score`, health, models, metrics,
and with a `Generator` (`monitor.generate`) OpenAI-shaped `/v1/chat/completions` whose every answer
carries the monitor's verdict on its prompt, read from the generation's own prefill.

One `Monitor` holds one model, and its scoring calls are blocking. They run on scoring worker threads,
each with its own `Monitor.replica()` (the same weights, a private tokenizer: a Hugging Face fast
tokenizer must not be used from two threads at once); token counting runs on a thread of its own.
Concurrent requests are queued and micro-batched: when a worker is free, the queued items are grouped
until their tokens would pass `max_batch_tokens` or `max_wait_ms` has passed since the oldest one
arrived, and the worker scores the group in one forward pass. On a CPU two workers, each with half the
cores, keep the cores busy while the other dispatches Python (`default_workers`). A generation is one
job on the first worker (prefill and every decoding step), its events handed to the event loop
through a queue, so a chat answer can stream while scoring waits its turn rather than sharing the model;
a server that generates has one worker.

    from assay.monitor.scorer import Monitor
    from assay.monitor.server import run
    run(Monitor.load("bundle/"), port=8000)   # bearer key from $ASSAY_MONITOR_KEY when set

Every error is a JSON body in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`,
so OpenAI clients raise their usual exceptions.

The server is split by job: `api_errors` (OpenAI-shaped errors), `telemetry` (Prometheus metrics),
`batcher` (the micro-batcher), `parsing` (request and response bodies), `chat` (chat completions);
this module builds the app from them and runs it.
"""

from __future__ import annotations

import asyncio
import errno
import hmac
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from typing import Any

try:
    import uvicorn
    from fastapi import Depends, FastAPI, Request
    from fastapi.responses import Response
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
except ImportError as err:  # the serve extra is optional: say how to get it rather than a bare ModuleNotFoundError
    raise ImportError(f"the monitor server needs the serve extra ({err.name} is missing): "
                      "pip install 'assay[serve]'") from err

from assay.monitor.api_errors import APIError, error_response, install_error_handlers  # noqa: E402
from assay.monitor.batcher import MAX_QUEUE_TOKENS, TEXT, Batcher, default_workers  # noqa: E402
from assay.monitor.chat import ChatContext, add_chat_route  # noqa: E402
from assay.monitor.parsing import (check_lengths, json_type, length_limit, moderation_result, parse_score_request,  # noqa: E402
                                   parse_texts, read_json_object, score_result)
from assay.monitor.protocols import ChatGenerator, ScoringMonitor  # noqa: E402
from assay.monitor.telemetry import Metrics, MetricsMiddleware  # noqa: E402

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 4 * 1024 * 1024  # above max_items prompts of max_tokens each; refuses memory-exhausting bodies
LOOPBACK = ("127.0.0.1", "localhost", "::1")
MAX_REQUEST_TOKENS = 16384  # one request's tokens in all: two default batches, so one client cannot hold every worker
DISCONNECT_POLL_S = 0.25  # how often a waiting request checks that its client is still there


# -- access ---------------------------------------------------------------------------------------
class HostMiddleware:
    """Answers only requests whose Host header names one of `hosts`. A server without an API key
    takes loopback names only: a web page can point a name it controls at 127.0.0.1 (DNS
    rebinding) and read what a loopback server answers, but its requests carry that name."""

    def __init__(self, app: Any, hosts: Sequence[str]) -> None:
        self.app, self.hosts = app, {h.lower() for h in hosts}

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http":
            host = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1").strip().lower()
            name = host.split("]")[0] + "]" if host.startswith("[") else host.rsplit(":", 1)[0]
            if name not in self.hosts:
                response = error_response(
                    403, f"Host {host or '(none)'!r} is not one this server answers ({', '.join(sorted(self.hosts))}); "
                    "a server without an API key answers loopback names only: set ASSAY_MONITOR_KEY to serve "
                    "other hosts", code="host_not_allowed")
                return await response(scope, receive, send)
        await self.app(scope, receive, send)


# The loopback names as a Host header carries them (an IPv6 address in brackets).
LOOPBACK_HOSTS = tuple(f"[{h}]" if ":" in h else h for h in LOOPBACK)


def check_api_key(api_key: str) -> None:
    """A key a client can send in a header: printable ASCII without spaces."""
    bad = [c for c in api_key if not (33 <= ord(c) <= 126)]
    if not api_key or bad:
        raise ValueError(f"the API key must be printable ASCII without spaces (it holds {bad[:3]!r}); no HTTP "
                         "client could send it. Choose another key")


def _auth(api_key: str) -> Callable[[Request], Awaitable[None]]:
    check_api_key(api_key)
    expected = api_key.encode()

    async def require_key(request: Request) -> None:
        header = request.headers.get("authorization")
        if not header:
            raise APIError(401, "missing API key: send the header `Authorization: Bearer <key>`",
                           code="missing_api_key")
        scheme, _, given = header.partition(" ")
        # The scheme is case-insensitive (RFC 7235); the key is compared in constant time, so response
        # timing does not leak how much of a guessed key was right.
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
            raise APIError(401, "invalid API key: send `Authorization: Bearer <key>` with the server's key",
                           code="invalid_api_key")

    return require_key


# -- the app --------------------------------------------------------------------------------------
def _resolve_threshold(monitor: ScoringMonitor, threshold: str | None) -> str:
    name = threshold or monitor.default_threshold
    if name not in monitor.thresholds:
        raise ValueError(f"unknown threshold {name!r} for monitor {monitor.name}; "
                         f"choose one of {sorted(monitor.thresholds)}")
    return name


def _check_options(max_items: int, max_batch_tokens: int, max_wait_ms: float, max_body_bytes: int,
                   workers: int = 1, generating: bool = False) -> None:
    for name, value in (("max_items", max_items), ("max_batch_tokens", max_batch_tokens),
                        ("max_body_bytes", max_body_bytes), ("workers", workers)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    if max_wait_ms < 0:
        raise ValueError(f"max_wait_ms must be 0 or more, got {max_wait_ms}")
    if generating and workers > 1:
        raise ValueError(f"workers={workers} with a generator: generation hooks the model for its own forward "
                         "pass, so scoring and generation share one thread; use workers=1")


def _check_generator(monitor: ScoringMonitor, generator: ChatGenerator | None, threshold: str) -> None:
    if generator is None:
        return
    if getattr(generator, "monitor", monitor) is not monitor:
        raise ValueError("the generator runs on another monitor than the one served; build it on this monitor "
                         "(Generator(monitor)) so one worker owns the one model")
    if generator.threshold != threshold:
        raise ValueError(f"the generator flags at {generator.threshold!r} but the server at {threshold!r}; "
                         "build both with the same threshold")


def create_app(monitor: ScoringMonitor, *, api_key: str | None = None, max_items: int = 64,
               max_batch_tokens: int = 8192, max_wait_ms: float = 5.0, threshold: str | None = None,
               max_body_bytes: int = MAX_BODY_BYTES, generator: ChatGenerator | None = None,
               workers: int | None = None, max_queue_tokens: int = MAX_QUEUE_TOKENS,
               max_request_tokens: int = MAX_REQUEST_TOKENS, allowed_hosts: Sequence[str] | None = None) -> FastAPI:
    """A FastAPI app serving `monitor`; with `api_key`, every route but /healthz needs it as a bearer token.
    `threshold` names the operating point `flagged` means in /v1/moderations (default: the generator's,
    else the monitor's). With `generator` (built on `monitor`), /v1/chat/completions is served too.
    `workers` scoring threads share the model (default: `default_workers`). Past `max_queue_tokens`
    waiting, new work gets a 429; a request of more than `max_request_tokens` in all, a 413.
    `allowed_hosts`: the Host names answered (default: any with a key, loopback names only without one)."""
    threshold = _resolve_threshold(monitor, threshold or getattr(generator, "threshold", None))
    _check_generator(monitor, generator, threshold)
    if workers is None:
        device = str(getattr(getattr(monitor, "lm", None), "device", "cpu")).split(":")[0]
        workers = default_workers(device, generator is not None) if hasattr(monitor, "replica") else 1
    _check_options(max_items, max_batch_tokens, max_wait_ms, max_body_bytes, workers, generator is not None)
    batcher = Batcher(monitor, max_batch_tokens=max_batch_tokens, max_wait_ms=max_wait_ms, workers=workers,
                      max_queue_tokens=max_queue_tokens)
    metrics = batcher.metrics = Metrics(batcher.depth)
    generations: set[threading.Event] = set()  # the cancel flags of generations queued or running

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(AcceptErrorLog(loop.get_exception_handler()))
        await batcher.start()
        log.info("serving monitor %s (flagged at %s, %d-token limit)%s", monitor.name, threshold, monitor.max_tokens,
                 f", generating with {generator.model_name}" if generator is not None else "")
        try:
            yield
        finally:
            for cancel in list(generations):  # so stopping waits for one token, not for whole generations
                cancel.set()
            await batcher.stop()

    # No /docs or /openapi.json: they would be routes outside the API key, and this API is small.
    app = FastAPI(title="assay monitor", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.batcher, app.state.metrics, app.state.threshold = batcher, metrics, threshold
    routes = ["/v1/moderations", "/v1/score", "/v1/models", "/healthz", "/metrics"]
    install_error_handlers(app, routes + ["/v1/chat/completions"] * (generator is not None))
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    hosts = allowed_hosts if allowed_hosts is not None else (None if api_key else LOOPBACK_HOSTS)
    if hosts is not None:
        app.add_middleware(HostMiddleware, hosts=hosts)
    guarded = [Depends(_auth(api_key))] if api_key else []

    # Formatting on a thread of its own (with its own tokenizer) lets requests queue while a forward
    # pass runs, so they leave together in the next batch; the formatted prompts are what the worker
    # scores (each prompt tokenised once). A monitor without a counter of its own (a test fake)
    # formats on the scoring thread.
    counter = monitor.token_counter() if hasattr(monitor, "token_counter") else None

    async def prepare(kind: str, payloads: list[Any]) -> list[Any]:
        source = counter or monitor
        fn = source.format_texts if kind == TEXT else source.format_conversations
        try:
            return await (batcher.count(fn, payloads) if counter is not None else batcher.call(fn, payloads))
        except ValueError as err:  # the monitor's word on a bad input (e.g. a role its chat format lacks)
            raise APIError(400, f"invalid input: {err}", code="invalid_input") from None

    async def count(kind: str, payloads: list[Any]) -> list[int]:  # the chat route's (its generator formats again)
        return [len(p.input_ids) for p in await prepare(kind, payloads)]

    async def verdicts(request: Request, kind: str, payloads: list[Any], key: str, single: bool = False) -> list[Any]:
        prompts = await prepare(kind, payloads)
        counts = [len(p.input_ids) for p in prompts]
        check_lengths(counts, key, length_limit(monitor, kind), single, request_limit=max_request_tokens)
        futures = batcher.submit(kind, prompts, counts)
        gathered = asyncio.gather(*futures)
        # A client that hangs up while its items wait gets them dropped from the queue (the batcher
        # skips a cancelled item), rather than a forward pass spent on an answer nobody reads.
        while True:
            done, _ = await asyncio.wait({gathered}, timeout=DISCONNECT_POLL_S)
            if done:
                return list(gathered.result())
            if await request.is_disconnected():
                for f in futures:
                    f.cancel()
                with suppress(asyncio.CancelledError):
                    await gathered
                log.info("client went away; dropped its %d queued items", sum(f.cancelled() for f in futures))
                raise APIError(499, "client closed the request", code="client_closed")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models", dependencies=guarded)
    async def models() -> dict[str, Any]:
        data = [{"id": monitor.name, "object": "model", "owned_by": "assay", "card": monitor.describe()}]
        if generator is not None:
            data.append({"id": generator.model_name, "object": "model", "owned_by": "assay",
                         "monitored_by": monitor.name, "max_new_tokens": generator.max_new_tokens})
        return {"object": "list", "data": data}

    @app.get("/v1/models/{model_id:path}", dependencies=guarded)
    async def model(model_id: str) -> dict[str, Any]:
        found = next((m for m in (await models())["data"] if m["id"] == model_id), None)
        if found is None:
            raise APIError(404, f"no model {model_id!r} here; this server serves "
                           f"{[m['id'] for m in (await models())['data']]}", code="model_not_found", param="model")
        return found

    @app.post("/v1/moderations", dependencies=guarded)
    async def moderations(request: Request) -> dict[str, Any]:
        body = await read_json_object(request, max_body_bytes)
        if "model" in body and not isinstance(body["model"], str):
            raise APIError(400, f"`model` must be a string, got {json_type(body['model'])}", code="invalid_model",
                           param="model")
        # `model` is accepted and ignored: clients written for OpenAI send their own model names.
        texts = parse_texts(body, "input", max_items)
        results = await verdicts(request, TEXT, texts, "input")
        return {"id": f"modr-{uuid.uuid4().hex}", "model": monitor.name,
                "results": [moderation_result(v, threshold) for v in results]}

    @app.post("/v1/score", dependencies=guarded)
    async def score(request: Request) -> dict[str, Any]:
        body = await read_json_object(request, max_body_bytes)
        kind, payloads, key = parse_score_request(body, max_items)
        results = await verdicts(request, kind, payloads, key, single=key == "messages")
        return {"model": monitor.name, "results": [score_result(v) for v in results]}

    @app.get("/metrics", dependencies=guarded)
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    if generator is not None:
        add_chat_route(app, ChatContext(monitor, generator, batcher, metrics, generations, count, max_body_bytes),
                       guarded)
    return app


def run(monitor: ScoringMonitor, host: str = "127.0.0.1", port: int = 8000, *,
        api_key_env: str = "ASSAY_MONITOR_KEY", limit_concurrency: int = 256, timeout_keep_alive: int = 5,
        **app_options: Any) -> None:
    """Serve `monitor` with uvicorn until interrupted; the bearer key comes from `$api_key_env` when set
    (an explicit `api_key=` wins). One process only: the model lives in this process's memory.
    At most `limit_concurrency` connections at once (more get a 503), idle keep-alive connections
    closed after `timeout_keep_alive` seconds. `app_options` go to `create_app` (`generator=` adds
    /v1/chat/completions)."""
    if app_options.get("api_key") is None:
        app_options["api_key"] = os.environ.get(api_key_env) or None
    if app_options["api_key"] is None and host not in LOOPBACK:
        log.warning("serving on %s without an API key: anyone who can reach the port can use the monitor; "
                    "set $%s", host, api_key_env)
    app = create_app(monitor, **app_options)
    fds = raise_fd_limit()
    if fds < limit_concurrency + FD_RESERVE:
        log.warning("the file-descriptor limit is %d, below %d connections (--limit-concurrency) + %d for the model "
                    "and logs: past it new clients wait until idle ones time out; raise it with `ulimit -n`",
                    fds, limit_concurrency, FD_RESERVE)
    logging.getLogger("uvicorn.access").addFilter(_drop_query)
    uvicorn.run(app, host=host, port=port, log_level="info", limit_concurrency=limit_concurrency,
                timeout_keep_alive=timeout_keep_alive, timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
                http=header_deadline_protocol(HEADER_TIMEOUT_S))


GRACEFUL_SHUTDOWN_S = 30  # SIGTERM waits this long for requests in flight, then stops
HEADER_TIMEOUT_S = 10.0  # a connection sends a whole request head within this, or is closed


def header_deadline_protocol(seconds: float) -> type:
    """uvicorn's HTTP/1.1 protocol with one more timer: a connection must send a whole request head
    within `seconds` of opening (or of its last response), however slowly it trickles bytes. uvicorn
    times out idle keep-alive connections only after a response, so a socket that never sends a
    request held its file descriptor for good (measured: 200 such sockets all still open after 8 s),
    and enough of them lock every other client out."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderDeadline(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def handle_events(self) -> None:
            super().handle_events()
            if self.cycle is not None and not self.cycle.response_complete:  # a request head arrived
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._head_timer = self.loop.call_later(seconds, self._too_slow)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _too_slow(self) -> None:
            if not self.transport.is_closing():
                self.transport.close()

    return HeaderDeadline


FD_RESERVE = 64  # descriptors the process holds besides client sockets (model files, logs, pipes), with room


def raise_fd_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit (as Go's runtime does at start), so
    a default `ulimit -n` of 1024 does not cap connections the administrator allowed; the limit now."""
    try:
        import resource
    except ImportError:  # not POSIX: no per-process limit to raise
        return 1 << 16
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = 1 << 16 if hard == resource.RLIM_INFINITY else hard
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):  # a sandbox that refuses: keep the limit we have
            pass
    return soft


class AcceptErrorLog:
    """The event loop's exception handler, but one line per `every_s` for "out of file descriptors" on
    accept. CPython's selector loop logs that error with a traceback once per pending connection per
    tick (up to the listen backlog, 2048 under uvicorn): 125 idle sockets under `ulimit -n 128` wrote
    41 MB of log in 12 s. Everything else goes to the handler it wraps."""

    def __init__(self, inner: Callable[[asyncio.AbstractEventLoop, dict[str, Any]], Any] | None,
                 every_s: float = 10.0) -> None:
        self.inner, self.every_s, self.suppressed, self._last = inner, every_s, 0, -math.inf

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        err = context.get("exception")
        if isinstance(err, OSError) and err.errno in (errno.EMFILE, errno.ENFILE) and "accept" in context.get(
                "message", ""):
            now = time.monotonic()
            if now - self._last >= self.every_s:
                log.warning("out of file descriptors (%s; %d such errors since the last line): new connections "
                            "wait until idle ones close (within %.0f s); raise `ulimit -n`", err.strerror,
                            self.suppressed, HEADER_TIMEOUT_S)
                self._last, self.suppressed = now, 0
            else:
                self.suppressed += 1
            return
        if self.inner is not None:
            self.inner(loop, context)
        else:
            loop.default_exception_handler(context)


def _drop_query(record: logging.LogRecord) -> bool:
    """The access log without query strings: a client that sends its key as `?api_key=...` must
    not have it written to the log."""
    if isinstance(record.args, tuple) and len(record.args) >= 3 and isinstance(record.args[2], str):
        record.args = (*record.args[:2], record.args[2].split("?", 1)[0], *record.args[3:])
    return True
