"""The app's Prometheus metrics, and the middleware that counts and times every HTTP request."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})


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
