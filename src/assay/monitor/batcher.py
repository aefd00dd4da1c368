"""The micro-batcher: the queue of items to score and the worker threads that score them in batches,
the server's only concurrency logic (it imports no FastAPI, so it can be tested alone)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import torch

from assay.errors import ScoringError
from assay.monitor.api_errors import APIError
from assay.runtime import set_torch_threads, threads_per_worker

if TYPE_CHECKING:
    from assay.monitor.protocols import ScoringMonitor
    from assay.monitor.telemetry import Metrics

log = logging.getLogger(__name__)

MAX_QUEUE_TOKENS = 16 * 8192  # tokens waiting to be scored before new work gets a 429 (16 default batches)
RETRY_AFTER_S = 1
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
        fn = partial(monitor.score_formatted, conversations=kind == MESSAGES)
        start = time.perf_counter()
        try:
            verdicts = await asyncio.get_running_loop().run_in_executor(executor, fn, [j.payload for j in jobs])
            if len(verdicts) != len(jobs):
                raise RuntimeError(f"score_formatted returned {len(verdicts)} verdicts for {len(jobs)} inputs")
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
