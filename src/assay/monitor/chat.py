"""OpenAI-shaped `/v1/chat/completions`: a generation on the monitor's worker, answered whole or streamed,
every answer carrying the monitor's verdict on its prompt."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from assay.monitor.api_errors import APIError
from assay.monitor.batcher import MESSAGES, Batcher
from assay.monitor.parsing import ChatRequest, check_lengths, length_limit, parse_chat_request, read_json_object
from assay.monitor.protocols import ChatGenerator, ScoringMonitor
from assay.monitor.telemetry import Metrics

log = logging.getLogger(__name__)


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


def add_chat_route(app: FastAPI, ctx: ChatContext, guarded: list[Any]) -> None:
    # Imported here: the generator's module needs torch, which a scoring-only server never imports.
    from assay.monitor.generate import Completion, Delta, SamplingParams

    async def start(request: Request) -> tuple[GenerationRun, Any]:
        """Check the request, queue its generation, and wait for the prefill's event (so a failure
        there is still an ordinary error response, before any stream starts)."""
        body = await read_json_object(request, ctx.max_body_bytes)
        req = parse_chat_request(body, ctx.generator.max_new_tokens)
        [n] = await ctx.count(MESSAGES, [req.messages])
        check_lengths([n], "messages", length_limit(ctx.monitor, MESSAGES), single=True)
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
