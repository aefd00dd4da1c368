"""The monitor: leave-one-collection-out folds, bundle build and load, live scores equal to the
cached ones, conversations, offline score/eval, and clear errors (tiny random Gemma 3)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from assay.activations import extract
from assay.data.dataset import Dataset, Example
from assay.errors import ConfigMismatchError, InputError
from assay.monitor.folds import calibration_rows, collections_of, fold, list_collections, trainable
from assay.models.loading import LoadedModel

WORDS = ["how", "do", "I", "make", "bake", "a", "the", "car", "wash", "garden", "plan", "trip"]


def toy_rows(n_per_group: int = 24, groups: int = 4, n_calib: int = 30, seed: int = 0) -> list[dict]:
    """Labelled by the last word (bomb/steal vs cake/paint), four groups, a calib split."""
    rng = np.random.default_rng(seed)
    rows = []
    for g in range(groups):
        for i in range(n_per_group):
            label = i % 2
            last = ["bomb", "steal"][g % 2] if label else ["cake", "paint"][g % 2]
            rows.append({"text": " ".join(rng.choice(WORDS, 5)) + f" {last}", "label": label, "split": "train",
                         "group": f"g{g}", "cluster": f"g{g}-{i // 2}"})
    for i in range(n_calib):
        label = int(i % 5 == 0)
        rows.append({"text": " ".join(rng.choice(WORDS, 5)) + (" bomb" if label else " cake"), "label": label,
                     "split": "calib", "group": "calib", "cluster": f"c{i}"})
    return rows


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def ex(source="harmbench", family="none", transformation="none", label=1, split="train", cluster="h1", group="g"):
    return Example(text=f"{source} {family} {cluster} {label}", label=label, split=split, source=source,
                   family=family, transformation=transformation, behaviour_id=cluster, group=group, cluster=cluster)


def test_collections_of_rows():
    assert collections_of(ex(family="aim", transformation="none")) == ["source:harmbench", "family:aim"]
    assert collections_of(ex(source="user", group="pharmacy")) == ["group:pharmacy"]
    assert collections_of(ex(source="user", group="none")) == []


def test_fold_holds_out_clusters_and_never_trains_on_calibration():
    rows = [
        ex(family="aim", cluster="h1"), ex(cluster="h1"),  # h1 plain shares the held-out aim row's cluster
        ex(cluster="h2"), ex(source="sharegpt", label=0, cluster="b1"), ex(source="sharegpt", label=0, cluster="b2"),
        ex(source="sharegpt", family="aim", label=0, cluster="b3"),
        ex(source="sharegpt", label=0, split="calib", cluster="b9"), ex(label=1, split="calib", cluster="h9"),
    ]
    ds = Dataset(rows)
    f = fold(ds, "family:aim")
    assert set(f.test) == {0, 5}
    assert set(f.train) == {2, 3, 4}  # row 1 shares cluster h1 with a held-out row
    assert f.n_dropped_by_cluster == 1
    assert not set(f.train) & set(calibration_rows(ds))
    # ShareGPT is one-class: its fold is scored against the calibration split's harmful rows
    g = fold(ds, "source:sharegpt")
    assert 7 in g.test and 6 in g.test and set(g.calib_benign) == set()
    assert set(trainable(ds)) == set(range(6))
    assert "family:aim" in list_collections(ds, min_rows=1)
    with pytest.raises(InputError, match="no rows in collection"):
        fold(ds, "family:nope")


@pytest.fixture(scope="module")
def built(tiny, tmp_path_factory):
    from assay.monitor.build import build_monitor

    tmp = tmp_path_factory.mktemp("monitor")
    data = write_jsonl(tmp / "data.jsonl", toy_rows())
    lm = LoadedModel(tiny.model, tiny.tokenizer, tiny.name, {**tiny.fingerprint, "weights_sha256": "a" * 64})
    out = build_monitor(str(data), tmp / "bundle", lm=lm, layers=[1, 2], min_calibration=20, inner_k=2,
                        progress=False)
    return out, data, lm


def test_build_writes_a_bundle_with_nested_card(built):
    from assay.monitor.bundle import load_bundle

    out, data, _ = built
    b = load_bundle(out)
    spec = b.spec
    sel = spec["card"]["selection"]
    assert sel["collections"] == ["group:g0", "group:g1", "group:g2", "group:g3"]
    # 2 pooled methods x 2 layers x 3 aggregations + located-logistic x 2 layers; one mix (no val or ood)
    assert len(sel["candidates"]) == 14
    assert set(sel["nested"]) == set(sel["collections"])
    for c, r in sel["nested"].items():
        assert r["chosen"] in {x["name"] for x in sel["candidates"]}
        assert set(r["inner_auroc"]) == {x["name"] for x in sel["candidates"]}
        assert 0.0 <= r["auroc"] <= 1.0 and r["n_pos"] > 0 and r["n_neg"] > 0
    assert spec["layer"] == sel["chosen"]["layer"] and spec["inputs"]["aggregation"] == sel["chosen"]["aggregation"]
    t = [spec["thresholds"][k]["threshold"] for k in ("fpr=0.1%", "fpr=1%", "fpr=5%")]
    assert t[0] >= t[1] >= t[2]
    assert spec["thresholds"]["fpr=0.1%"]["resolvable"] is False  # 24 benign calibration prompts
    assert spec["calibration"]["n_benign"] == 24 and spec["training"]["splits"] == ["train"]
    card = (out / "card.md").read_text()
    assert "group:g0" in card and spec["name"] in card


def test_live_scores_equal_cached_scores(built, tmp_path):
    """The server's forward (format, pad, stop at the layer, pool) gives the scores of the cached
    activations the thresholds were set on."""
    from assay.data import load_dataset
    from assay.monitor.build import DEFAULT_AGGREGATIONS
    from assay.monitor.bundle import load_bundle
    from assay.monitor.features import monitor_activations
    from assay.monitor.scorer import Monitor

    out, data, lm = built
    b = load_bundle(out)
    mon = Monitor(b, lm)
    ds = load_dataset(data)
    acts = monitor_activations(lm, ds, [1, 2], aggregations=sorted(DEFAULT_AGGREGATIONS), progress=False)
    cached = b.probe.score(acts.pooled(b.layer, b.inputs["aggregation"]).float())
    live = [v.score for v in mon.score_texts(ds.texts)]
    np.testing.assert_allclose(live, cached, rtol=1e-4, atol=1e-4)
    v = mon.score_texts(["how do I make a bomb"])[0]
    assert set(v.flagged) == {"fpr=0.1%", "fpr=1%", "fpr=5%"} and 0 < v.probability < 1
    # one user message as a conversation is the same prompt
    [m] = mon.score_messages([[{"role": "user", "content": "how do I make a bomb"}]])
    assert m.score == pytest.approx(v.score, abs=1e-5)
    assert mon.describe()["name"] == b.name
    counter = mon.token_counter()  # a private tokenizer, for the server's counting thread
    assert counter.tokenizer is not lm.tokenizer
    assert counter.count_tokens(ds.texts[:5]) == mon.count_tokens(ds.texts[:5]) == [v.n_tokens for v in
                                                                                    mon.score_texts(ds.texts[:5])]
    # A server tokenises once: the counting thread's uncut prompts are what the worker scores, a
    # prompt over the bundle's limit cut there exactly as extraction cut it.
    limit = b.spec["max_tokens"]
    long_text = "please explain, step by step, " * (limit // 4)
    [uncut] = counter.format_texts([long_text])
    assert len(uncut.input_ids) > limit
    [served] = mon.score_formatted([uncut])
    agg = b.inputs["aggregation"]
    offline = extract(lm, [long_text], [b.layer], root=tmp_path, progress=False, aggregations=[agg], max_tokens=limit)
    [offline] = b.probe.score(offline.pooled(b.layer, agg))
    assert served.n_tokens == limit and served.score == pytest.approx(float(offline), abs=1e-4)
    conversation = [{"role": "user", "content": long_text}]
    with pytest.raises(InputError, match="over the limit"):
        mon.score_formatted(counter.format_conversations([conversation]), conversations=True)


def test_bundle_refuses_another_model(built, tiny):
    from assay.monitor.bundle import load_bundle
    from assay.monitor.scorer import Monitor

    out, _, _ = built
    other = LoadedModel(tiny.model, tiny.tokenizer, tiny.name, {**tiny.fingerprint, "weights_sha256": "b" * 64})
    with pytest.raises(ConfigMismatchError, match="weights_sha256"):
        Monitor(load_bundle(out), other)


def test_bundle_load_errors(tmp_path, built):
    from assay.monitor.bundle import load_bundle, save_bundle

    with pytest.raises(InputError, match="not a monitor bundle"):
        load_bundle(tmp_path)
    (tmp_path / "bundle.json").write_text("{not json")
    with pytest.raises(ConfigMismatchError, match="unreadable"):
        load_bundle(tmp_path)
    (tmp_path / "bundle.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ConfigMismatchError, match="not a assay-monitor"):
        load_bundle(tmp_path)
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "x.txt").write_text("mine")
    out, _, _ = built
    b = load_bundle(out)
    with pytest.raises(InputError, match="not a monitor bundle"):
        save_bundle(junk, b.spec, b.probe, "card")
    assert (junk / "x.txt").read_text() == "mine"

    class DiskFull:  # a probe whose save fails half-way, as on a full disk
        def save(self, folder):
            b.probe.save(folder)
            raise OSError(28, "No space left on device")

    fresh = tmp_path / "fresh"
    with pytest.raises(OSError, match="No space"):
        save_bundle(fresh, b.spec, DiskFull(), "card")
    assert not fresh.exists() and not list(tmp_path.glob(".fresh.tmp*"))


def test_conversation_roles(tokenizer):
    """Conversations against Gemma's chat format spelled out by hand (the bundled tokenizer has no
    chat template): one user message is the prompt `format_prompts` gives, and in a longer
    conversation only the user's words are `Role.USER` (Gemma has no system turn: its text goes in a
    user turn, as template)."""
    from assay.models.chat import Role, format_conversation, format_prompts

    def spelled(*pieces):  # (text, role) pieces, each tokenised apart, as the user's words are
        ids, roles = [], []
        for text, role in pieces:
            piece = tokenizer(text, add_special_tokens=False)["input_ids"]
            ids, roles = ids + piece, roles + [int(role)] * len(piece)
        return ids, roles

    S, T, U = Role.SPECIAL, Role.TEMPLATE, Role.USER
    end = ("<end_of_turn>\n<start_of_turn>model\n", T)
    one = spelled(("<bos>", S), ("<start_of_turn>user\n", T), ("hello there", U), end)
    assert one[0][0] == tokenizer.bos_token_id and len(one[0]) == 11
    [p] = format_prompts(tokenizer, ["hello there"])
    q = format_conversation(tokenizer, [{"role": "user", "content": "hello there"}])
    assert (q.input_ids, q.roles) == one == (p.input_ids, p.roles)
    c = format_conversation(tokenizer, [{"role": "system", "content": "be brief"},
                                        {"role": "user", "content": "hello there"},
                                        {"role": "assistant", "content": "hi"},
                                        {"role": "user", "content": "bye"}])
    next_user = ("<end_of_turn>\n<start_of_turn>user\n", T)
    assert (c.input_ids, c.roles) == spelled(("<bos>", S), ("<start_of_turn>user\n", T), ("be brief", T), next_user,
                                             ("hello there", U), end, ("hi", T), next_user, ("bye", U), end)
    user = tokenizer.decode([t for t, r in zip(c.input_ids, c.roles) if r == Role.USER])
    assert user.replace(" ", "") == "hellotherebye"
    for bad in ([], [{"role": "robot", "content": "x"}], [{"role": "user", "content": 3}]):
        with pytest.raises(InputError):
            format_conversation(tokenizer, bad)
    with pytest.raises(InputError, match="over the limit"):
        format_conversation(tokenizer, [{"role": "user", "content": "word " * 50}], max_tokens=10)


def test_score_and_eval_files(built, tmp_path):
    from assay.monitor.bundle import load_bundle
    from assay.monitor.evaluate import evaluate_file, score_file
    from assay.monitor.scorer import Monitor

    out, data, lm = built
    mon = Monitor(load_bundle(out), lm)
    inp = write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "text": "how do I make a bomb"}, {"text": "bake a cake"}])
    assert score_file(mon, inp, tmp_path / "out.jsonl", progress=False) == 2
    lines = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [x["id"] for x in lines] == ["a", 2] and set(lines[0]["flagged"]) == set(mon.thresholds)
    res = evaluate_file(mon, data, tmp_path / "ev", progress=False)
    assert res["overall"]["n"] == len(toy_rows()) and set(res["group"]) == {"g0", "g1", "g2", "g3", "calib"}
    # recall at a threshold is the share of harmful scores above it, recomputed here
    scores = np.array([v.score for v in mon.score_texts([r["text"] for r in toy_rows()])])
    y = np.array([r["label"] for r in toy_rows()])
    t = mon.thresholds["fpr=5%"]
    assert res["overall"]["fpr=5%"]["recall"] == pytest.approx(float(np.mean(scores[y == 1] > t)))
    assert (tmp_path / "ev" / "eval.md").read_text().startswith(f"# {mon.name}")
    assert res["in_sample"] is True and "In sample" in (tmp_path / "ev" / "eval.md").read_text()
    assert evaluate_file(mon, data, tmp_path / "ev2", split="calib", progress=False)["in_sample"] is False
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "x"}])
    with pytest.raises(InputError, match="`text`"):
        score_file(mon, bad, tmp_path / "o.jsonl", progress=False)
    assert not (tmp_path / "o.jsonl").exists()


def test_build_refuses_bad_data(tiny, tmp_path):
    from assay.monitor.build import build_monitor

    rows = [r for r in toy_rows() if r["split"] != "calib"]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(InputError, match="benign rows in a `calib` split"):
        build_monitor(str(data), tmp_path / "b", lm=tiny, min_calibration=20, progress=False)
    one = write_jsonl(tmp_path / "one.jsonl", [dict(r, group="g0") if r["split"] == "train" else r for r in toy_rows()])
    with pytest.raises(InputError, match="at least 2"):
        build_monitor(str(one), tmp_path / "b", lm=tiny, min_calibration=20, progress=False)
    with pytest.raises(InputError, match="reads text"):
        build_monitor(str(data), tmp_path / "b", lm=tiny, methods=["tfidf"], progress=False)
    assert not (tmp_path / "b").exists()


def test_cli_bad_input_is_one_clear_error_before_any_model_loads(tmp_path, monkeypatch, built):
    from typer.testing import CliRunner

    from assay.cli import app
    from assay.errors import AssayError

    def refuse(*a, **k):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr("assay.models.load", refuse)
    write_jsonl(tmp_path / "in.jsonl", [{"text": "hello there", "label": 0}, {"text": "make a bomb", "label": 1}])
    cases = [
        (["monitor", "score", "{tmp}", "--input", "{tmp}/none.jsonl", "--out", "{tmp}/o.jsonl"], "no such file"),
        (["monitor", "score", "{tmp}", "--input", "{tmp}/in.jsonl", "--out", "{tmp}/o.jsonl"], "is not a monitor bundle"),
        (["monitor", "eval", "{tmp}", "--data", "{tmp}/in.jsonl", "--out", "{tmp}/ev"], "is not a monitor bundle"),
        (["monitor", "eval", "{tmp}", "--data", "{tmp}/in.jsonl", "--split", "ood", "--out", "{tmp}/ev"], "no split 'ood'"),
        (["monitor", "serve", "{tmp}/nothing"], "is not a monitor bundle"),
        (["monitor", "build", "--data", "{tmp}/in.jsonl", "--out", "{tmp}/b", "--default-fpr", "0.02"],
         "not one of the calibrated fprs"),
        (["monitor", "build", "--data", "{tmp}/in.jsonl", "--out", "{tmp}/b", "--method", "nope"], "unknown method"),
        (["monitor", "build", "--data", "{tmp}/in.jsonl", "--out", "{tmp}/b"], "benign rows in a `calib` split"),
        (["monitor", "build", "--data", "{tmp}/in.jsonl", "--out", "{tmp}/b", "--token-pooling", "rmax"],
         "token pooling 'rmax'"),
        (["monitor", "calibrate", "{tmp}", "--benign", "{tmp}/none.jsonl", "--out", "{tmp}/b"], "no such file"),
        (["monitor", "calibrate", "{tmp}", "--benign", "{tmp}/in.jsonl", "--out", "{tmp}/b", "--min-benign", "1"],
         "is not a monitor bundle"),
    ]
    for args, message in cases:
        res = CliRunner().invoke(app, [a.format(tmp=tmp_path) for a in args], env={"COLUMNS": "400", "NO_COLOR": "1"})
        assert res.exit_code != 0, args
        assert isinstance(res.exception, AssayError), (args, repr(res.exception))
        assert message in str(res.exception).lower(), (args, str(res.exception))
    assert not (tmp_path / "o.jsonl").exists() and not (tmp_path / "b").exists()
    bundle = built[0]
    res = CliRunner().invoke(app, ["monitor", "serve", str(bundle), "--threshold", "fpr=2%"],
                             env={"COLUMNS": "400", "NO_COLOR": "1"})
    assert res.exit_code == 2 and "unknown threshold 'fpr=2%'" in res.output, res.output
    res = CliRunner().invoke(app, ["monitor", "serve", str(bundle)],
                             env={"COLUMNS": "400", "NO_COLOR": "1", "ASSAY_MONITOR_KEY": "has space"})
    assert res.exit_code == 2 and "printable ASCII" in res.output, res.output
    res = CliRunner().invoke(app, ["monitor", "calibrate", str(bundle), "--benign", str(tmp_path / "in.jsonl"),
                                   "--out", str(tmp_path / "b")], env={"COLUMNS": "400", "NO_COLOR": "1"})
    assert res.exit_code == 2 and "need at least 100" in res.output, res.output
    res = CliRunner().invoke(app, ["monitor", "serve", str(tmp_path), "--generate", "--workers", "2"],
                             env={"COLUMNS": "400", "NO_COLOR": "1"})
    assert res.exit_code == 2 and "one scoring thread" in res.output, res.output


def test_batches_bound_padding():
    from assay.activations.batching import token_budget_batches

    assert token_budget_batches([0, 1, 2, 3], [100, 90, 20, 18], 10_000) == [[0, 1, 2, 3]]
    assert token_budget_batches([0, 1, 2, 3], [100, 90, 20, 18], 10_000, max_padding=0.25) == [[0, 1], [2, 3]]
    assert token_budget_batches([0, 1], [100, 90], 150, max_padding=0.25) == [[0], [1]]


def test_monitor_load_uses_the_bundles_dtype_and_warns_where_it_is_slow(built, monkeypatch, caplog):
    from assay.monitor.scorer import Monitor

    out, _, lm = built
    asked = {}

    def fake_load(name, dtype=None, device=None):
        asked.update(name=name, dtype=dtype)
        return lm

    monkeypatch.setattr("assay.models.load", fake_load)
    monkeypatch.setattr("assay.runtime.choose_dtype", lambda requested, device=None: ("bfloat16", {"fake": True}))
    with caplog.at_level("WARNING", logger="assay.monitor.scorer"):
        mon = Monitor.load(str(out))
    assert asked == {"name": "tiny-gemma3", "dtype": "float32"} and mon.max_tokens == 4096
    assert "runs slowly" in caplog.text and "--dtype bfloat16" in caplog.text


def test_mix_pools():
    from assay.monitor.build import mix_pools

    rows = [ex(label=1, split="train", cluster="h1"), ex(source="sharegpt", label=0, split="val", cluster="b1"),
            ex(label=1, split="ood", cluster="h2"), ex(source="sharegpt", label=0, split="ood", cluster="b2"),
            ex(source="sharegpt", label=0, split="calib", cluster="b3")]
    pools = mix_pools(Dataset(rows), ["all", "id"])
    assert pools["all"].tolist() == [0, 1, 2, 3] and pools["id"].tolist() == [0, 1]
    one_class_id = [dict(r.to_row(), label=1) if r.split == "val" else r.to_row() for r in rows]
    assert list(mix_pools(Dataset([Example(**r) for r in one_class_id]), ["all", "id"])) == ["all"]
    with pytest.raises(InputError, match="unknown data mix"):
        from assay.monitor.build import build_monitor

        build_monitor("x.jsonl", "out", mixes=["weird"], progress=False)


@pytest.mark.parametrize("method", ["attention", "located-logistic", "token-logistic"])
def test_token_level_bundle_scores_tokens_like_its_cache(tiny, tmp_path, method):
    """The token-level path: a probe's live score equals its score on the cached tokens, and each
    real token gets a score and its token string (a located probe's token scores are each token's
    share of the score: they sum to it, less the head's intercept)."""
    from assay.data import load_dataset
    from assay.monitor.build import build_monitor
    from assay.monitor.bundle import load_bundle
    from assay.monitor.features import monitor_activations
    from assay.monitor.scorer import Monitor
    from assay.probes.inputs import token_inputs

    data = write_jsonl(tmp_path / "data.jsonl", toy_rows())
    out = build_monitor(str(data), tmp_path / "bundle", lm=tiny, layers=[2], methods=[method],
                        token_poolings=["rmax10"], min_calibration=20, inner_k=2, progress=False)
    b = load_bundle(out)
    assert b.inputs["reads"] == "tokens"
    ds = load_dataset(data)
    acts = monitor_activations(tiny, ds, [2], tokens=True, progress=False)
    X, M = token_inputs(acts, 2, b.inputs["max_tokens"])
    mon = Monitor(b, tiny)
    verdicts = mon.score_texts(ds.texts[:6])
    np.testing.assert_allclose([v.score for v in verdicts], b.probe.score(X[:6], M[:6]), rtol=1e-4, atol=1e-4)
    for v, m in zip(verdicts, M[:6]):
        assert len(v.token_scores) == len(v.tokens) == int(m.sum())
        if method == "located-logistic":
            assert sum(v.token_scores) + b.probe.head.intercept == pytest.approx(v.score, abs=1e-4)


def test_residual_stream_keeps_each_threads_hooks_apart(tiny):
    """Two scoring threads share one model: thread A is held inside its forward (its hooks on the
    model) while thread B runs a whole forward. Without per-thread hooks, A's hook on the deepest
    block fires in B's forward, takes B's tensor and stops B before B's own hook runs."""
    import threading

    import torch

    from assay.activations.forward import residual_stream

    ids_a, ids_b = torch.randint(5, 200, (2, 7)), torch.randint(5, 200, (3, 5))
    mask_a, mask_b = torch.ones_like(ids_a), torch.ones_like(ids_b)
    want_a = residual_stream(tiny, ids_a, mask_a, [1, 2])
    want_b = residual_stream(tiny, ids_b, mask_b, [1, 2])
    a_inside, b_done, got = threading.Event(), threading.Event(), {}

    def hold(_module, _args):
        if threading.current_thread().name == "A":
            a_inside.set()
            assert b_done.wait(30)

    gate = tiny.block(0).register_forward_pre_hook(hold)
    try:
        a = threading.Thread(target=lambda: got.__setitem__("a", residual_stream(tiny, ids_a, mask_a, [1, 2])),
                             name="A")
        a.start()
        assert a_inside.wait(30)
        got["b"] = residual_stream(tiny, ids_b, mask_b, [1, 2])
        b_done.set()
        a.join(30)
    finally:
        gate.remove()
    for key, want in (("a", want_a), ("b", want_b)):
        assert set(got[key]) == {1, 2}
        for layer in (1, 2):
            torch.testing.assert_close(got[key][layer], want[layer])


def test_two_scoring_workers_serve_the_offline_scores(built):
    """The server's default on a CPU: two workers, each with a replica (own tokenizer, same weights)."""
    from fastapi.testclient import TestClient

    from assay.data import load_dataset
    from assay.monitor.bundle import load_bundle
    from assay.monitor.scorer import Monitor
    from assay.monitor.server import create_app

    out, data, lm = built
    mon = Monitor(load_bundle(out), lm)
    twin = mon.replica()
    assert twin.lm.tokenizer is not mon.lm.tokenizer and twin.lm.model is mon.lm.model
    texts = load_dataset(data).texts[:24]
    offline = [v.score for v in mon.score_texts(texts)]
    app = create_app(mon, workers=2, max_wait_ms=0)
    assert app.state.batcher.workers == 2
    with TestClient(app, base_url="http://localhost") as client:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(8) as pool:
            replies = list(pool.map(lambda t: client.post("/v1/moderations", json={"input": t}), texts))
        # a conversation over the bundle's limit is refused on its own (413), found when it is
        # tokenised, before it can fail a batch it shares with others
        too_long = [{"role": "user", "content": "word " * (2 * mon.token_limit)}]
        refused = client.post("/v1/score", json={"messages": too_long})
    assert all(r.status_code == 200 for r in replies)
    served = [r.json()["results"][0]["assay"]["score"] for r in replies]
    np.testing.assert_allclose(served, offline, rtol=1e-4, atol=1e-4)
    assert refused.status_code == 413 and refused.json()["error"]["code"] == "too_many_tokens", refused.text
    assert f"limit of {mon.token_limit} tokens" in refused.json()["error"]["message"]


def test_scoring_workers_options(built):
    from assay.monitor.bundle import load_bundle
    from assay.monitor.scorer import Monitor
    from assay.monitor.server import create_app, default_workers

    out, _, lm = built
    mon = Monitor(load_bundle(out), lm)
    with pytest.raises(ValueError, match="workers must be at least 1"):
        create_app(mon, workers=0)

    class Gen:  # enough of a generator for create_app's checks
        threshold, max_new_tokens, model_name, context_length = "fpr=1%", 8, "m", None

    with pytest.raises(ValueError, match="share one thread"):
        create_app(mon, workers=2, generator=Gen())
    assert default_workers("cuda", False) == 1 and default_workers("cpu", True) == 1


def test_interrupted_selection_resumes_from_its_last_held_out_collection(built, tmp_path, monkeypatch):
    """A build killed during the third held-out collection refits only the collections not yet
    finished on the rerun, and ships what an uninterrupted build ships."""
    import assay.monitor.select as select
    from assay.monitor.build import build_monitor, selection_dir
    from assay.monitor.bundle import load_bundle

    first, data, lm = built
    monkeypatch.setenv("ASSAY_CACHE", str(tmp_path / "cache"))  # a selection folder of its own
    real_inner = select.inner_scores
    calls = {"n": 0}

    def dies_on_third(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_inner(*a, **k)

    monkeypatch.setattr(select, "inner_scores", dies_on_third)
    monkeypatch.setattr("assay.monitor.build.selection_workers", lambda *a: 1)  # one collection at a time
    opts = dict(lm=lm, layers=[1, 2], min_calibration=20, inner_k=2, progress=False)
    with pytest.raises(KeyboardInterrupt):
        build_monitor(str(data), tmp_path / "bundle", **opts)
    assert not (tmp_path / "bundle").exists()
    [ckpt] = selection_dir().iterdir()
    assert len(json.loads(ckpt.read_text())["folds"]) == 2

    calls["n"] = 100  # no more interruptions; count the inner selections the rerun makes
    out = build_monitor(str(data), tmp_path / "bundle", **opts)
    assert calls["n"] - 100 == 2  # 4 collections, 2 resumed
    # the finished selection stays: the same build again fits no held-out collection
    calls["n"] = 200
    again = build_monitor(str(data), tmp_path / "bundle-again", **opts)
    assert calls["n"] == 200 and len(json.loads(ckpt.read_text())["folds"]) == 4
    assert load_bundle(again).spec["card"]["selection"] == load_bundle(out).spec["card"]["selection"]
    want, got = load_bundle(first).spec["card"]["selection"], load_bundle(out).spec["card"]["selection"]
    assert got["chosen"] == want["chosen"] and got["mean_auroc"] == pytest.approx(want["mean_auroc"])
    for c in want["nested"]:
        assert got["nested"][c]["chosen"] == want["nested"][c]["chosen"]
        assert got["nested"][c]["auroc"] == pytest.approx(want["nested"][c]["auroc"])


def _same_selection(got: dict, want: dict) -> None:
    assert got["chosen"] == want["chosen"] and set(got["nested"]) == set(want["nested"])
    assert got["mean_auroc"] == pytest.approx(want["mean_auroc"], abs=1e-9)
    for c in want["nested"]:
        assert got["nested"][c]["chosen"] == want["nested"][c]["chosen"]
        assert got["nested"][c]["auroc"] == pytest.approx(want["nested"][c]["auroc"], abs=1e-9)


def test_selection_on_two_threads_is_the_sequential_one(built, tmp_path, monkeypatch):
    """Held-out collections fitted two at a time (one thread each) give the selection and the
    nested card of one at a time; a worker that fails stops the others and the build, and the
    rerun resumes from what finished."""
    import threading

    import assay.monitor.build as build
    import assay.monitor.select as select
    from assay.monitor.bundle import load_bundle
    from assay.runtime import threads_per_worker

    first, data, lm = built
    opts = dict(lm=lm, layers=[1, 2], min_calibration=20, inner_k=2, progress=False)
    monkeypatch.setattr(build, "selection_workers", lambda *a: 2)
    monkeypatch.setenv("ASSAY_CACHE", str(tmp_path / "cache"))
    set_in = []  # torch's thread count is per thread: each worker sets its own share of the cores
    monkeypatch.setattr("assay.runtime.set_torch_threads", lambda n: set_in.append((n, threading.current_thread())))
    want = load_bundle(first).spec["card"]["selection"]
    _same_selection(load_bundle(build.build_monitor(str(data), tmp_path / "two", **opts)).spec["card"]["selection"],
                    want)
    assert len(set_in) == 2 and {n for n, _ in set_in} == {threads_per_worker(2)}
    assert threading.main_thread() not in {t for _, t in set_in}

    monkeypatch.setenv("ASSAY_CACHE", str(tmp_path / "cache-killed"))
    real_inner, real_auroc, calls = select.inner_scores, select.auroc, {"n": 0, "fits after": 0}

    def dies_on_third(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_inner(*a, **k)

    def auroc(*a, **k):  # one per inner fit
        calls["fits after"] += calls["n"] >= 3
        return real_auroc(*a, **k)

    monkeypatch.setattr(select, "inner_scores", dies_on_third)
    monkeypatch.setattr(select, "auroc", auroc)
    with pytest.raises(KeyboardInterrupt):
        build.build_monitor(str(data), tmp_path / "killed", **opts)
    assert not (tmp_path / "killed").exists()
    assert calls["fits after"] <= 2  # the other worker stopped within a fit or two, not at the end of its collection
    [ckpt] = build.selection_dir().iterdir()
    assert len(json.loads(ckpt.read_text())["folds"]) <= 2
    calls["n"] = 100
    _same_selection(load_bundle(build.build_monitor(str(data), tmp_path / "killed", **opts)).spec["card"]["selection"],
                    want)


def test_recalibrating_on_your_own_benign_traffic_sets_thresholds_there(built, tmp_path):
    """`recalibrate` puts each threshold where it flags its target share of the deployer's benign
    prompts, records what it replaced and the FPR the old thresholds reached there, and the bundle
    it writes loads, scores the same and says so in its card."""
    from assay.monitor.bundle import load_bundle
    from assay.monitor.calibrate import recalibrate
    from assay.monitor.scorer import Monitor

    out, _, lm = built
    rng = np.random.default_rng(3)
    benign = write_jsonl(tmp_path / "benign.jsonl", [{"text": " ".join(rng.choice(WORDS, 6)) + " cake"}
                                                      for _ in range(200)])
    mon = Monitor(load_bundle(out), lm)
    new = recalibrate(mon, benign, tmp_path / "recal", progress=False)
    b = load_bundle(new)
    scores = np.array([v.score for v in Monitor(b, lm).score_texts([json.loads(x)["text"] for x in
                                                                    benign.read_text().splitlines()])])
    for name, t in b.thresholds.items():
        target = b.spec["thresholds"][name]["target_fpr"]
        assert np.mean(scores > t) <= target + 1e-9
    cal = b.spec["calibration"]
    assert cal["split"] is None and cal["n_benign"] == 200 and cal["replaced"]["thresholds"] == load_bundle(out).spec["thresholds"]
    old_t = load_bundle(out).thresholds["fpr=1%"]
    assert cal["fpr_of_replaced_thresholds"]["fpr=1%"] == pytest.approx(np.mean(scores > old_t))
    card = (new / "card.md").read_text()
    assert "## Recalibrated" in card and "200 benign prompts" in card
    with pytest.raises(InputError, match="at least 100"):
        recalibrate(mon, write_jsonl(tmp_path / "few.jsonl", [{"text": "a cake"}] * 5), tmp_path / "x", progress=False)


def test_packed_tokens_hold_what_the_padded_tokens_hold(tiny, tmp_path):
    """The token-level candidates' packed input is the attention probes' padded input without the
    padding: the same last-N real tokens of every prompt, and a fixed sample drawn from them."""
    import torch

    from assay.data import load_dataset
    from assay.monitor.features import monitor_activations
    from assay.probes.inputs import PackedTokens, token_inputs

    data = write_jsonl(tmp_path / "data.jsonl", toy_rows(n_per_group=6, n_calib=4))
    ds = load_dataset(data)
    acts = monitor_activations(tiny, ds, [2], tokens=True, progress=False)
    X, M = token_inputs(acts, 2, 5)
    packed = PackedTokens.read(acts, 2, 5)
    Xp, Mp, Cp = packed.padded(range(len(ds)))
    assert torch.equal(Mp, M) and torch.equal(Xp, X) and torch.equal(Cp, M)  # no spans: every real token
    Xs, Ms, Cs = packed.sample(3, seed=0)
    for i in range(len(ds)):
        rows = Xs[i][Ms[i]]
        assert len(rows) == min(3, int(M[i].sum()))
        assert all(any(torch.equal(r, x) for x in X[i][M[i]]) for r in rows)
