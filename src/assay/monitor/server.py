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
"""

from __future__ import annotations

import asyncio
import errno
import hmac
import json
import logging
import math
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

try:
    import uvicorn
    from fastapi import Depends, FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response, StreamingResponse
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError as err:  # the serve extra is optional: say how to get it rather than a bare ModuleNotFoundError
    raise ImportError(f"the monitor server needs the serve extra ({err.name} is missing): "
                      "pip install 'assay[serve]'") from err

from assay.errors import ScoringError  # noqa: E402
from assay.runtime import set_torch_threads, threads_per_worker  # noqa: E402

log = logging.getLogger(__name__)

CATEGORY = "harmful_intent"
ROLES = ("system", "user", "assistant")
MAX_BODY_BYTES = 4 * 1024 * 1024  # above max_items prompts of max_tokens each; refuses memory-exhausting bodies
LOOPBACK = ("127.0.0.1", "localhost", "::1")
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
MAX_QUEUE_TOKENS = 16 * 8192  # tokens waiting to be scored before new work gets a 429 (16 default batches)
MAX_REQUEST_TOKENS = 16384  # one request's tokens in all: two default batches, so one client cannot hold every worker
RETRY_AFTER_S = 1
BODY_TIMEOUT_S = 30.0  # a request body arrives within this, or the request gets a 408
DISCONNECT_POLL_S = 0.25  # how often a waiting request checks that its client is still there


class ScoringMonitor(Protocol):
    """What the server needs of `assay.monitor.scorer.Monitor` (a protocol, so tests can pass a fake)."""

    # Read-only properties, so both the real Monitor's properties and plain attributes satisfy them.
    @property
    def name(self) -> str: ...
    @property
    def thresholds(self) -> dict[str, float]: ...
    @property
    def default_threshold(self) -> str: ...
    @property
    def max_tokens(self) -> int: ...

    def count_tokens(self, texts: list[str]) -> list[int]: ...
    def count_tokens_messages(self, conversations: list[list[dict[str, str]]]) -> list[int]: ...
    def score_texts(self, texts: list[str]) -> list[Any]: ...
    def score_messages(self, conversations: list[list[dict[str, str]]]) -> list[Any]: ...
    def describe(self) -> dict: ...


class ChatGenerator(Protocol):
    """What the server needs of `assay.monitor.generate.Generator`."""

    @property
    def threshold(self) -> str: ...
    @property
    def max_new_tokens(self) -> int: ...
    @property
    def model_name(self) -> str: ...
    @property
    def context_length(self) -> int | None: ...

    def stream(self, messages: list[dict[str, str]], params: Any, should_stop: Callable[[], bool]) -> Any: ...


# -- errors ---------------------------------------------------------------------------------------
class APIError(Exception):
    """An error answered as OpenAI's error object; `message` says what is wrong and what to do."""

    def __init__(self, status: int, message: str, *, code: str, param: str | None = None,
                 type: str = "invalid_request_error", headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.type = status, message, code, param, type
        self.headers = headers


def error_response(status: int, message: str, *, code: str | None, param: str | None = None,
                   type: str = "invalid_request_error", headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": type, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def _api_error_response(err: APIError) -> JSONResponse:
    return error_response(err.status, err.message, code=err.code, param=err.param, type=err.type, headers=err.headers)


def _validation_message(err: RequestValidationError) -> str:
    parts = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in err.errors()]
    return "invalid request: " + "; ".join(parts) + "; fix these fields and retry"


_HTTP_CODES = {401: "unauthorized", 404: "not_found", 405: "method_not_allowed"}


def _install_error_handlers(app: FastAPI, routes: Sequence[str]) -> None:
    async def on_api_error(request: Request, err: APIError) -> JSONResponse:
        return _api_error_response(err)

    # FastAPI answers its own validation errors with a 422 of a different shape; OpenAI clients
    # expect their error object, and OpenAI answers a bad request with 400.
    async def on_validation(request: Request, err: RequestValidationError) -> JSONResponse:
        return error_response(400, _validation_message(err), code="invalid_request")

    async def on_http(request: Request, err: StarletteHTTPException) -> JSONResponse:
        message = f"{err.detail}: {request.method} {request.url.path}"
        if err.status_code == 404:
            message += f"; routes are {', '.join(routes)}"
        return error_response(err.status_code, message, code=_HTTP_CODES.get(err.status_code, "http_error"),
                              headers=getattr(err, "headers", None))

    # A safety net only: scoring failures are caught and answered where they happen.
    async def on_crash(request: Request, err: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, f"internal server error ({type(err).__name__}); see the server log",
                              code="internal_error", type="server_error")

    app.add_exception_handler(APIError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_crash)


# -- metrics --------------------------------------------------------------------------------------
class Metrics:
    """The app's Prometheus metrics, in a registry of its own so several apps can live in one process."""

    def __init__(self, queue_depth: Callable[[], float]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("assay_monitor_requests", "HTTP requests answered", ["route", "method", "status"],
                                registry=r)
        self.latency = Histogram("assay_monitor_request_duration_seconds", "HTTP request latency", ["route"],
                                 registry=r)
        self.batch_size = Histogram("assay_monitor_batch_size", "Items per scoring call", ["kind"], registry=r,
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024))
        self.batch_tokens = Histogram("assay_monitor_batch_tokens", "Tokens per scoring call", ["kind"], registry=r,
                                      buckets=(64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536))
        self.batch_seconds = Histogram("assay_monitor_batch_seconds", "Seconds per scoring call", ["kind"],
                                       registry=r)
        self.items = Counter("assay_monitor_items_scored", "Items scored", ["kind"], registry=r)
        self.failures = Counter("assay_monitor_batch_failures", "Scoring calls that raised", ["kind"], registry=r)
        self.queue_depth = Gauge("assay_monitor_queue_depth", "Items waiting to be scored", registry=r)
        self.queue_depth.set_function(queue_depth)  # read at scrape time, so it can never drift
        self.completions = Counter("assay_monitor_completions", "Chat completions finished", ["finish_reason"],
                                   registry=r)
        self.completion_tokens = Counter("assay_monitor_completion_tokens", "Tokens generated", registry=r)
        self.generation_seconds = Histogram("assay_monitor_generation_seconds", "Seconds per generation on the "
                                            "worker (prefill and decoding)", registry=r,
                                            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))


class MetricsMiddleware:
    """Counts and times every HTTP request (plain ASGI, so it sees the final status of errors too)."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 500  # 500 unless a response starts: an exception escaped

        async def send_status(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            # The route template, not the raw path, so random 404 paths cannot blow up label cardinality.
            route = getattr(scope.get("route"), "path", "unmatched")
            # and the method from a fixed set: a client can send any token as a method
            method = scope["method"] if scope["method"] in HTTP_METHODS else "other"
            self.metrics.requests.labels(route, method, str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)


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


# -- the micro-batcher ----------------------------------------------------------------------------
TEXT, MESSAGES = "text", "messages"


@dataclass
class Job:
    kind: str  # TEXT or MESSAGES: they go to different scoring calls, so never share a batch
    payload: Any  # a text, or a conversation (list of role/content dicts)
    n_tokens: int
    future: asyncio.Future
    enqueued: float = field(default_factory=time.monotonic)


class Batcher:
    """Owns the scoring worker threads that touch the monitor, and the queue feeding them."""

    def __init__(self, monitor: ScoringMonitor, *, max_batch_tokens: int, max_wait_ms: float,
                 workers: int = 1, max_queue_tokens: int = MAX_QUEUE_TOKENS) -> None:
        if workers > 1 and not hasattr(monitor, "replica"):
            raise ValueError("several scoring workers need a monitor with replica() (one tokenizer per thread)")
        self.monitor, self.workers = monitor, workers
        # Sized here, in the caller's thread: a thread PyTorch first meets after a worker has set its own
        # count would read that count as its default, not the cores.
        self.threads = threads_per_worker(workers)
        self.max_batch_tokens, self.max_wait = max_batch_tokens, max_wait_ms / 1000
        self.max_queue_tokens = max_queue_tokens
        self.short_tokens = max(1, max_batch_tokens // 8)  # "short": what the last free worker keeps its lane for
        self.pending: dict[str, deque[Job]] = {TEXT: deque(), MESSAGES: deque()}
        self.metrics: Metrics | None = None
        self._arrived = asyncio.Event()
        self._released = asyncio.Event()
        self._executors: list[ThreadPoolExecutor] = []
        self._free: asyncio.Queue | None = None  # (executor, monitor) pairs not scoring a batch now
        self._busy: set[asyncio.Task] = set()
        self._counter: ThreadPoolExecutor | None = None
        self._task: asyncio.Task | None = None

    @property
    def _executor(self) -> ThreadPoolExecutor | None:
        """The first worker: token counting for counter-less monitors, and generations, run there."""
        return self._executors[0] if self._executors else None

    def depth(self) -> int:
        return sum(len(q) for q in self.pending.values())

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        self._arrived = asyncio.Event()  # bound to this loop: an app may be started again on a new loop
        self._released = asyncio.Event()
        self._executors = [ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"assay-monitor-{i}",
                                              initializer=set_torch_threads, initargs=(self.threads,))
                           for i in range(self.workers)]
        self._free = asyncio.Queue()
        for i, executor in enumerate(self._executors):
            self._free.put_nowait((executor, self.monitor if i == 0 else self.monitor.replica()))
        self._counter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="assay-monitor-tokenize")
        self._task = asyncio.create_task(self._work(), name="assay-monitor-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
        for task in list(self._busy):  # batches being scored: their items get a 503, their thread finishes
            task.cancel()
        with suppress(asyncio.CancelledError):
            await asyncio.gather(*self._busy, return_exceptions=True)
        shutting = APIError(503, "the monitor server is shutting down; retry against a running server",
                            code="shutting_down", type="server_error")
        for queue in self.pending.values():
            while queue:
                _resolve(queue.popleft().future, error=shutting)
        for executor in self._executors:
            # Let a forward pass already running finish rather than leave the thread behind.
            await asyncio.to_thread(executor.shutdown, wait=True)
        if self._counter is not None:
            await asyncio.to_thread(self._counter.shutdown, wait=True)
        self._task = self._counter = self._free = None
        self._executors = []

    async def count(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a token count on the counting thread (never the scoring one)."""
        if not self.running or self._counter is None:
            raise APIError(503, "the scoring worker is not running (server starting or stopping); retry shortly",
                           code="not_ready", type="server_error")
        return await asyncio.get_running_loop().run_in_executor(self._counter, fn, *args)

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run `fn` on the monitor's thread (token counting: it shares the tokenizer with scoring)."""
        return await self.start_job(fn, *args)

    def start_job(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future:
        """Queue `fn` on the monitor's thread, after what is queued there (a generation is one such job)."""
        if not self.running or self._executor is None:
            raise APIError(503, "the scoring worker is not running (server starting or stopping); retry shortly",
                           code="not_ready", type="server_error")
        return asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def submit(self, kind: str, payloads: Sequence[Any], n_tokens: Sequence[int]) -> list[asyncio.Future]:
        """Queue items; each future resolves to its Verdict (or an APIError)."""
        if not self.running:
            raise APIError(503, "the scoring worker is not running (server starting or stopping); retry shortly",
                           code="not_ready", type="server_error")
        # Backpressure: past the bound, new work is refused at once (429) rather than queued behind
        # minutes of others; an idle server takes any one request its per-request limits allow.
        queued = sum(j.n_tokens for q in self.pending.values() for j in q)
        if queued and queued + sum(n_tokens) > self.max_queue_tokens:
            raise APIError(429, f"the monitor is busy ({queued} tokens waiting to be scored, limit "
                           f"{self.max_queue_tokens}); retry after {RETRY_AFTER_S} s", code="queue_full",
                           type="rate_limit_error", headers={"Retry-After": str(RETRY_AFTER_S)})
        loop = asyncio.get_running_loop()
        jobs = [Job(kind, p, n, loop.create_future()) for p, n in zip(payloads, n_tokens, strict=True)]
        self.pending[kind].extend(jobs)
        self._arrived.set()
        return [j.future for j in jobs]

    async def _work(self) -> None:
        assert self._free is not None
        while True:
            try:
                worker = await self._free.get()  # a batch is formed only once a worker can take it
                # With several workers, the last one free takes short items only while long ones hold the
                # others: a one-line request then waits for a short batch, not for a long prompt's forward
                # pass (measured in benchmarks/monitor_load.py, the short-behind-long phase).
                short_only = self.workers > 1 and self._free.qsize() == 0
                try:
                    kind, jobs = await self._next_batch(short_only)
                except BaseException:
                    self._release(worker)
                    raise
                if not jobs:  # every queued client went away, or another worker came free: choose again
                    self._free.put_nowait(worker)
                    continue
                task = asyncio.create_task(self._score(kind, jobs, *worker))
                self._busy.add(task)
                task.add_done_callback(lambda t, w=worker: (self._busy.discard(t), self._release(w)))
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug here must not stop every later request from being answered
                log.exception("monitor batcher error; continuing")

    def _release(self, worker: tuple[ThreadPoolExecutor, ScoringMonitor]) -> None:
        if self._free is not None:
            self._free.put_nowait(worker)
            self._released.set()

    async def _next_batch(self, short_only: bool = False) -> tuple[str, list[Job]]:
        """Wait for items, then gather one kind's items until the token budget or the wait runs out.
        `short_only`: items of at most `short_tokens` only; ("", []) if another worker comes free
        while only longer items wait (that worker takes them)."""
        assert self._free is not None
        fits = (lambda j: j.n_tokens <= self.short_tokens) if short_only else (lambda j: True)
        while not any(fits(j) for q in self.pending.values() for j in q):
            if short_only and self.depth() and self._free.qsize():
                return "", []
            self._arrived.clear()
            self._released.clear()
            waits = [self._arrived] + ([self._released] if short_only and self.depth() else [])
            await _first_of(waits)
        kind = min((k for k, q in self.pending.items() if any(fits(j) for j in q)),
                   key=lambda k: min(_due(j) for j in self.pending[k] if fits(j)))
        # Shortest due first: a job is due at its arrival plus the time its tokens take to score, so a
        # short request that arrives while a long one waits goes ahead of it, and a long one is never
        # passed for longer than its own scoring time (no starvation).
        self.pending[kind] = queue = deque(sorted(self.pending[kind], key=_due))
        # Measured from the oldest item's arrival: one that waited through a forward pass goes at once.
        deadline = min(j.enqueued for j in queue if fits(j)) + self.max_wait
        batch: list[Job] = []
        tokens = 0
        while True:
            kept, full = deque(), False
            while queue:
                job = queue.popleft()
                if job.future.done():  # the client went away: don't spend a forward pass on it
                    continue
                if full or not fits(job):
                    kept.append(job)
                elif batch and tokens + job.n_tokens > self.max_batch_tokens:
                    full = True
                    kept.append(job)
                else:
                    batch.append(job)
                    tokens += job.n_tokens
            queue.extend(kept)
            remaining = deadline - time.monotonic()
            if full or remaining <= 0 or tokens >= self.max_batch_tokens:
                return kind, batch
            # No await between draining the queue and clearing: an item queued meanwhile cannot be missed.
            self._arrived.clear()
            with suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)

    async def _score(self, kind: str, jobs: list[Job], executor: ThreadPoolExecutor, monitor: ScoringMonitor) -> None:
        fn = monitor.score_texts if kind == TEXT else monitor.score_messages
        start = time.perf_counter()
        try:
            verdicts = await asyncio.get_running_loop().run_in_executor(executor, fn, [j.payload for j in jobs])
            if len(verdicts) != len(jobs):
                raise RuntimeError(f"{fn.__name__} returned {len(verdicts)} verdicts for {len(jobs)} inputs")
        except asyncio.CancelledError:
            for job in jobs:
                _resolve(job.future, error=APIError(503, "the monitor server is shutting down; retry",
                                                    code="shutting_down", type="server_error"))
            raise
        except Exception as err:
            log.exception("scoring a batch of %d %s items failed", len(jobs), kind)
            self._observe_failure(kind)
            failed = (APIError(500, f"no verdict: {err}", code="non_finite_score", type="server_error")
                      if isinstance(err, ScoringError) else
                      APIError(500, f"the monitor failed to score this input ({type(err).__name__}); "
                               "see the server log, and retry", code="scoring_failed", type="server_error"))
            for job in jobs:
                _resolve(job.future, error=failed)
            return
        self._observe(kind, jobs, time.perf_counter() - start)
        for job, verdict in zip(jobs, verdicts, strict=True):
            _resolve(job.future, result=verdict)

    def _observe(self, kind: str, jobs: list[Job], seconds: float) -> None:
        log.debug("scored %d %s items (%d tokens) in %.3f s", len(jobs), kind, sum(j.n_tokens for j in jobs), seconds)
        if self.metrics is not None:
            self.metrics.batch_size.labels(kind).observe(len(jobs))
            self.metrics.batch_tokens.labels(kind).observe(sum(j.n_tokens for j in jobs))
            self.metrics.batch_seconds.labels(kind).observe(seconds)
            self.metrics.items.labels(kind).inc(len(jobs))

    def _observe_failure(self, kind: str) -> None:
        if self.metrics is not None:
            self.metrics.failures.labels(kind).inc()


# Tokens a CPU scores per second, order of magnitude (Gemma 3 270M, bf16, 2 cores: benchmarks/monitor_load.py):
# the exchange rate between waiting and length in `_due`.
TOKENS_PER_SECOND = 2000.0


def _due(job: Job) -> float:
    return job.enqueued + job.n_tokens / TOKENS_PER_SECOND


async def _first_of(events: list[asyncio.Event]) -> None:
    """Until any of `events` is set."""
    tasks = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()


def default_workers(device: str, generating: bool) -> int:
    """Scoring threads for a server on `device`: two on a CPU with two or more cores, else one.

    One forward at a time leaves a CPU's cores idle while Python dispatches each op and while an
    OpenMP team waits at a barrier for a thread the HTTP side preempted; two forwards at a time, each
    on half the cores, fill those gaps (measured in benchmarks/monitor_load.py). A GPU runs one
    stream of kernels anyway, and generation hooks the model for its own forward, so both get one."""
    cores = torch.get_num_threads()
    return 2 if device == "cpu" and cores >= 2 and not generating else 1


def _resolve(future: asyncio.Future, *, result: Any = None, error: BaseException | None = None) -> None:
    if future.done():  # cancelled: its request is gone
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


# -- request parsing ------------------------------------------------------------------------------
def _json_type(value: Any) -> str:
    names = {type(None): "null", bool: "boolean", int: "number", float: "number", str: "string", list: "array",
             dict: "object"}
    return names.get(type(value), type(value).__name__)


async def read_json_object(request: Request, max_bytes: int) -> dict[str, Any]:
    """The request body as a JSON object, or an APIError that says what is wrong with it. Only a
    body declared `application/json`: a browser sends `text/plain` cross-origin without asking
    first, so accepting any type would let any web page a user opens drive the server. A body not
    received within `BODY_TIMEOUT_S` is a 408: a client trickling bytes must not hold a connection
    and a handler for good."""
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != "application/json":
        raise APIError(415, f"send the body as JSON with `Content-Type: application/json` (got "
                       f"{media or 'no content type'!r})", code="unsupported_media_type")
    declared = request.headers.get("content-length", "")
    too_big = APIError(413, f"request body is over the {max_bytes}-byte limit; send fewer or shorter inputs "
                       "per request", code="body_too_large")
    if declared.isdigit() and int(declared) > max_bytes:
        raise too_big
    body = bytearray()
    try:
        async with asyncio.timeout(BODY_TIMEOUT_S):
            async for chunk in request.stream():  # streamed: an oversized body is refused without holding it all
                body += chunk
                if len(body) > max_bytes:
                    raise too_big
    except TimeoutError:
        raise APIError(408, f"request body not received within {BODY_TIMEOUT_S:g} s; send it at once",
                       code="body_timeout") from None
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise APIError(400, f"request body is not valid UTF-8 (bad byte at offset {err.start}); "
                       "send JSON encoded as UTF-8", code="invalid_encoding") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise APIError(400, f"request body is not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}); "
                       "send a JSON object", code="invalid_json") from None
    except RecursionError:
        raise APIError(400, "request body nests JSON too deeply; send a flat object", code="invalid_json") from None
    except ValueError as err:  # e.g. an integer of more digits than Python converts
        raise APIError(400, f"request body holds a value JSON parsing refused ({err}); send a plain object",
                       code="invalid_json") from None
    if not isinstance(value, dict):
        raise APIError(400, f"request body must be a JSON object, got {_json_type(value)}", code="invalid_request")
    return value


def parse_texts(body: dict[str, Any], key: str, max_items: int) -> list[str]:
    """`body[key]` as a non-empty list of non-empty strings (a single string is a list of one)."""
    if key not in body:
        raise APIError(400, f"missing `{key}`: send a string or an array of strings", code="missing_input", param=key)
    value = body[key]
    if isinstance(value, str):
        value = [value]
    elif not isinstance(value, list):
        raise APIError(400, f"`{key}` must be a string or an array of strings, got {_json_type(value)}",
                       code="invalid_input", param=key)
    if not value:
        raise APIError(400, f"`{key}` is an empty array; send at least one string", code="empty_input", param=key)
    _check_count(len(value), key, max_items)
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise APIError(400, f"`{key}[{i}]` must be a string, got {_json_type(item)} (only text input is "
                           "supported; nested arrays and multi-modal parts are not)", code="invalid_input",
                           param=f"{key}[{i}]")
        if not item:
            raise APIError(400, f"`{key}[{i}]` is an empty string; send text to score", code="empty_input",
                           param=f"{key}[{i}]")
        _check_text(item, f"{key}[{i}]")
    return value


def _check_text(text: str, where: str) -> None:
    """A string JSON allows but no tokenizer encodes: a lone UTF-16 surrogate escape (`"\\ud800"`)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise APIError(400, f"`{where}` holds a lone surrogate escape at character {err.start}, which is not text; "
                       "send valid Unicode", code="invalid_input", param=where) from None


def parse_conversation(value: Any, where: str) -> list[dict[str, str]]:
    """One chat: a non-empty array of {"role", "content"} objects, copied to plain dicts."""
    if not isinstance(value, list) or not value:
        got = "an empty array" if value == [] else _json_type(value)
        raise APIError(400, f"`{where}` must be a non-empty array of {{\"role\", \"content\"}} objects, got {got}",
                       code="invalid_messages", param=where)
    out = []
    for j, message in enumerate(value):
        at = f"{where}[{j}]"
        if not isinstance(message, dict):
            raise APIError(400, f"`{at}` must be an object with `role` and `content`, got {_json_type(message)}",
                           code="invalid_messages", param=at)
        extra = sorted(set(message) - {"role", "content"})
        if extra:  # dropping fields silently would score something other than what the caller sent
            raise APIError(400, f"`{at}` has unsupported fields {extra}; send only `role` and `content`",
                           code="invalid_messages", param=at)
        if message.get("role") not in ROLES:
            raise APIError(400, f"`{at}.role` must be one of {list(ROLES)}, got {message.get('role')!r}",
                           code="invalid_role", param=f"{at}.role")
        if not isinstance(message.get("content"), str):
            raise APIError(400, f"`{at}.content` must be a string, got {_json_type(message.get('content'))}",
                           code="invalid_messages", param=f"{at}.content")
        _check_text(message["content"], f"{at}.content")
        out.append({"role": message["role"], "content": message["content"]})
    return out


def parse_score_request(body: dict[str, Any], max_items: int) -> tuple[str, list[Any], str]:
    """(kind, payloads, name used in messages) from a /v1/score body holding exactly one input field."""
    given = [k for k in ("input", "messages", "conversations") if k in body]
    unknown = sorted(set(body) - {"input", "messages", "conversations", "model"})
    if unknown:
        raise APIError(400, f"unknown fields {unknown}; send one of `input`, `messages` or `conversations`",
                       code="invalid_request", param=unknown[0])
    if len(given) != 1:
        raise APIError(400, "send exactly one of `input` (texts), `messages` (one chat) or `conversations` "
                       f"(an array of chats); got {given or 'none'}", code="invalid_request")
    key = given[0]
    if key == "input":
        return TEXT, parse_texts(body, "input", max_items), "input"
    if key == "messages":
        return MESSAGES, [parse_conversation(body["messages"], "messages")], "messages"
    chats = body["conversations"]
    if not isinstance(chats, list) or not chats:
        raise APIError(400, "`conversations` must be a non-empty array of chats (each an array of messages)",
                       code="invalid_messages", param="conversations")
    _check_count(len(chats), "conversations", max_items)
    return MESSAGES, [parse_conversation(c, f"conversations[{i}]") for i, c in enumerate(chats)], "conversations"


def _check_count(n: int, key: str, max_items: int) -> None:
    if n > max_items:
        raise APIError(413, f"`{key}` has {n} items, over this server's limit of {max_items} per request; "
                       "split it into several requests", code="too_many_items", param=key)


def check_lengths(counts: Sequence[int], key: str, limit: int, single: bool = False,
                  request_limit: int | None = None) -> None:
    for i, n in enumerate(counts):
        if n > limit:
            at = key if single else f"{key}[{i}]"
            raise APIError(413, f"`{at}` (item {i}) is {n} tokens long, over this monitor's limit of {limit} "
                           "tokens; shorten or split it", code="too_many_tokens", param=at)
    if request_limit is not None and sum(counts) > request_limit:
        raise APIError(413, f"`{key}` totals {sum(counts)} tokens, over this server's limit of {request_limit} per "
                       "request; send fewer or shorter items per request", code="too_many_tokens", param=key)


# -- responses ------------------------------------------------------------------------------------
def moderation_result(verdict: Any, threshold: str) -> dict[str, Any]:
    flagged = bool(verdict.flagged[threshold])
    return {
        "flagged": flagged,
        "categories": {CATEGORY: flagged},
        "category_scores": {CATEGORY: float(verdict.probability)},
        "category_applied_input_types": {CATEGORY: ["text"]},
        "assay": {"score": float(verdict.score), "threshold": threshold, "n_tokens": int(verdict.n_tokens),
                  "flagged": {k: bool(v) for k, v in verdict.flagged.items()}},
    }


def score_result(verdict: Any) -> dict[str, Any]:
    out = {"score": float(verdict.score), "probability": float(verdict.probability),
           "flagged": {k: bool(v) for k, v in verdict.flagged.items()}, "n_tokens": int(verdict.n_tokens)}
    if verdict.token_scores is not None:
        out["token_scores"] = [float(s) for s in verdict.token_scores]
        out["tokens"] = verdict.tokens
    return out


# -- chat completions -----------------------------------------------------------------------------
CHAT_FIELDS = {"model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "stop", "seed",
               "stream", "stream_options", "n", "user"}
MAX_STOP = 4  # OpenAI's limit on stop strings


@dataclass(frozen=True)
class ChatRequest:
    messages: list[dict[str, str]]
    max_tokens: int
    temperature: float
    top_p: float
    stop: tuple[str, ...]
    seed: int | None
    stream: bool
    include_usage: bool


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value  # NaN != NaN


def _number(body: dict[str, Any], key: str, default: float, lo: float, hi: float, lo_open: bool = False) -> float:
    value = body.get(key)
    if value is None:  # OpenAI accepts null for "use the default"
        return default
    if not (_is_number(value) and (value > lo if lo_open else value >= lo) and value <= hi):
        bound = f"({lo}, {hi}]" if lo_open else f"[{lo}, {hi}]"
        raise APIError(400, f"`{key}` must be a number in {bound}, got {value!r}", code=f"invalid_{key}", param=key)
    return float(value)


def _max_tokens(body: dict[str, Any], cap: int) -> int:
    given = [k for k in ("max_tokens", "max_completion_tokens") if body.get(k) is not None]
    if len(given) == 2 and body["max_tokens"] != body["max_completion_tokens"]:
        raise APIError(400, "`max_tokens` and `max_completion_tokens` differ; send one of them",
                       code="invalid_max_tokens", param="max_tokens")
    if not given:
        return cap
    key, value = given[0], body[given[0]]
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= cap:
        raise APIError(400, f"`{key}` must be an integer from 1 to this server's cap of {cap}, got {value!r}",
                       code="invalid_max_tokens", param=key)
    return value


def _stop(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if (not isinstance(stops, list) or len(stops) > MAX_STOP
            or not all(isinstance(s, str) and s for s in stops)):
        raise APIError(400, f"`stop` must be a non-empty string or an array of at most {MAX_STOP} non-empty "
                       f"strings, got {value!r:.80}", code="invalid_stop", param="stop")
    return tuple(stops)


def parse_chat_request(body: dict[str, Any], max_new_tokens: int) -> ChatRequest:
    """A /v1/chat/completions body, checked field by field; an APIError names the first bad one."""
    unknown = sorted(set(body) - CHAT_FIELDS)
    if unknown:  # ignoring e.g. `tools` or `logprobs` would answer something other than what was asked
        raise APIError(400, f"unsupported fields {unknown}; this server reads {sorted(CHAT_FIELDS)}",
                       code="unsupported_parameter", param=unknown[0])
    for key in ("model", "user"):
        if body.get(key) is not None and not isinstance(body[key], str):
            raise APIError(400, f"`{key}` must be a string, got {_json_type(body[key])}", code=f"invalid_{key}",
                           param=key)
    if "messages" not in body:
        raise APIError(400, "missing `messages`: send an array of {\"role\", \"content\"} objects",
                       code="missing_messages", param="messages")
    if body.get("n") not in (None, 1):
        raise APIError(400, f"`n` must be 1 (one choice per request), got {body['n']!r}", code="unsupported_n",
                       param="n")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise APIError(400, f"`seed` must be an integer, got {seed!r}", code="invalid_seed", param="seed")
    stream = body.get("stream")
    if stream not in (None, True, False):
        raise APIError(400, f"`stream` must be a boolean, got {stream!r}", code="invalid_stream", param="stream")
    return ChatRequest(messages=parse_conversation(body["messages"], "messages"),
                       max_tokens=_max_tokens(body, max_new_tokens),
                       temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
                       top_p=_number(body, "top_p", 1.0, 0.0, 1.0, lo_open=True),
                       stop=_stop(body.get("stop")), seed=seed, stream=bool(stream),
                       include_usage=_include_usage(body.get("stream_options"), bool(stream)))


def _include_usage(options: Any, stream: bool) -> bool:
    if options is None:
        return False
    if not stream:
        raise APIError(400, "`stream_options` is only allowed with `stream: true`", code="invalid_stream_options",
                       param="stream_options")
    if not isinstance(options, dict) or set(options) - {"include_usage"} or \
            not isinstance(options.get("include_usage", False), bool):
        raise APIError(400, "`stream_options` must be {\"include_usage\": true|false}", code="invalid_stream_options",
                       param="stream_options")
    return bool(options.get("include_usage", False))


def check_context(n_prompt: int, max_tokens: int, context: int | None) -> None:
    if context is not None and n_prompt + max_tokens > context:
        raise APIError(400, f"the conversation ({n_prompt} tokens) plus max_tokens={max_tokens} is over the model's "
                       f"context of {context} tokens; ask for fewer tokens or send a shorter conversation",
                       code="context_length_exceeded", param="messages")


def assay_summary(prefill: Any, monitor_name: str) -> dict[str, Any]:
    """The monitor's verdict on the prompt, as every chat answer carries it (`assay` beside `choices`)."""
    v = prefill.verdict
    return {"monitor": monitor_name, "score": None if v is None else float(v.score),
            "probability": None if v is None else float(v.probability),
            "flagged": prefill.flagged, "threshold": prefill.threshold,
            "flagged_at": None if v is None else {k: bool(x) for k, x in v.flagged.items()},
            "n_tokens": int(prefill.prompt_tokens), "refused": bool(prefill.refused)}


def _usage(completion: Any) -> dict[str, int]:
    n_prompt, n_out = int(completion.prefill.prompt_tokens), int(completion.completion_tokens)
    return {"prompt_tokens": n_prompt, "completion_tokens": n_out, "total_tokens": n_prompt + n_out}


class GenerationRun:
    """One generation on the monitor's worker; its events cross to the event loop through a queue.
    `cancel` stops it before its next token (client gone, server stopping)."""

    def __init__(self, generator: ChatGenerator, request: ChatRequest, params: Any) -> None:
        self.generator, self.request, self.params = generator, request, params
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.cancel = threading.Event()
        self.started = time.perf_counter()

    def job(self) -> None:
        """Runs on the worker thread: every event, or the error that ended it, goes on the queue."""
        try:
            for event in self.generator.stream(self.request.messages, self.params, self.cancel.is_set):
                self._push(event)
        except ValueError as err:  # the generator's word on a bad input: the client's to fix
            self._push(APIError(400, f"invalid input: {err}", code="invalid_input"))
        except Exception as err:
            log.exception("generation failed")
            self._push(APIError(500, f"the model failed to generate ({type(err).__name__}); see the server log, "
                                "and retry", code="generation_failed", type="server_error"))

    def _push(self, item: Any) -> None:
        with suppress(RuntimeError):  # the loop closed under a generation: nobody is left to tell
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)

    async def next(self) -> Any:
        """The next event; an APIError that ended the run is raised."""
        item = await self.queue.get()
        if isinstance(item, APIError):
            raise item
        return item


SHUTTING_DOWN = "the monitor server is shutting down; retry against a running server"


def _chunk(base: dict[str, Any], delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
    body = base | {"choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]} | extra
    return f"data: {json.dumps(body)}\n\n"


# -- the app --------------------------------------------------------------------------------------
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
    _install_error_handlers(app, routes + ["/v1/chat/completions"] * (generator is not None))
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    hosts = allowed_hosts if allowed_hosts is not None else (None if api_key else LOOPBACK_HOSTS)
    if hosts is not None:
        app.add_middleware(HostMiddleware, hosts=hosts)
    guarded = [Depends(_auth(api_key))] if api_key else []

    # Counting on a thread of its own (with its own tokenizer) lets requests queue while a forward
    # pass runs, so they leave together in the next batch; a monitor without a counter of its own
    # (a test fake) counts on the scoring thread.
    counter = monitor.token_counter() if hasattr(monitor, "token_counter") else None

    async def count(kind: str, payloads: list[Any]) -> list[int]:
        source = counter or monitor
        fn = source.count_tokens if kind == TEXT else source.count_tokens_messages
        try:
            return await (batcher.count(fn, payloads) if counter is not None else batcher.call(fn, payloads))
        except ValueError as err:  # the monitor's word on a bad input (e.g. a role its chat format lacks)
            raise APIError(400, f"invalid input: {err}", code="invalid_input") from None

    async def verdicts(request: Request, kind: str, payloads: list[Any], key: str, single: bool = False) -> list[Any]:
        counts = await count(kind, payloads)
        check_lengths(counts, key, monitor.max_tokens, single, request_limit=max_request_tokens)
        futures = batcher.submit(kind, payloads, counts)
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
            raise APIError(400, f"`model` must be a string, got {_json_type(body['model'])}", code="invalid_model",
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
        _add_chat_route(app, ChatContext(monitor, generator, batcher, metrics, generations, count, max_body_bytes),
                        guarded)
    return app


@dataclass
class ChatContext:
    """What the chat route shares with the rest of the app."""

    monitor: ScoringMonitor
    generator: ChatGenerator
    batcher: Batcher
    metrics: Metrics
    generations: set[threading.Event]
    count: Callable[[str, list[Any]], Awaitable[list[int]]]
    max_body_bytes: int

    def finished(self, run: GenerationRun) -> None:
        run.cancel.set()  # a no-op once it is done; stops it if its client went away
        self.generations.discard(run.cancel)

    def observe(self, completion: Any) -> None:
        self.metrics.completions.labels(completion.finish_reason).inc()
        self.metrics.completion_tokens.inc(completion.completion_tokens)
        self.metrics.generation_seconds.observe(completion.prefill_seconds + completion.decode_seconds)


def _add_chat_route(app: FastAPI, ctx: ChatContext, guarded: list[Any]) -> None:
    # Imported here: the generator's module needs torch, which a scoring-only server never imports.
    from assay.monitor.generate import Completion, Delta, SamplingParams

    async def start(request: Request) -> tuple[GenerationRun, Any]:
        """Check the request, queue its generation, and wait for the prefill's event (so a failure
        there is still an ordinary error response, before any stream starts)."""
        body = await read_json_object(request, ctx.max_body_bytes)
        req = parse_chat_request(body, ctx.generator.max_new_tokens)
        [n] = await ctx.count(MESSAGES, [req.messages])
        check_lengths([n], "messages", ctx.monitor.max_tokens, single=True)
        check_context(n, req.max_tokens, ctx.generator.context_length)
        params = SamplingParams(max_tokens=req.max_tokens, temperature=req.temperature, top_p=req.top_p,
                                stop=req.stop, seed=req.seed)
        run = GenerationRun(ctx.generator, req, params)
        ctx.batcher.start_job(run.job)  # the job reports through run's queue and never raises
        ctx.generations.add(run.cancel)
        try:
            return run, await run.next()
        except BaseException:
            ctx.finished(run)
            raise

    async def collect(run: GenerationRun) -> Any:
        while not isinstance(event := await run.next(), Completion):
            pass
        if event.finish_reason == "cancelled":
            raise APIError(503, SHUTTING_DOWN, code="shutting_down", type="server_error")
        ctx.observe(event)
        return event

    async def events(run: GenerationRun, base: dict[str, Any], first: Any) -> AsyncIterator[str]:
        try:
            yield _chunk(base, {"role": "assistant", "content": ""}, assay=assay_summary(first, ctx.monitor.name))
            while True:
                try:
                    event = await run.next()
                    if isinstance(event, Completion) and event.finish_reason == "cancelled":
                        raise APIError(503, SHUTTING_DOWN, code="shutting_down", type="server_error")
                except APIError as err:  # the status line is sent: say it in the stream, as OpenAI does
                    yield "data: " + json.dumps({"error": {"message": err.message, "type": err.type,
                                                           "param": err.param, "code": err.code}}) + "\n\n"
                    return
                if isinstance(event, Delta):
                    yield _chunk(base, {"content": event.text})
                elif isinstance(event, Completion):
                    ctx.observe(event)
                    yield _chunk(base, {}, event.finish_reason)
                    if run.request.include_usage:
                        yield "data: " + json.dumps(base | {"choices": [], "usage": _usage(event)}) + "\n\n"
                    break
            yield "data: [DONE]\n\n"
        finally:  # also when the client disconnects mid-stream: the worker stops at its next token
            ctx.finished(run)

    @app.post("/v1/chat/completions", dependencies=guarded)
    async def chat_completions(request: Request) -> Response:
        run, first = await start(request)
        base = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": ctx.generator.model_name}
        if run.request.stream:
            return StreamingResponse(events(run, base | {"object": "chat.completion.chunk"}, first),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        try:
            done = await collect(run)
        finally:
            ctx.finished(run)
        message = {"role": "assistant", "content": done.text, "refusal": None}
        return JSONResponse(base | {
            "object": "chat.completion",
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": done.finish_reason}],
            "usage": _usage(done), "assay": assay_summary(first, ctx.monitor.name)})


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
