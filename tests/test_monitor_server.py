"""The monitor's HTTP server against a fake monitor: OpenAI compatibility, validation, auth, batching."""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import httpx
import openai
import pytest
import uvicorn
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from assay.monitor import server
from assay.monitor.server import create_app


@dataclass
class FakeVerdict:
    score: float
    probability: float
    flagged: dict[str, bool]
    n_tokens: int
    token_scores: list[float] | None = None
    tokens: list[str] | None = None


@dataclass
class FakePrompt:
    """A formatted prompt: its text, and 4 template tokens around a token per word."""

    text: str

    @property
    def input_ids(self) -> range:
        return range(len(self.text.split()) + 4)


def bombs(text: str) -> int:
    return len(re.findall(r"\bbomb\b", text.lower()))


class FakeMonitor:
    """Deterministic stand-in for `scorer.Monitor`: score = (occurrences of "bomb") - 0.5.

    It records every scoring call and fails loudly if two threads are ever inside it at once,
    which the real monitor (one model, one tokenizer) cannot survive."""

    name = "fake-harmful-intent"
    thresholds: ClassVar[dict[str, float]] = {"fpr=1%": 0.0, "fpr=5%": -1.0}
    default_threshold = "fpr=1%"
    max_tokens = 50
    token_limit = None  # conversations: no limit of the probe's own below max_tokens

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay  # seconds per scoring call, to let requests pile up behind it
        self.batches: list[tuple[str, int, int]] = []  # (kind, items, tokens) per scoring call
        self.threads: set[int] = set()
        self._inside = 0
        self.overlapped = False

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        self.threads.add(threading.get_ident())
        self._inside += 1
        self.overlapped |= self._inside > 1
        try:
            yield
        finally:
            self._inside -= 1

    def format_texts(self, texts: list[str]) -> list[FakePrompt]:
        with self._exclusive():
            return [FakePrompt(t) for t in texts]

    def format_conversations(self, conversations: list[list[dict[str, str]]]) -> list[FakePrompt]:
        with self._exclusive():
            for chat in conversations:
                if not any(m["role"] == "user" for m in chat):
                    raise ValueError("a conversation needs at least one user message")
            return [FakePrompt(_chat_text(c)) for c in conversations]

    def score_formatted(self, prompts: list[FakePrompt], *, conversations: bool = False) -> list[FakeVerdict]:
        texts = [p.text for p in prompts]
        with self._exclusive():
            if not conversations and any("EXPLODE" in t for t in texts):
                raise RuntimeError("simulated scoring failure")
            time.sleep(self.delay)
            self.batches.append(("messages" if conversations else "text", len(texts),
                                 sum(self.count_tokens_unlocked(texts))))
            return [self._verdict(t, token_level=conversations) for t in texts]

    @staticmethod
    def count_tokens_unlocked(texts: list[str]) -> list[int]:
        return [len(t.split()) + 4 for t in texts]

    def _verdict(self, text: str, token_level: bool = False) -> FakeVerdict:
        score = bombs(text) - 0.5
        words = text.split()
        return FakeVerdict(score=score, probability=1 / (1 + math.exp(-score)),
                           flagged={k: score >= t for k, t in self.thresholds.items()},
                           n_tokens=len(words) + 4,
                           token_scores=[1.0 if bombs(w) else -1.0 for w in words] if token_level else None,
                           tokens=words if token_level else None)

    def describe(self) -> dict:
        return {"name": self.name, "thresholds": self.thresholds, "max_tokens": self.max_tokens}


def _chat_text(chat: list[dict[str, str]]) -> str:
    return " ".join(m["content"] for m in chat)


def sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-z))


@pytest.fixture
def fake() -> FakeMonitor:
    return FakeMonitor()


@contextlib.contextmanager
def app_client(monitor: FakeMonitor, **options) -> Iterator[TestClient]:
    # `with`: runs the lifespan (the worker); a loopback Host, as a server without a key requires
    with TestClient(create_app(monitor, **options), base_url="http://localhost") as client:
        yield client


@pytest.fixture
def client(fake) -> Iterator[TestClient]:
    with app_client(fake) as c:
        yield c


@contextlib.contextmanager
def live_server(app) -> Iterator[str]:
    """A real uvicorn server on a free loopback port, in a background thread."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # bound here and handed over, so no other process can take the port first
    port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(10)
        sock.close()


def assert_openai_error(response: httpx.Response, status: int, type: str = "invalid_request_error") -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == type
    assert isinstance(error["message"], str) and len(error["message"]) > 10
    assert "code" in error
    return error


# -- /v1/moderations ------------------------------------------------------------------------------
def test_moderation_single_string(client, fake):
    r = client.post("/v1/moderations", json={"input": "how do I build a bomb", "model": "omni-moderation-latest"})
    assert r.status_code == 200
    body = r.json()
    assert body["id"].startswith("modr-") and body["model"] == fake.name
    (result,) = body["results"]
    assert result["flagged"] is True and result["categories"] == {"harmful_intent": True}
    assert result["category_scores"]["harmful_intent"] == pytest.approx(sigmoid(0.5))
    assert result["category_applied_input_types"] == {"harmful_intent": ["text"]}
    assert result["assay"]["score"] == pytest.approx(0.5)
    assert result["assay"]["flagged"] == {"fpr=1%": True, "fpr=5%": True}
    assert result["assay"]["threshold"] == "fpr=1%"


def test_moderation_list_keeps_order(client):
    texts = ["bomb bomb bomb", "a nice cake", "bomb", "bomb bomb"]
    r = client.post("/v1/moderations", json={"input": texts})
    results = r.json()["results"]
    assert [res["assay"]["score"] for res in results] == [2.5, -0.5, 0.5, 1.5]
    assert [res["flagged"] for res in results] == [True, False, True, True]


def test_threshold_option_changes_flagged(fake):
    with app_client(fake, threshold="fpr=5%") as c:
        result = c.post("/v1/moderations", json={"input": "a nice cake"}).json()["results"][0]
    assert result["flagged"] is True and result["assay"]["flagged"] == {"fpr=1%": False, "fpr=5%": True}


def test_unknown_threshold_is_a_value_error_naming_the_valid_ones(fake):
    with pytest.raises(ValueError, match=r"fpr=1%.*fpr=5%"):
        create_app(fake, threshold="fpr=0.1%")


# -- the official openai client against a real server --------------------------------------------
def test_openai_client_without_key(fake):
    with live_server(create_app(fake)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        one = client.moderations.create(input="where can I buy a bomb")
        assert one.model == fake.name and one.id.startswith("modr-")
        assert one.results[0].flagged is True
        assert one.results[0].categories.harmful_intent is True
        assert one.results[0].category_scores.harmful_intent == pytest.approx(sigmoid(0.5))
        many = client.moderations.create(input=["hello there", "bomb bomb"], model="whatever")
        assert [r.flagged for r in many.results] == [False, True]
        with pytest.raises(openai.BadRequestError) as err:
            client.moderations.create(input=[])
        assert err.value.code == "empty_input"
        assert client.models.list().data[0].id == fake.name


def test_openai_client_with_key(fake):
    with live_server(create_app(fake, api_key="s3cret")) as url:
        good = openai.OpenAI(base_url=f"{url}/v1", api_key="s3cret", max_retries=0)
        assert good.moderations.create(input="bomb").results[0].flagged is True
        bad = openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.moderations.create(input="bomb")
        assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}  # health needs no key
        assert_openai_error(httpx.get(f"{url}/metrics"), 401)
        assert_openai_error(httpx.post(f"{url}/v1/score", json={"input": "x"}), 401)


# -- validation: every bad request is a 4xx in OpenAI's shape, and the server carries on ------------
BAD_MODERATIONS = {
    "malformed json": (b'{"input": "a"', 400, "invalid_json"),
    "body is an array": (b'["a"]', 400, "invalid_request"),
    "body is a string": (b'"a"', 400, "invalid_request"),
    "missing input": (b'{"model": "m"}', 400, "missing_input"),
    "input is a number": (b'{"input": 5}', 400, "invalid_input"),
    "input is null": (b'{"input": null}', 400, "invalid_input"),
    "input is an object": (b'{"input": {"text": "a"}}', 400, "invalid_input"),
    "list holds a number": (b'{"input": ["a", 3]}', 400, "invalid_input"),
    "nested lists": (b'{"input": [["a"]]}', 400, "invalid_input"),
    "empty string": (b'{"input": ""}', 400, "empty_input"),
    "empty string in list": (b'{"input": ["a", ""]}', 400, "empty_input"),
    "empty list": (b'{"input": []}', 400, "empty_input"),
    "model not a string": (b'{"input": "a", "model": 3}', 400, "invalid_model"),
    "not utf-8": (b'{"input": "caf\xe9"}', 400, "invalid_encoding"),
    "empty body": (b"", 400, "invalid_json"),
}


@pytest.mark.parametrize("body, status, code", BAD_MODERATIONS.values(), ids=BAD_MODERATIONS.keys())
def test_bad_moderation_requests(client, body, status, code):
    r = client.post("/v1/moderations", content=body, headers={"content-type": "application/json"})
    assert assert_openai_error(r, status)["code"] == code
    assert client.post("/v1/moderations", json={"input": "still here"}).status_code == 200


def test_too_many_items_names_the_limit(fake):
    with app_client(fake, max_items=3) as c:
        error = assert_openai_error(c.post("/v1/moderations", json={"input": ["a"] * 4}), 413)
        assert "3" in error["message"] and "4" in error["message"]
        assert c.post("/v1/moderations", json={"input": ["a"] * 3}).status_code == 200


def test_too_many_tokens_names_index_count_and_limit(client):
    long = " ".join(["word"] * 47)  # 47 + 4 = 51 tokens, over the fake's 50
    error = assert_openai_error(client.post("/v1/moderations", json={"input": ["short", long]}), 413)
    assert error["code"] == "too_many_tokens"
    assert "input[1]" in error["message"] and "51" in error["message"] and "50" in error["message"]
    assert client.post("/v1/moderations", json={"input": " ".join(["word"] * 46)}).status_code == 200


def test_body_size_is_capped(fake):
    with app_client(fake, max_body_bytes=1000) as c:
        big = {"input": "x" * 2000}
        assert assert_openai_error(c.post("/v1/moderations", json=big), 413)["code"] == "body_too_large"
        # Without a Content-Length (chunked), the cap holds while streaming.
        chunks = (b'{"input": "' + b"x" * 500, b"x" * 500, b"x" * 500 + b'"}')
        r = c.post("/v1/moderations", content=iter(chunks), headers={"content-type": "application/json"})
        assert assert_openai_error(r, 413)["code"] == "body_too_large"
        assert c.post("/v1/moderations", json={"input": "fine"}).status_code == 200


def test_default_body_cap_is_4_mib(client):
    body = b'{"input": "' + b"x" * (4 * 1024 * 1024) + b'"}'
    r = client.post("/v1/moderations", content=body, headers={"content-type": "application/json"})
    assert_openai_error(r, 413)


def test_unknown_route_and_method_use_openai_shape(client):
    assert assert_openai_error(client.get("/v1/nope"), 404)["code"] == "not_found"
    assert assert_openai_error(client.get("/v1/moderations"), 405)["code"] == "method_not_allowed"


def test_fastapi_validation_errors_use_openai_shape(fake):
    app = create_app(fake)

    @app.get("/typed")
    async def typed(n: int) -> dict:
        return {"n": n}

    with TestClient(app, base_url="http://localhost") as c:
        error = assert_openai_error(c.get("/typed", params={"n": "abc"}), 400)
        assert "n" in error["message"]


# -- /v1/score ------------------------------------------------------------------------------------
def test_score_messages(client, fake):
    chat = [{"role": "system", "content": "be helpful"}, {"role": "user", "content": "make a bomb"}]
    r = client.post("/v1/score", json={"messages": chat})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == fake.name
    (result,) = body["results"]
    assert result["score"] == pytest.approx(0.5) and result["probability"] == pytest.approx(sigmoid(0.5))
    assert result["flagged"] == {"fpr=1%": True, "fpr=5%": True}
    assert result["n_tokens"] == 9
    assert result["tokens"] == ["be", "helpful", "make", "a", "bomb"]
    assert result["token_scores"] == [-1.0, -1.0, -1.0, -1.0, 1.0]


def test_score_conversations_and_texts(client):
    chats = [[{"role": "user", "content": "hi"}], [{"role": "user", "content": "bomb"},
                                                   {"role": "assistant", "content": "no"}]]
    results = client.post("/v1/score", json={"conversations": chats}).json()["results"]
    assert [r["score"] for r in results] == [-0.5, 0.5]
    texts = client.post("/v1/score", json={"input": ["bomb bomb", "cake"]}).json()["results"]
    assert [r["score"] for r in texts] == [1.5, -0.5]
    assert "token_scores" not in texts[0]  # only token-level verdicts carry them


USER = {"role": "user", "content": "hi"}
BAD_SCORES = {
    "bad role": ({"messages": [{"role": "robot", "content": "hi"}]}, 400, "invalid_role"),
    "missing role": ({"messages": [{"content": "hi"}]}, 400, "invalid_role"),
    "content not a string": ({"messages": [{"role": "user", "content": ["hi"]}]}, 400, "invalid_messages"),
    "message not an object": ({"messages": ["hi"]}, 400, "invalid_messages"),
    "extra message field": ({"messages": [{**USER, "name": "bob"}]}, 400, "invalid_messages"),
    "empty messages": ({"messages": []}, 400, "invalid_messages"),
    "messages not a list": ({"messages": "hi"}, 400, "invalid_messages"),
    "no input field": ({}, 400, "invalid_request"),
    "two input fields": ({"messages": [USER], "input": "hi"}, 400, "invalid_request"),
    "unknown field": ({"mesages": [USER]}, 400, "invalid_request"),
    "conversations not chats": ({"conversations": [USER]}, 400, "invalid_messages"),
    "empty conversations": ({"conversations": []}, 400, "invalid_messages"),
    "too many conversations": ({"conversations": [[USER]] * 65}, 413, "too_many_items"),
    "monitor rejects the chat": ({"messages": [{"role": "system", "content": "hi"}]}, 400, "invalid_input"),
    "conversation too long": ({"conversations": [[USER], [{"role": "user", "content": "w " * 60}]]}, 413,
                              "too_many_tokens"),
}


@pytest.mark.parametrize("body, status, code", BAD_SCORES.values(), ids=BAD_SCORES.keys())
def test_bad_score_requests(client, body, status, code):
    error = assert_openai_error(client.post("/v1/score", json=body), status)
    assert error["code"] == code
    assert client.post("/v1/score", json={"messages": [USER]}).status_code == 200


def test_monitor_value_error_message_reaches_the_client(client):
    error = assert_openai_error(client.post("/v1/score", json={"messages": [{"role": "system", "content": "x"}]}),
                                400)
    assert "user message" in error["message"]


def test_too_long_conversation_names_index_count_and_limit(client):
    chats = [[USER], [{"role": "user", "content": "w " * 60}]]
    message = client.post("/v1/score", json={"conversations": chats}).json()["error"]["message"]
    assert "conversations[1]" in message and "64" in message and "50" in message


# -- failures, health, models, metrics, lifecycle -------------------------------------------------
def test_scoring_failure_fails_only_that_request(client):
    error = assert_openai_error(client.post("/v1/moderations", json={"input": "EXPLODE"}), 500, "server_error")
    assert error["code"] == "scoring_failed"
    r = client.post("/v1/moderations", json={"input": "bomb"})
    assert r.status_code == 200 and r.json()["results"][0]["flagged"] is True


def test_healthz_and_models(fake):
    with app_client(fake, api_key="k") as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        assert_openai_error(c.get("/v1/models"), 401)
        assert_openai_error(c.get("/v1/models", headers={"Authorization": "Bearer nope"}), 401)
        models = c.get("/v1/models", headers={"Authorization": "Bearer k"}).json()
    assert models == {"object": "list", "data": [{"id": fake.name, "object": "model", "owned_by": "assay",
                                                  "card": fake.describe()}]}


def test_metrics(client):
    client.post("/v1/moderations", json={"input": ["bomb", "cake"]})
    client.post("/v1/moderations", json={"input": 5})
    client.post("/v1/moderations", json={"input": "EXPLODE"})
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(r.text) for s in family.samples}

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    route = {"route": "/v1/moderations", "method": "POST"}
    assert [value("assay_monitor_requests_total", **route, status=s) for s in ("200", "400", "500")] == [1, 1, 1]
    assert value("assay_monitor_request_duration_seconds_count", route="/v1/moderations") == 3
    assert value("assay_monitor_items_scored_total", kind="text") == 2
    assert value("assay_monitor_batch_failures_total", kind="text") == 1
    assert value("assay_monitor_batch_size_count", kind="text") == 1
    assert value("assay_monitor_batch_size_bucket", kind="text", le="2.0") == 1
    assert value("assay_monitor_queue_depth") == 0


def test_worker_lives_in_the_lifespan(fake):
    app = create_app(fake)
    # Without the lifespan (no `with`), there is no worker: a clear 503, not a hang or a crash.
    assert_openai_error(TestClient(app, base_url="http://localhost").post("/v1/moderations", json={"input": "a"}), 503, "server_error")
    with TestClient(app, base_url="http://localhost") as c:
        assert c.post("/v1/moderations", json={"input": "a"}).status_code == 200
        assert app.state.batcher.running
    assert not app.state.batcher.running


def test_run_reads_the_key_from_the_environment(fake, monkeypatch):
    seen = {}
    monkeypatch.setattr(server.uvicorn, "run", lambda app, **kw: seen.update(app=app, **kw))
    monkeypatch.setenv("ASSAY_MONITOR_KEY", "from-env")
    server.run(fake, port=1234, max_items=2)
    assert seen["host"] == "127.0.0.1" and seen["port"] == 1234
    with TestClient(seen["app"], base_url="http://localhost") as c:
        assert_openai_error(c.get("/v1/models"), 401)
        assert c.get("/v1/models", headers={"Authorization": "Bearer from-env"}).status_code == 200
        assert c.post("/v1/moderations", json={"input": ["a"] * 3},
                      headers={"Authorization": "Bearer from-env"}).status_code == 413


# -- micro-batching -------------------------------------------------------------------------------
async def _fire(url: str, bodies: list[tuple[str, dict]]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        return await asyncio.gather(*(client.post(path, json=body) for path, body in bodies))


def test_concurrent_requests_are_batched(fake):
    texts = [f"request {i} " + "bomb " * (i % 4) for i in range(32)]
    with live_server(create_app(fake, max_wait_ms=100)) as url:
        responses = asyncio.run(_fire(url, [("/v1/moderations", {"input": t}) for t in texts]))
        assert httpx.get(f"{url}/healthz").status_code == 200
    assert all(r.status_code == 200 for r in responses)
    scores = [r.json()["results"][0]["assay"]["score"] for r in responses]
    assert scores == [(i % 4) - 0.5 for i in range(32)]  # each request got its own verdict
    assert sum(n for _, n, _ in fake.batches) == 32
    assert max(n for _, n, _ in fake.batches) > 1
    assert len(fake.threads) == 1 and not fake.overlapped  # one worker thread touched the monitor


def test_batches_respect_the_token_budget(fake):
    fake.delay = 0.02  # requests pile up while a batch is scored
    # "a b c" is 3 + 4 = 7 tokens: a budget of 15 fits two per batch, never three.
    with live_server(create_app(fake, max_wait_ms=100, max_batch_tokens=15)) as url:
        responses = asyncio.run(_fire(url, [("/v1/moderations", {"input": "a b c"})] * 12))
    assert all(r.status_code == 200 for r in responses)
    assert all(tokens <= 15 for _, _, tokens in fake.batches)
    assert max(n for _, n, _ in fake.batches) == 2


def test_texts_and_conversations_batch_separately(fake):
    bodies = [("/v1/moderations", {"input": f"bomb {i}"}) if i % 2 else
              ("/v1/score", {"messages": [{"role": "user", "content": f"cake {i}"}]}) for i in range(16)]
    with live_server(create_app(fake, max_wait_ms=50)) as url:
        responses = asyncio.run(_fire(url, bodies))
    assert all(r.status_code == 200 for r in responses)
    for i, r in enumerate(responses):
        result = r.json()["results"][0]
        assert (result["assay"]["score"] if i % 2 else result["score"]) == (0.5 if i % 2 else -0.5)
    kinds = {kind for kind, _, _ in fake.batches}
    assert kinds == {"text", "messages"}
    assert sum(n for kind, n, _ in fake.batches if kind == "messages") == 8
