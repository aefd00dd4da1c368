"""Load test of the monitor server on loopback: throughput against offline batched scoring, latency,
lost requests, score agreement, malformed traffic and resident memory, in one process run.

One `Monitor` (one model) serves both sides: first its offline batched path (`score_texts` on all
the prompts at once, the reference), then the real server (`create_app` under uvicorn in a
background thread, on a free loopback port, with its default scoring workers unless --workers) with one
prompt per request and N concurrent closed-loop clients (keep-alive HTTP/1.1 spoken by hand, in this
process: see `Connection`). Per concurrency level it records prompts/s, the ratio to the offline
prompts/s (target >= 0.8 at concurrency 32, judged on the median of --top-repeats runs), p50/p99 latency, errors, lost requests (sent minus
answered), the largest |served score - offline score| (bf16 batches of another composition round
differently, so it is recorded, not asserted), and the server's own metrics for the level (batch-size
histogram, time in forward passes). Then: the same at the top concurrency with a fraction of malformed
requests interleaved (each kind must get its 4xx, each good one its score), the HTTP path's ceiling
with the forward pass taken out, and the process RSS after 1,000 and 10,000 short requests.

Each phase's offline reference is measured again just before it (`--reference adjacent`), since other
tenants' load on a shared box drifts over minutes; each phase also records this process's CPU seconds
per prompt, and the CPU ratio (offline CPU per prompt / served CPU per prompt) is the comparison with
that load mostly taken out. Client, server and model share this process and its cores, so the client's
CPU is charged to the server (the no-forward ceiling phase shows how much that is).

    .venv/bin/python benchmarks/monitor_load.py                                  # full run
    .venv/bin/python benchmarks/monitor_load.py --requests 32 --rss-requests 100,300   # smoke, < 1 min idle

Writes benchmarks/results/monitor_load.json (via a temp file, renamed) and prints a summary.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import threading
import time
from collections import Counter
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import httpx
import numpy as np
import psutil
import torch
import uvicorn
from checks import check_args  # benchmarks/checks.py
from prometheus_client.parser import text_string_to_metric_families

from assay.activations.batching import length_order, token_budget_batches
from assay.data import load_or_build
from assay.errors import InputError
from assay.monitor.scorer import SERVE_MAX_TOKENS, Monitor, Verdict
from assay.monitor.server import MAX_REQUEST_TOKENS, create_app
from assay.provenance import provenance
from assay.runtime import matmul_speeds, tune_malloc

ROUTE = "/v1/moderations"
LONG_PROMPTS = 4  # prompts in each request of the short-behind-long phase's long client
JSON_HEADERS = {"content-type": "application/json"}


# -- requests -------------------------------------------------------------------------------------
@dataclass
class Item:
    body: bytes
    prompt: int | None = None  # index into the prompts (a good request), else None
    kind: str = "good"  # or the malformed kind
    expect: tuple[int, str] | None = None  # (status, error code) a malformed one must get


def good_body(text: str) -> bytes:
    return json.dumps({"input": text}).encode()


def malformed_kinds(long_text: str) -> dict[str, tuple[bytes, int, str]]:
    """Each malformed kind: (body, expected status, expected OpenAI error code)."""
    return {
        "malformed_json": (b'{"input": "an unterminated string', 400, "invalid_json"),
        "number_input": (b'{"input": 42}', 400, "invalid_input"),
        "empty_string": (b'{"input": ""}', 400, "empty_input"),
        "list_with_non_string": (b'{"input": ["a fine prompt", 7]}', 400, "invalid_input"),
        "over_long": (good_body(long_text), 413, "too_many_tokens"),
        "non_utf8": (b'{"input": "caf\xe9 \xff\xfe bytes"}', 400, "invalid_encoding"),
    }


def interleave(n: int, fraction: float, kinds: dict[str, tuple[bytes, int, str]]) -> list[Item]:
    """n requests, round(n * fraction) of them malformed at evenly spaced places, rotating through the
    kinds; the good ones are prompts 0, 1, 2, ... in order."""
    n_bad = min(n, round(n * fraction))
    bad_at = {int((k + 0.5) * n / n_bad): k for k in range(n_bad)} if n_bad else {}
    names = list(kinds)
    items, j = [], 0
    for i in range(n):
        if i in bad_at:
            name = names[bad_at[i] % len(names)]
            body, status, code = kinds[name]
            items.append(Item(body, kind=name, expect=(status, code)))
        else:
            items.append(Item(b"", prompt=j))
            j += 1
    return items


# -- the client -----------------------------------------------------------------------------------
@dataclass
class Reply:
    status: int | None  # None: no HTTP answer (a client-side exception)
    latency: float
    score: float | None = None
    flagged: dict[str, bool] | None = None
    code: str | None = None
    error: str | None = None  # exception type, when no answer


class Connection:
    """One keep-alive HTTP/1.1 connection, spoken by hand: a load generator must cost the server's cores
    as little as it can: on a 2-core box every client cycle is taken from the server it measures (the
    no-forward ceiling phase cost 9.7 CPU ms per request, client and server together, with httpx clients;
    1.1-1.8 ms with this one, against ~50 CPU ms per prompt for the forward pass)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head = (f"POST {path} HTTP/1.1\r\nhost: {self.host}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\n\r\n").encode()
        self.writer.write(head + body)
        await self.writer.drain()
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("server closed the connection")
        status = int(status_line.split()[1])
        length, close = None, False
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "connection" and value.strip().lower() == "close":
                close = True
            elif name == "transfer-encoding":
                raise ValueError("chunked response: this client reads content-length bodies only")
        payload = await self.reader.readexactly(length) if length is not None else await self.reader.read()
        if close or length is None:
            await self.close()
        return status, payload

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with suppress(OSError):
                await self.writer.wait_closed()
        self.reader = self.writer = None


async def drive(base_url: str, bodies: Callable[[int], bytes], n: int, concurrency: int, deadline: float,
                timeout: float, on_reply: Callable[[int, Reply], None]) -> tuple[float, int, bool]:
    """Send n requests from `concurrency` closed-loop clients; (wall seconds, sent, stopped by the cap)."""
    host, port = base_url.removeprefix("http://").rsplit(":", 1)
    sent = 0
    stopped = False

    async def client_loop() -> None:
        nonlocal sent, stopped
        conn = Connection(host, int(port))
        try:
            while sent < n:
                if time.monotonic() > deadline:
                    stopped = True
                    return
                i = sent
                sent += 1
                body = bodies(i)
                t0 = time.perf_counter()
                try:
                    status, payload = await asyncio.wait_for(conn.post(ROUTE, body), timeout)
                    latency = time.perf_counter() - t0
                except (OSError, ValueError, IndexError, asyncio.IncompleteReadError, TimeoutError) as err:
                    await conn.close()
                    on_reply(i, Reply(None, time.perf_counter() - t0, error=type(err).__name__))
                    continue
                reply = Reply(status, latency)
                try:
                    data = json.loads(payload)
                    if status == 200:
                        reply.score = float(data["results"][0]["assay"]["score"])
                        reply.flagged = data["results"][0]["assay"]["flagged"]
                    else:
                        reply.code = data["error"]["code"]
                except (ValueError, KeyError, IndexError, TypeError):
                    reply.code = "unparseable_response"
                on_reply(i, reply)
        finally:
            await conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(client_loop() for _ in range(concurrency)))
    return time.perf_counter() - t0, sent, stopped


def run_load(base_url: str, bodies: Callable[[int], bytes], n: int, concurrency: int, deadline: float,
             timeout: float, on_reply: Callable[[int, Reply], None]) -> tuple[float, int, bool]:
    return asyncio.run(drive(base_url, bodies, n, concurrency, deadline, timeout, on_reply))


def latency_ms(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    a = np.asarray(values) * 1000
    return {"p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)),
            "p99": float(np.percentile(a, 99)), "max": float(a.max()), "mean": float(a.mean())}


# -- the server -----------------------------------------------------------------------------------
class ServerThread:
    """uvicorn serving `app` on a free loopback port, in a background thread of this process."""

    def __init__(self, app: Any) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))  # bound here and handed over, so nothing else takes the port
        self.port = self.sock.getsockname()[1]
        # Access log off: one stderr line per request would be thousands of lines (`assay monitor serve`
        # logs at info); everything else is uvicorn's default (h11 or httptools, whichever is installed).
        self.config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", access_log=False)
        self.server = uvicorn.Server(self.config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True,
                                       name="uvicorn")
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(60)
        self.sock.close()

    def options(self) -> dict[str, Any]:
        cls = getattr(self.config, "http_protocol_class", None)
        return {"uvicorn_version": uvicorn.__version__, "http": getattr(cls, "__name__", str(self.config.http)),
                "loop": self.config.loop, "access_log": self.config.access_log, "in_process_thread": True}


def scrape(url: str) -> dict[tuple, float]:
    text = httpx.get(url + "/metrics", timeout=30, trust_env=False).text
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def metrics_delta(before: dict, after: dict, wall: float, workers: int = 1) -> dict[str, Any]:
    """The server's own view of one phase: batches, batch-size histogram, time in forward passes."""
    d = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}

    def get(name: str, **labels: str) -> float:
        return d.get((name, tuple(sorted(labels.items()))), 0.0)

    batches = get("assay_monitor_batch_size_count", kind="text")
    items = get("assay_monitor_batch_size_sum", kind="text")
    forward_s = get("assay_monitor_batch_seconds_sum", kind="text")
    tokens = get("assay_monitor_batch_tokens_sum", kind="text")
    cumulative, hist, prev = [], {}, 0.0
    for (name, labels), v in sorted(((k, v) for k, v in d.items() if k[0] == "assay_monitor_batch_size_bucket"),
                                    key=lambda kv: float(dict(kv[0][1])["le"])):
        cumulative.append((dict(labels)["le"], v))
    for le, v in cumulative:
        if v - prev:
            hist[f"<={le.removesuffix('.0')}"] = int(v - prev)
        prev = v
    statuses = Counter()
    for (name, labels), v in d.items():
        if name == "assay_monitor_requests_total" and dict(labels).get("route") == ROUTE and v:
            statuses[dict(labels)["status"]] += int(v)
    return {
        "batches": int(batches), "items": int(items), "mean_batch_size": items / batches if batches else None,
        "mean_batch_tokens": tokens / batches if batches else None,
        "batch_size_histogram": hist,
        # Summed over the scoring workers: busy 1.0 means every worker scored the whole phase.
        "forward_seconds": forward_s, "worker_busy_fraction": forward_s / (wall * workers) if wall else None,
        "forward_tokens_per_s_per_worker": tokens / forward_s if forward_s else None,
        "responses_by_status": dict(sorted(statuses.items())),
    }


class NoForward:
    """The real monitor's tokenizer and metadata, but verdicts without a forward pass: serves the HTTP
    path's ceiling (parsing, token counting, batching, JSON) with the model taken out."""

    def __init__(self, monitor: Monitor) -> None:
        self.m = monitor
        self.name, self.thresholds = monitor.name, monitor.thresholds
        self.default_threshold, self.max_tokens = monitor.default_threshold, monitor.max_tokens
        self.token_limit = monitor.token_limit

    def format_texts(self, texts: list[str]) -> list[Any]:
        return self.m.format_texts(texts)

    def format_conversations(self, conversations: list) -> list[Any]:
        return self.m.format_conversations(conversations)

    def score_formatted(self, prompts: list[Any], *, conversations: bool = False) -> list[Verdict]:
        return [Verdict(0.0, 0.5, {k: False for k in self.thresholds}, len(p.input_ids)) for p in prompts]

    def describe(self) -> dict:
        return self.m.describe()


# -- host -----------------------------------------------------------------------------------------
def cpu_info() -> dict[str, Any]:
    model, flags = None, set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model is None:
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {"model": model, "logical_cores": os.cpu_count(), "physical_cores": psutil.cpu_count(logical=False),
            "avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags, "avx2": "avx2" in flags}


def rss() -> int:
    return psutil.Process().memory_info().rss


def peak_rss() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def cpu_seconds() -> float:
    """User + system CPU of this whole process (model threads, server, client)."""
    t = psutil.Process().cpu_times()
    return t.user + t.system


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def token_stats(lengths: list[int]) -> dict[str, Any]:
    a = np.asarray(lengths)
    return {"n": len(a), "total": int(a.sum()), "min": int(a.min()), "median": float(np.median(a)),
            "mean": float(a.mean()), "p90": float(np.percentile(a, 90)), "max": int(a.max())}


# -- phases ---------------------------------------------------------------------------------------
def offline(monitor: Monitor, texts: list[str], lengths: list[int]) -> tuple[dict[str, Any], list[Verdict]]:
    """The reference: one `score_texts` call on all the prompts. Run only while no request is in flight
    (the monitor is not thread-safe; sequential calls from two threads are fine)."""
    load0, c0, t0 = loadavg(), cpu_seconds(), time.perf_counter()
    verdicts = monitor.score_texts(texts)
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    return {"seconds": wall, "prompts_per_s": len(texts) / wall, "tokens_per_s": sum(lengths) / wall,
            "cpu_seconds": cpu, "cpu_ms_per_prompt": 1000 * cpu / len(texts),
            "cpu_share": cpu / (wall * (os.cpu_count() or 1)), "loadavg_before": load0,
            "loadavg_after": loadavg()}, verdicts


def level(url: str, items: list[Item], bodies: list[bytes], lengths: list[int], ref: list[Verdict] | None,
          concurrency: int, deadline: float, args: argparse.Namespace,
          reference: dict[str, Any] | None = None, first_reference: dict[str, Any] | None = None,
          workers: int = 1) -> dict[str, Any]:
    """One load phase: `items` at `concurrency`; good ones checked against the offline verdicts `ref`.
    `reference` is the offline measurement the ratios are taken to (the one just before, by default)."""
    replies: dict[int, Reply] = {}
    before = scrape(url)
    load0, c0 = loadavg(), cpu_seconds()
    wall, sent, stopped = run_load(url, lambda i: items[i].body or bodies[items[i].prompt], len(items),
                                   concurrency, deadline, args.timeout, replies.__setitem__)
    cpu = cpu_seconds() - c0
    server = metrics_delta(before, scrape(url), wall, workers)
    good = [i for i in range(sent) if items[i].prompt is not None]
    bad = [i for i in range(sent) if items[i].prompt is None]
    answered = [i for i in range(sent) if i in replies and replies[i].status is not None]
    ok = [i for i in good if i in replies and replies[i].status == 200]
    check = score_check([(replies[i], ref[items[i].prompt]) for i in ok], args.tolerance) if ref else None
    ok_tokens = sum(lengths[items[i].prompt] for i in ok)
    pps = len(ok) / wall if wall else 0.0
    cpu_ms = 1000 * cpu / len(ok) if ok else None
    out: dict[str, Any] = {
        "concurrency": concurrency, "sent": sent, "answered": len(answered), "lost": sent - len(answered),
        "stopped_by_time_cap": stopped, "good_sent": len(good), "good_ok": len(ok),
        "good_errors": len(good) - len(ok),
        "good_error_statuses": dict(Counter(str(replies[i].status) for i in good
                                            if i in replies and replies[i].status not in (200, None))),
        "client_exceptions": dict(Counter(replies[i].error for i in range(sent)
                                          if i in replies and replies[i].status is None)),
        "wall_seconds": wall, "prompts_per_s": pps, "tokens_per_s": ok_tokens / wall if wall else 0.0,
        "ratio_to_offline": pps / reference["prompts_per_s"] if reference else None,
        "ratio_to_first_offline": pps / first_reference["prompts_per_s"] if first_reference else None,
        "cpu_seconds": cpu, "cpu_ms_per_prompt": cpu_ms, "cpu_share": cpu / (wall * (os.cpu_count() or 1)),
        # Offline CPU per prompt over ours: the ratio with other tenants' load mostly taken out.
        "cpu_ratio_to_offline": reference["cpu_ms_per_prompt"] / cpu_ms if reference and cpu_ms else None,
        "offline_reference": reference,
        "latency_ms": latency_ms([replies[i].latency for i in ok]),
        "score_check": check,
        "server": server, "loadavg_before": load0, "loadavg_after": loadavg(),
    }
    if bad:
        kinds: dict[str, Counter] = {}
        for i in bad:
            it, r = items[i], replies.get(i)
            c = kinds.setdefault(it.kind, Counter())
            c["sent"] += 1
            if r is None or r.status is None:
                c["lost"] += 1
            elif (r.status, r.code) == it.expect:
                c["expected"] += 1
            elif r.status is not None and 400 <= r.status < 500:
                c["other_4xx"] += 1
            else:
                c["not_4xx"] += 1
        out["malformed"] = {k: {"expect": list(items[next(i for i in bad if items[i].kind == k)].expect), **v}
                            for k, v in kinds.items()}
        out["malformed_all_expected"] = all(v["expected"] == v["sent"] for v in kinds.values())
        out["malformed_latency_ms"] = latency_ms([replies[i].latency for i in bad
                                                  if i in replies and replies[i].status is not None])
    return out


def score_check(pairs: list[tuple[Reply, Verdict]], tolerance: float) -> dict[str, Any]:
    """Served against offline: scores (logits, often tens in size, so also relative) and flags."""
    if not pairs:
        return {"checked": 0}
    d = np.array([abs(r.score - v.score) for r, v in pairs])
    rel = d / np.maximum(1.0, np.abs([v.score for _, v in pairs]))
    flips = Counter(k for r, v in pairs for k, f in v.flagged.items() if (r.flagged or {}).get(k) != f)
    worst = [{"n_tokens": pairs[j][1].n_tokens, "offline": pairs[j][1].score, "served": pairs[j][0].score}
             for j in np.argsort(-d)[:3]]
    return {"checked": len(pairs), "max_abs_diff": float(d.max()), "mean_abs_diff": float(d.mean()),
            "max_rel_diff": float(rel.max()), "over_tolerance": int((d > tolerance).sum()), "tolerance": tolerance,
            "flag_flips": {k: flips.get(k, 0) for k in pairs[0][1].flagged}, "worst": worst}


def rss_phase(url: str, bodies: list[bytes], checkpoints: list[int], concurrency: int, deadline: float,
              args: argparse.Namespace, workers: int = 1) -> dict[str, Any]:
    """Short requests cycled up to the last checkpoint; RSS when each checkpoint's reply arrives."""
    n = checkpoints[-1]
    lat = np.zeros(n)
    statuses: Counter = Counter()
    marks: dict[int, dict] = {}
    trend_every = max(1, n // 20)
    trend: list[list[float]] = []
    done = 0
    t0 = time.perf_counter()
    start_rss = rss()

    def on_reply(i: int, r: Reply) -> None:
        nonlocal done
        done += 1
        lat[i] = r.latency
        statuses[str(r.status) if r.status is not None else f"exception:{r.error}"] += 1
        if done in checkpoints:
            marks[done] = {"rss_bytes": rss(), "elapsed_s": time.perf_counter() - t0}
        if done % trend_every == 0:
            trend.append([done, round(time.perf_counter() - t0, 2), rss()])

    before = scrape(url)
    wall, sent, stopped = run_load(url, lambda i: bodies[i % len(bodies)], n, concurrency, deadline, args.timeout,
                                   on_reply)
    first, last = checkpoints[0], checkpoints[-1]
    ratio = (marks[last]["rss_bytes"] / marks[first]["rss_bytes"]) if first in marks and last in marks else None
    return {
        "concurrency": concurrency, "sent": sent,
        "answered": sum(v for k, v in statuses.items() if not k.startswith("exception")),
        "stopped_by_time_cap": stopped, "statuses": dict(statuses), "wall_seconds": wall,
        "prompts_per_s": done / wall if wall else None, "latency_ms": latency_ms(list(lat[:done])),
        "rss_at_start_bytes": start_rss,
        "rss_after": {str(k): v for k, v in sorted(marks.items())},
        "rss_ratio_last_to_first": ratio, "rss_within_10pct": None if ratio is None else ratio <= 1.10,
        "rss_trend": trend, "peak_rss_bytes": peak_rss(), "server": metrics_delta(before, scrape(url), wall, workers),
    }


# -- main -----------------------------------------------------------------------------------------
def short_behind_long(url: str, long_body: bytes, short_body: bytes, n_short: int, gap_s: float, deadline: float,
                      timeout: float) -> dict[str, Any]:
    """Short requests while one client keeps the server busy with long ones: a closed-loop client
    sends one long request after another (`long_body`, several prompts near the per-prompt limit),
    and another sends `n_short` one-prompt requests `gap_s` apart. A short one can wait for batches
    already running, not for a whole long request queued before it (shortest due first)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)

    async def go() -> dict[str, Any]:
        stop = asyncio.Event()
        idle: list[float] = []
        short: list[float] = []
        long: list[float] = []
        statuses: Counter = Counter()

        async def timed(conn: Connection, body: bytes, into: list[float], kind: str) -> None:
            t0 = time.perf_counter()
            try:
                status, _ = await asyncio.wait_for(conn.post(ROUTE, body), timeout)
            except (OSError, ValueError, asyncio.IncompleteReadError, TimeoutError) as err:
                await conn.close()
                statuses[f"{kind} {type(err).__name__}"] += 1
                return
            into.append(time.perf_counter() - t0)
            statuses[f"{kind} {status}"] += 1

        async def long_loop() -> None:
            conn = Connection(host, int(port))
            while not stop.is_set() and time.monotonic() < deadline:
                await timed(conn, long_body, long, "long")
            await conn.close()

        async def short_loop() -> None:
            conn = Connection(host, int(port))
            for _ in range(n_short):
                if time.monotonic() > deadline:
                    break
                await timed(conn, short_body, short, "short")
                await asyncio.sleep(gap_s)
            stop.set()
            await conn.close()

        conn = Connection(host, int(port))
        for _ in range(10):  # the same short request on an idle server
            await timed(conn, short_body, idle, "idle")
        await conn.close()
        loop_task = asyncio.create_task(long_loop())
        await asyncio.sleep(1.0)  # the long client first, so every short request meets it
        await short_loop()
        await loop_task
        return {"short_idle_ms": latency_ms(idle), "short_behind_long_ms": latency_ms(short),
                "long_ms": latency_ms(long), "statuses": dict(statuses)}

    return asyncio.run(go())


def summary(results: dict[str, Any], top: int) -> dict[str, Any]:
    levels = [r for r in results["levels"] if "prompts_per_s" in r]
    at_top = next((r for r in levels if r["concurrency"] == top), None)
    mal, rss_row = results.get("malformed", {}), results.get("rss", {})
    repeats = results.get("top_repeats", [])
    top_runs = [round(r["ratio_to_offline"], 3) for r in ([at_top] if at_top else []) + repeats]
    phases = levels + repeats + ([mal] if "sent" in mal else [])
    return {
        "offline_prompts_per_s": results["offline"]["prompts_per_s"],
        "prompts_per_s_by_concurrency": {str(r["concurrency"]): round(r["prompts_per_s"], 3) for r in levels},
        "ratio_by_concurrency": {str(r["concurrency"]): round(r["ratio_to_offline"], 3) for r in levels},
        "cpu_ratio_by_concurrency": {str(r["concurrency"]): round(r["cpu_ratio_to_offline"] or 0, 3) for r in levels},
        "ratio_at_top": at_top and at_top["ratio_to_offline"],
        "ratio_at_top_runs": top_runs,
        "ratio_at_top_median": float(np.median(top_runs)) if top_runs else None,
        "meets_ratio_target": None if not top_runs else float(np.median(top_runs)) >= 0.8,
        "p99_ms_by_concurrency": {str(r["concurrency"]): round((r["latency_ms"] or {}).get("p99", 0)) for r in levels},
        "lost": sum(r["lost"] for r in phases) + (rss_row.get("sent", 0) - rss_row.get("answered", 0)),
        "good_errors": sum(r["good_errors"] for r in phases),
        "max_abs_score_diff": max((r["score_check"].get("max_abs_diff") or 0 for r in phases), default=None),
        "max_rel_score_diff": max((r["score_check"].get("max_rel_diff") or 0 for r in phases), default=None),
        "flag_flips": sum(sum(r["score_check"].get("flag_flips", {}).values()) for r in phases),
        "malformed_all_expected": mal.get("malformed_all_expected"),
        "rss_ratio": rss_row.get("rss_ratio_last_to_first"), "rss_within_10pct": rss_row.get("rss_within_10pct"),
        "ratio_at_top_one_worker": (results.get("one_worker_at_top") or {}).get("ratio_to_offline"),
        "short_behind_long_p99_ms": ((results.get("short_behind_long") or {}).get("short_behind_long_ms") or {}).get("p99"),
        "short_idle_p99_ms": ((results.get("short_behind_long") or {}).get("short_idle_ms") or {}).get("p99"),
        "stopped_by_time_cap": any(r.get("stopped_by_time_cap") or r.get("skipped") for r in
                                   results["levels"] + [mal, rss_row]),
    }


def num(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default="runs/monitor-full")
    ap.add_argument("--requests", type=int, default=400, help="requests (one prompt each) per concurrency level")
    ap.add_argument("--concurrency", type=ints, default=[1, 8, 32], help="comma-separated client counts")
    ap.add_argument("--rss-requests", type=ints, default=[1000, 10000],
                    help="RSS checkpoints (comma-separated request counts); the last is how many are sent")
    ap.add_argument("--rss-concurrency", type=int, default=32)
    ap.add_argument("--rss-prompts", type=int, default=256, help="distinct short prompts cycled in the RSS phase")
    ap.add_argument("--malformed-fraction", type=float, default=0.1)
    ap.add_argument("--top-repeats", type=int, default=3, help="runs of the top concurrency level (each beside its "
                    "own offline reference); the target is judged on their median")
    ap.add_argument("--max-seconds", type=float, default=3600, help="overall cap: phases stop sending past it")
    ap.add_argument("--data", default="full")
    ap.add_argument("--split", default="ood", help="benchmark split the prompts are sampled from")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", default=None, help="default: the bundle's")
    ap.add_argument("--max-tokens", type=int, default=SERVE_MAX_TOKENS, help="the server's per-prompt limit")
    ap.add_argument("--max-batch-tokens", type=int, default=8192)
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--max-items", type=int, default=64)
    ap.add_argument("--workers", type=int, default=None, help="scoring threads (default: the server's own default)")
    ap.add_argument("--timeout", type=float, default=600, help="client timeout per request, seconds")
    ap.add_argument("--reference", choices=["adjacent", "once"], default="adjacent",
                    help="offline reference measured again just before each phase (adjacent), or only at the start")
    ap.add_argument("--tolerance", type=float, default=1e-3, help="|served - offline| score counted as a mismatch")
    ap.add_argument("--short-requests", type=int, default=30, help="short requests sent behind a long client")
    ap.add_argument("--out", default="benchmarks/results/monitor_load.json")
    args = ap.parse_args()
    check_args(ap, bundle=args.bundle, dtypes=args.dtype, auto_ok=False,
               at_least={"--requests": (args.requests, 1), "--concurrency": (min(args.concurrency), 1),
                         "--rss-requests": (min(args.rss_requests), 1), "--rss-concurrency": (args.rss_concurrency, 1),
                         "--rss-prompts": (args.rss_prompts, 1), "--top-repeats": (args.top_repeats, 1),
                         "--max-tokens": (args.max_tokens, 2), "--max-batch-tokens": (args.max_batch_tokens, 2),
                         "--max-wait-ms": (args.max_wait_ms, 0), "--max-items": (args.max_items, 1),
                         "--workers": (1 if args.workers is None else args.workers, 1), "--tolerance": (args.tolerance, 0),
                         "--short-requests": (args.short_requests, 1)},
               positive={"--max-seconds": args.max_seconds, "--timeout": args.timeout},
               fraction={"--malformed-fraction": args.malformed_fraction})
    started = time.monotonic()
    deadline = started + args.max_seconds
    malloc_tuned = tune_malloc()  # as `assay monitor serve` does at start-up

    # Prompts, the monitor, and everything that touches the tokenizer, before the server starts:
    # the monitor is not thread-safe, and once serving only the server's worker may call it.
    try:
        ds = load_or_build(args.data)
        pool = ds.split(args.split).texts if args.split else ds.texts
    except InputError as err:  # a data name or split that is not there: one line, as assay's CLI says it
        ap.error(f"--data {args.data} --split {args.split}: {err}")
    rng = random.Random(args.seed)
    texts = [pool[i % len(pool)] for i in rng.sample(range(len(pool)), min(args.requests, len(pool)))]
    texts = (texts * (args.requests // max(1, len(texts)) + 1))[: args.requests]
    t0 = time.perf_counter()
    monitor = Monitor.load(args.bundle, dtype=args.dtype, max_tokens=args.max_tokens)
    load_s = time.perf_counter() - t0
    lengths = monitor.count_tokens(texts)
    bodies = [good_body(t) for t in texts]
    short_pool = sorted({t for t in ds.texts if t.strip()}, key=lambda t: (len(t), t))[: args.rss_prompts]
    short_lengths = monitor.count_tokens(short_pool)
    short_bodies = [good_body(t) for t in short_pool]
    long_text, filler = "", " ".join(pool[:50])
    while not long_text or monitor.count_tokens([long_text])[0] <= monitor.max_tokens:
        long_text += filler + " "
    kinds = malformed_kinds(long_text)
    # The long client's request: LONG_PROMPTS prompts that together come just under the per-request cap.
    near_limit = ""
    while not near_limit or monitor.count_tokens([near_limit])[0] < min(monitor.max_tokens, MAX_REQUEST_TOKENS
                                                                         // LONG_PROMPTS) - 64:
        near_limit += pool[len(near_limit) % len(pool)] + " "
    long_body = json.dumps({"input": [near_limit] * LONG_PROMPTS}).encode()
    long_request_tokens = LONG_PROMPTS * monitor.count_tokens([near_limit])[0]
    long_tokens = monitor.count_tokens([long_text])[0]
    offline_batches = token_budget_batches(length_order(lengths), lengths, monitor.token_budget)
    padded = sum(max(lengths[i] for i in b) * len(b) for b in offline_batches)

    speeds = matmul_speeds("cpu")  # bf16: a 32-row matmul only where bf16 is hopeless (AVX2)
    fp32, bf16, bf16_probe = speeds["float32"], speeds["bfloat16"], speeds["bfloat16_probe"]
    results: dict[str, Any] = {
        "provenance": provenance(),
        "bundle": {"path": args.bundle, "name": monitor.name, "layer": monitor.bundle.layer,
                   "reads": monitor.bundle.inputs.get("reads"), "aggregation": monitor.bundle.inputs.get("aggregation"),
                   "calibrated_dtype": monitor.bundle.spec["dtype"]},
        "dtype": str(monitor.lm.dtype).removeprefix("torch."),
        "matmul_gflops": {"float32": round(fp32, 1), "bfloat16": round(bf16, 1), "bfloat16_probe": bf16_probe,
                          "auto_would_pick": "bfloat16" if bf16 >= 1.5 * fp32 else "float32"},
        "torch_threads": torch.get_num_threads(), "torch_interop_threads": torch.get_num_interop_threads(),
        "cpu": cpu_info(), "malloc_tuned": malloc_tuned, "loadavg_at_start": loadavg(),
        "model_load_seconds": load_s,
        "prompts": {"data": args.data, "split": args.split, "seed": args.seed, "count": len(texts),
                    "tokens": token_stats(lengths), "offline_token_budget": monitor.token_budget,
                    "offline_batches": len(offline_batches), "offline_padding_fraction": 1 - sum(lengths) / padded},
        "rss_prompts": {"count": len(short_pool), "tokens": token_stats(short_lengths)},
        "server_options": {"max_batch_tokens": args.max_batch_tokens, "max_wait_ms": args.max_wait_ms,
                           "max_items": args.max_items, "max_tokens": monitor.max_tokens,
                           "threshold": monitor.default_threshold},
        "malformed_kinds": {k: {"expect_status": s, "expect_code": c, "body_bytes": len(b)}
                            for k, (b, s, c) in kinds.items()} | {"over_long_tokens": long_tokens},
        "args": {k: v for k, v in vars(args).items()},
        "targets": {"ratio_at_top_concurrency": 0.8, "rss_growth": 0.10},
    }

    # 1. The reference: offline batched scoring of the same prompts (after a warm-up).
    monitor.score_texts(sorted(texts, key=len)[-4:] + texts[:4])  # warm-up, long and short shapes
    first, ref = offline(monitor, texts, lengths)
    results["offline"] = first
    print(f"offline: {len(texts)} prompts, {sum(lengths)} tokens in {first['seconds']:.1f} s = "
          f"{first['prompts_per_s']:.2f} prompts/s, {first['tokens_per_s']:.0f} tokens/s "
          f"(padding {results['prompts']['offline_padding_fraction']:.0%})", flush=True)

    # 2. The HTTP path's ceiling: the same server code and tokenizer, no forward pass.
    top = max(args.concurrency)
    ceiling_app = create_app(NoForward(monitor), max_items=args.max_items, max_batch_tokens=args.max_batch_tokens,
                             max_wait_ms=args.max_wait_ms)
    n_ceiling = max(200, min(2000, 4 * args.requests))
    ceiling_items = [Item(b"", prompt=i % len(texts)) for i in range(n_ceiling)]
    with ServerThread(ceiling_app) as srv:
        c = level(srv.url, ceiling_items, bodies, lengths, None, top, deadline, args)
    results["http_ceiling_no_forward"] = {k: c[k] for k in ("concurrency", "sent", "answered", "good_errors",
                                                            "wall_seconds", "prompts_per_s", "cpu_ms_per_prompt",
                                                            "latency_ms")}
    results["http_ceiling_no_forward"]["server"] = {k: c["server"][k] for k in ("batches", "mean_batch_size",
                                                                                "batch_size_histogram")}
    print(f"HTTP ceiling (no forward) at concurrency {top}: {c['prompts_per_s']:.0f} requests/s, "
          f"{num(c['cpu_ms_per_prompt'], '.1f')} CPU ms each", flush=True)

    def reference() -> dict[str, Any]:
        """The offline measurement a phase is compared with: a fresh one just before it (other tenants'
        load drifts on a shared box), or the first one with --reference once."""
        if args.reference == "once":
            return first
        row, verdicts = offline(monitor, texts, lengths)
        row["max_abs_diff_to_first"] = max(abs(a.score - b.score) for a, b in zip(verdicts, ref))
        return row

    def show(name: str, row: dict[str, Any]) -> None:
        lat, sm, sc = row["latency_ms"] or {}, row["server"], row["score_check"]
        print(f"{name}: {row['prompts_per_s']:.2f} prompts/s = {num(row['ratio_to_offline'], '.2f')} x offline "
              f"({row['offline_reference']['prompts_per_s']:.2f}), CPU ratio {num(row['cpu_ratio_to_offline'], '.2f')}"
              f"; p50 {num(lat.get('p50'), '.0f')} ms, p99 {num(lat.get('p99'), '.0f')} ms; errors "
              f"{row['good_errors']}, lost {row['lost']}; max |dscore| {num(sc.get('max_abs_diff'), '.2e')} "
              f"(rel {num(sc.get('max_rel_diff'), '.1e')}), flag flips {sc.get('flag_flips')}; batches "
              f"{sm['batches']} (mean {num(sm['mean_batch_size'], '.1f')}, {sm['batch_size_histogram']}), worker busy "
              f"{num(sm['worker_busy_fraction'], '.2f')}", flush=True)

    # 3. The real server, same Monitor: each concurrency level, then malformed traffic, then RSS.
    app = create_app(monitor, max_items=args.max_items, max_batch_tokens=args.max_batch_tokens,
                     max_wait_ms=args.max_wait_ms, workers=args.workers)
    workers = results["server_options"]["workers"] = app.state.batcher.workers
    results["server_options"]["threads_per_worker"] = app.state.batcher.threads
    good_items = [Item(b"", prompt=i) for i in range(len(texts))]
    results["levels"] = []
    with ServerThread(app) as srv:
        results["server_options"]["uvicorn"] = srv.options()
        for conc in args.concurrency:
            if time.monotonic() > deadline:
                results["levels"].append({"concurrency": conc, "skipped": "time cap"})
                continue
            row = level(srv.url, good_items, bodies, lengths, ref, conc, deadline, args, reference(), first, workers)
            results["levels"].append(row)
            show(f"concurrency {conc:>3}", row)
        # The target's level again, each time beside a fresh offline reference: one pair of runs on a
        # shared 2-core box moves by +-0.05, so the target is judged on the median of the repeats.
        results["top_repeats"] = []
        for r in range(1, args.top_repeats):
            if time.monotonic() > deadline:
                break
            row = level(srv.url, good_items, bodies, lengths, ref, top, deadline, args, reference(), first, workers)
            results["top_repeats"].append(row)
            show(f"concurrency {top:>3} (repeat {r})", row)
        if time.monotonic() <= deadline:
            mixed = interleave(len(texts), args.malformed_fraction, kinds)
            row = level(srv.url, mixed, bodies, lengths, ref, top, deadline, args, reference(), first, workers)
            results["malformed"] = row
            show(f"malformed at {top:>3}", row)
            print(f"  malformed: {row.get('malformed')}; every one its expected 4xx: "
                  f"{row.get('malformed_all_expected')}; good {row['good_ok']}/{row['good_sent']} ok", flush=True)
        else:
            results["malformed"] = {"skipped": "time cap"}
        if time.monotonic() <= deadline:
            checkpoints = sorted(set(args.rss_requests))
            row = rss_phase(srv.url, short_bodies, checkpoints, args.rss_concurrency, deadline, args, workers)
            results["rss"] = row
            marks = ", ".join(f"{int(v['rss_bytes']) / 2**20:.0f} MiB after {k} ({v['elapsed_s']:.0f} s)"
                              for k, v in row["rss_after"].items())
            print(f"RSS: {marks}; ratio {num(row['rss_ratio_last_to_first'], '.4f')}; statuses {row['statuses']}; "
                  f"{num(row['prompts_per_s'], '.1f')} prompts/s", flush=True)
        else:
            results["rss"] = {"skipped": "time cap"}
        if time.monotonic() <= deadline:
            row = short_behind_long(srv.url, long_body, short_bodies[len(short_bodies) // 2], args.short_requests, 0.25,
                                    deadline, args.timeout)
            results["short_behind_long"] = row | {"long_prompts": LONG_PROMPTS, "long_tokens": long_request_tokens}
            print(f"short behind long ({LONG_PROMPTS} x {long_request_tokens // LONG_PROMPTS} tokens): short p50/p99 "
                  f"{num((row['short_behind_long_ms'] or {}).get('p50'), '.0f')}/"
                  f"{num((row['short_behind_long_ms'] or {}).get('p99'), '.0f')} ms (idle p99 "
                  f"{num((row['short_idle_ms'] or {}).get('p99'), '.0f')} ms); long p50 "
                  f"{num((row['long_ms'] or {}).get('p50'), '.0f')} ms; {row['statuses']}", flush=True)
    # The same top level served by one scoring worker (the default before two): what the second bought.
    if workers != 1 and time.monotonic() <= deadline:
        one = create_app(monitor, max_items=args.max_items, max_batch_tokens=args.max_batch_tokens,
                         max_wait_ms=args.max_wait_ms, workers=1)
        with ServerThread(one) as srv:
            row = level(srv.url, good_items, bodies, lengths, ref, top, deadline, args, reference(), first, 1)
        results["one_worker_at_top"] = row | {"threads_per_worker": one.state.batcher.threads}
        show(f"1 worker at {top:>3}", row)
    # The offline references ran on this thread after the workers set their own thread counts: say
    # that this thread's count (what offline used) did not change.
    results["torch_threads_main_at_end"] = torch.get_num_threads()
    results["total_seconds"] = time.monotonic() - started
    results["loadavg_at_end"] = loadavg()
    results["summary"] = summary(results, top)
    print("summary: " + json.dumps(results["summary"]))

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=2))
    os.replace(tmp, out)
    print(f"wrote {out} ({results['total_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
