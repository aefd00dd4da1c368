"""Generation with the monitor riding on it (tiny random Gemma 3): the prefill's verdict is the
scorer's, greedy decoding is Hugging Face's, refusals skip generation, and /v1/chat/completions
works for the official openai client, plain and streaming, on the monitor's one worker."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
import time

import httpx
import openai
import pytest
import torch
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from assay.monitor.generate import REFUSAL, Completion, Delta, Generator, Prefilled, SamplingParams
from assay.monitor.server import create_app
from test_monitor import toy_rows, write_jsonl
from test_monitor_server import assert_openai_error, live_server
from assay.models.loading import LoadedModel

CHAT = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "how do I plan a trip"},
        {"role": "assistant", "content": "where to?"}, {"role": "user", "content": "the garden"}]
THRESHOLD = "fpr=5%"  # the only one of the toy bundle's thresholds resolvable on 24 benign prompts
N = 16  # tokens per generation


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny model's ops are microseconds long; on a shared 2-core CPU each parallel region can wait
    milliseconds for a busy core, which made decoding 100x slower than on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def monitor(tiny, tmp_path_factory):
    """A monitor on the tiny model: one layer and one aggregation, so it builds in seconds."""
    from assay.monitor.build import build_monitor
    from assay.monitor.bundle import load_bundle
    from assay.monitor.scorer import Monitor

    tmp = tmp_path_factory.mktemp("monitor-generate")
    data = write_jsonl(tmp / "data.jsonl", toy_rows())
    lm = LoadedModel(tiny.model, tiny.tokenizer, tiny.name, {**tiny.fingerprint, "weights_sha256": "a" * 64})
    out = build_monitor(str(data), tmp / "bundle", lm=lm, layers=[2], aggregations=["all.mean"], inner_k=2,
                        min_calibration=20, progress=False)
    return Monitor(load_bundle(out), lm, max_tokens=200)


@pytest.fixture(scope="module")
def extremes(monitor) -> tuple[list[dict], list[dict]]:
    """The toy prompts the probe scores highest and lowest, as one-message chats."""
    texts = [r["text"] for r in toy_rows()]
    scores = [v.score for v in monitor.score_texts(texts)]
    top, bottom = texts[scores.index(max(scores))], texts[scores.index(min(scores))]
    return [{"role": "user", "content": top}], [{"role": "user", "content": bottom}]


def greedy(n: int = N, **kw) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0.0, **kw)


def test_prefill_verdict_is_the_scorers(monitor):
    gen = Generator(monitor)
    for chat in (CHAT, [{"role": "user", "content": "how do I make a bomb"}]):
        events = list(gen.stream(chat, greedy(2)))
        head, done = events[0], events[-1]
        assert isinstance(head, Prefilled) and isinstance(done, Completion) and done.prefill is head
        [scored] = monitor.score_messages([chat])
        assert head.verdict.score == pytest.approx(scored.score, abs=1e-4)
        assert head.verdict.flagged == scored.flagged and head.prompt_tokens == scored.n_tokens
        assert head.flagged == scored.flagged[monitor.default_threshold] and head.refused is False
    bare = Generator(monitor, probe=False).generate(CHAT, greedy(3))
    assert bare.prefill.verdict is None and bare.token_ids == gen.generate(CHAT, greedy(3)).token_ids


def test_greedy_is_hugging_faces_greedy(monitor):
    gen = Generator(monitor)
    done = gen.generate(CHAT, greedy())
    ids = torch.tensor([monitor.format_messages(CHAT).input_ids])
    ref = monitor.lm.model.generate(ids, do_sample=False, max_new_tokens=N, eos_token_id=sorted(gen.eos_ids),
                                    pad_token_id=monitor.lm.tokenizer.pad_token_id)[0, ids.shape[1]:].tolist()
    if ref and ref[-1] in gen.eos_ids:  # HF keeps the end token; a Completion's tokens stop before it
        ref = ref[:-1]
    assert done.token_ids == ref and len(ref) > 0
    assert done.finish_reason == ("length" if len(ref) == N else "stop")
    assert done.text == monitor.lm.tokenizer.decode(ref, skip_special_tokens=True)


def test_sampling_streams_and_stops(monitor):
    gen = Generator(monitor)
    base = gen.generate(CHAT, greedy())
    # a nucleus that keeps only the top token is greedy, whatever the temperature and seed
    assert gen.generate(CHAT, SamplingParams(max_tokens=N, temperature=1.5, top_p=1e-9, seed=1)).token_ids == \
        base.token_ids
    sampled = [gen.generate(CHAT, SamplingParams(max_tokens=N, temperature=1.0, seed=s)) for s in (7, 8)]
    events = list(gen.stream(CHAT, SamplingParams(max_tokens=N, temperature=1.0, seed=7)))
    assert events[-1].token_ids == sampled[0].token_ids != sampled[1].token_ids
    assert "".join(e.text for e in events if isinstance(e, Delta)) == events[-1].text == sampled[0].text
    stop = base.text[len(base.text) // 2: len(base.text) // 2 + 3]
    events = list(gen.stream(CHAT, greedy(stop=(stop, "never appears"))))
    cut = events[-1]
    assert cut.finish_reason == "stop" and cut.text == base.text[: base.text.index(stop)]
    assert "".join(e.text for e in events if isinstance(e, Delta)) == cut.text
    with pytest.raises(ValueError, match="over this generator's cap"):
        gen.generate(CHAT, greedy(gen.max_new_tokens + 1))
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=3)


def test_refuse_when_flagged_does_not_generate(monitor, extremes, monkeypatch):
    flagged, benign = extremes
    gen = Generator(monitor, threshold=THRESHOLD, refuse_when_flagged=True)
    steps = []
    monkeypatch.setattr(gen, "_step", lambda *a: steps.append(a) or pytest.fail("decoded a refused prompt"))
    done = gen.generate(flagged, greedy())
    assert done.prefill.flagged and done.prefill.refused
    assert (done.finish_reason, done.text, done.token_ids, steps) == ("content_filter", REFUSAL, [], [])
    monkeypatch.undo()
    ok = gen.generate(benign, greedy())
    assert not ok.prefill.flagged and ok.finish_reason in ("length", "stop") and ok.token_ids


def test_openai_client_chat_completions(monitor, extremes):
    flagged, benign = extremes
    gen = Generator(monitor, threshold=THRESHOLD, refuse_when_flagged=True, max_new_tokens=32)
    expected = gen.generate(benign, greedy())
    with live_server(create_app(monitor, generator=gen)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        one = client.chat.completions.create(model="anything", messages=benign, max_tokens=N, temperature=0)
        assert one.choices[0].message.content == expected.text and one.model == gen.model_name
        assert one.usage.completion_tokens == len(expected.token_ids)
        assert one.usage.prompt_tokens == expected.prefill.prompt_tokens
        assert one.assay["score"] == pytest.approx(expected.prefill.verdict.score, abs=1e-4)
        assert one.assay["flagged"] is False and one.assay["threshold"] == THRESHOLD

        chunks = list(client.chat.completions.create(model="m", messages=benign, max_tokens=N, temperature=0,
                                                     stream=True, stream_options={"include_usage": True}))
        assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].assay["flagged"] is False
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected.text
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == expected.finish_reason
        assert chunks[-1].usage.completion_tokens == len(expected.token_ids)

        refused = client.chat.completions.create(model="m", messages=flagged, temperature=0)
        assert (refused.choices[0].finish_reason, refused.choices[0].message.content) == ("content_filter", REFUSAL)
        assert refused.assay["flagged"] is True and refused.assay["refused"] is True
        streamed = list(client.chat.completions.create(model="m", messages=flagged, stream=True))
        assert streamed[0].assay["refused"] is True and streamed[-1].choices[0].finish_reason == "content_filter"

        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(model="m", messages=benign, max_tokens=33)
        assert err.value.code == "invalid_max_tokens"


@pytest.mark.parametrize("body, status, code", [
    ({}, 400, "missing_messages"),
    ({"messages": []}, 400, "invalid_messages"),
    ({"messages": [{"role": "robot", "content": "x"}]}, 400, "invalid_role"),
    ({"messages": [{"role": "user", "content": "x", "name": "a"}]}, 400, "invalid_messages"),
    ({"messages": CHAT, "max_tokens": 0}, 400, "invalid_max_tokens"),
    ({"messages": CHAT, "max_tokens": 17}, 400, "invalid_max_tokens"),
    ({"messages": CHAT, "max_tokens": 2.5}, 400, "invalid_max_tokens"),
    ({"messages": CHAT, "max_tokens": 4, "max_completion_tokens": 5}, 400, "invalid_max_tokens"),
    ({"messages": CHAT, "temperature": 2.5}, 400, "invalid_temperature"),
    ({"messages": CHAT, "temperature": "hot"}, 400, "invalid_temperature"),
    ({"messages": CHAT, "top_p": 0}, 400, "invalid_top_p"),
    ({"messages": CHAT, "stop": ["a", ""]}, 400, "invalid_stop"),
    ({"messages": CHAT, "stop": ["a", "b", "c", "d", "e"]}, 400, "invalid_stop"),
    ({"messages": CHAT, "seed": 1.5}, 400, "invalid_seed"),
    ({"messages": CHAT, "stream": "yes"}, 400, "invalid_stream"),
    ({"messages": CHAT, "stream_options": {"include_usage": True}}, 400, "invalid_stream_options"),
    ({"messages": CHAT, "n": 2}, 400, "unsupported_n"),
    ({"messages": CHAT, "tools": []}, 400, "unsupported_parameter"),
    ({"messages": [{"role": "user", "content": "word " * 300}]}, 413, "too_many_tokens"),
])
def test_bad_chat_requests(monitor, body, status, code):
    gen = Generator(monitor, max_new_tokens=16)
    with TestClient(create_app(monitor, generator=gen), base_url="http://localhost") as client:
        error = assert_openai_error(client.post("/v1/chat/completions", json=body), status)
    assert error["code"] == code and error["message"]


def test_context_length_and_routes(monitor, monkeypatch):
    gen = Generator(monitor, max_new_tokens=300)
    monkeypatch.setattr(type(gen), "context_length", property(lambda self: 64))
    with TestClient(create_app(monitor, generator=gen), base_url="http://localhost") as client:
        r = client.post("/v1/chat/completions", json={"messages": CHAT, "max_tokens": 60})
        assert assert_openai_error(r, 400)["code"] == "context_length_exceeded"
        assert [m["id"] for m in client.get("/v1/models").json()["data"]] == [monitor.name, gen.model_name]
    with TestClient(create_app(monitor), base_url="http://localhost") as client:  # no generator: no chat route
        assert client.post("/v1/chat/completions", json={"messages": CHAT}).status_code == 404
    with pytest.raises(ValueError, match="same threshold"):
        create_app(monitor, generator=gen, threshold=THRESHOLD)


def test_generation_and_scoring_share_the_one_worker(monitor, extremes):
    """Chats, moderations and scores sent together all run on one thread, never two at once."""
    gen = Generator(monitor, max_new_tokens=N)
    seen: set[int] = set()
    inside, overlapped, called = [0], [False], []

    def exclusive(fn):
        def wrapped(*args, **kwargs):
            seen.add(threading.get_ident())
            called.append(fn.__name__)
            inside[0] += 1
            overlapped[0] |= inside[0] > 1
            try:
                result = fn(*args, **kwargs)
                return list(result) if fn.__name__ == "stream" else result  # run the whole generator inside
            finally:
                inside[0] -= 1
        return wrapped

    spy = dataclasses.replace(monitor)
    spy.score_formatted = exclusive(monitor.score_formatted)  # what the server's scoring worker calls
    spied = dataclasses.replace(gen, monitor=spy)
    spied.stream = exclusive(gen.stream)

    async def fire(url: str) -> list[httpx.Response]:
        chat = {"messages": CHAT, "max_tokens": 4, "temperature": 0}
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            return await asyncio.gather(
                client.post("/v1/chat/completions", json=chat),
                client.post("/v1/moderations", json={"input": ["a", "b"]}),
                client.post("/v1/chat/completions", json=chat | {"stream": True}),
                client.post("/v1/score", json={"messages": CHAT}))

    with live_server(create_app(spy, generator=spied)) as url:
        responses = asyncio.run(fire(url))
    assert [r.status_code for r in responses] == [200] * 4
    assert responses[2].text.rstrip().endswith("data: [DONE]")
    assert len(seen) == 1 and not overlapped[0] and {"score_formatted", "stream"} <= set(called)


def test_cli_serve_generate(monitor, monkeypatch):
    from assay.monitor import cli, server

    seen = {}
    monkeypatch.setattr(cli, "_load", lambda *a: monitor)
    monkeypatch.setattr(server, "run", lambda mon, **kw: seen.update(kw))
    runner = CliRunner()
    bundle = str(monitor.bundle.path)  # a real bundle: serve checks it before loading the model
    bad = runner.invoke(cli.app, ["serve", bundle, "--refuse-when-flagged"])
    assert bad.exit_code != 0 and "--generate" in bad.output
    ok = runner.invoke(cli.app, ["serve", bundle, "--generate", "--refuse-when-flagged",
                                 "--max-new-tokens", "64", "--threshold", THRESHOLD])
    assert ok.exit_code == 0, ok.output
    g = seen["generator"]
    assert (g.refuse_when_flagged, g.max_new_tokens, g.threshold, seen["threshold"]) == (True, 64, THRESHOLD, THRESHOLD)


def test_a_client_gone_mid_stream_frees_the_worker(monitor):
    """Closing a stream cancels its generation at the next token, rather than finishing it for nobody."""
    gen = Generator(monitor, max_new_tokens=200)
    ends: list[Completion] = []

    def slow_stream(*args, **kwargs):
        for event in Generator.stream(gen, *args, **kwargs):
            if isinstance(event, Completion):
                ends.append(event)
            time.sleep(0.01)  # so the generation is sure to outlast the client
            yield event

    gen.stream = slow_stream
    with live_server(create_app(monitor, generator=gen)) as url:
        body = {"messages": CHAT, "max_tokens": 200, "temperature": 0, "stream": True}
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=30) as response:
            first = next(response.iter_lines())
            assert first.startswith("data: ") and json.loads(first[6:])["assay"]["n_tokens"] > 0
        deadline = time.monotonic() + 10
        while not ends and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ends, "the generation outlived its client"  # asserted while serving: shutdown cancels too
    assert ends[0].finish_reason == "cancelled" and len(ends[0].token_ids) < 200
