"""Auto-interpretability: a planted dictionary with known answers, the weighting formula, the LM and
endpoint paths, and the command's errors."""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
import pytest
import torch

from assay.autointerp.explainers import ChatExplainer, HFExplainer, TokensExplainer
from assay.autointerp.records import collect_records, firing_frequency, render
from assay.autointerp.run import (CHANCE_MARGIN, autointerp, choose_latents, derangement, frequency_draws,
                                  unstructured_acts)
from assay.autointerp.scorers import LMScorer, RuleScorer, score_latent
from assay.autointerp.summary import frequency_bins, frequency_weighted_mean, means_with_ci, sampled_means
from assay.errors import AssayError, InputError

VOCAB = np.arange(1000, 1040)  # 40 token ids: a planted token shows up in about half of all 32-token windows
N_PLANTED = 8


def planted(n_docs: int = 200, length: int = 64, dense: bool = True, seed: int = 0):
    """Random documents; latent j < N_PLANTED fires (1..2) exactly on token VOCAB[j]; then a dense
    latent firing on every token with activation unrelated to the token; then a dead latent."""
    rng = np.random.default_rng(seed)
    token_ids, acts = [], []
    for _ in range(n_docs):
        ids = rng.choice(VOCAB, size=length)
        a = np.zeros((length, N_PLANTED + 2), np.float32)
        for j in range(N_PLANTED):
            hit = ids == VOCAB[j]
            a[hit, j] = 1 + rng.random(hit.sum())
        if dense:
            a[:, N_PLANTED] = rng.uniform(0.01, 1.0, size=length)
        token_ids.append(torch.as_tensor(ids))
        acts.append(torch.as_tensor(a))
    return token_ids, acts


def decode(ids: list[int]) -> str:
    return "".join(f" w{i}" for i in ids)


def scores(summary, run="real", test="detection"):
    return summary["runs"][run][test]


def test_frequency_weighted_mean_by_hand():
    # (0.01*1 + 0.1*0.5 + 0.89*0) / (0.01 + 0.1 + 0.89) = 0.06; a NaN (unscored) latent carries no weight
    assert frequency_weighted_mean([1.0, 0.5, 0.0, np.nan], [0.01, 0.1, 0.89, 0.5]) == pytest.approx(0.06)
    assert np.isnan(frequency_weighted_mean([np.nan], [0.3]))
    m = means_with_ci([1.0, 0.5, 0.0], [0.01, 0.1, 0.89], n_boot=500)
    assert m["uniform"] == pytest.approx(0.5) and m["weighted"] == pytest.approx(0.06) and m["n_scored"] == 3
    assert m["uniform_ci"][0] <= 0.5 <= m["uniform_ci"][1] and m["weighted_ci"][0] <= 0.06 <= m["weighted_ci"][1]
    bins = frequency_bins([1.0, 0.0, 0.5], [2e-4, 0.5, 0.6])
    assert [b["n"] for b in bins if b["n"]] == [1, 2] and bins[-1]["mean"] == pytest.approx(0.25)


def test_latent_choice_and_derangement():
    f = np.array([0.0, 0.1, 0.2, 0.0, 0.3])
    chosen = choose_latents(f, 10, given=[3], seed=0)
    assert chosen == {3: "given", 1: "random", 2: "random", 4: "random"}  # dead given kept, random only live
    with pytest.raises(InputError, match="out of range"):
        choose_latents(f, 1, given=[5])
    p = derangement(7, np.random.default_rng(0))
    assert sorted(p) == list(range(7)) and not (p == np.arange(7)).any()


def test_records_hold_out_windows_across_quantiles():
    token_ids, acts = planted(dense=False)
    freq = firing_frequency(token_ids, acts)
    assert freq[0] == pytest.approx(np.mean([(t == VOCAB[0]).float().mean() for t in token_ids]))
    (rec,) = collect_records(token_ids, acts, {0: "given"}, freq, n_quantiles=10, per_quantile=2)
    seen = {(w.doc, w.start) for w in rec.explain}
    assert len(rec.explain) == 20 and len(rec.activating) == 20 == len(rec.non_activating)
    assert not seen & {(w.doc, w.start) for w in rec.activating}
    assert sorted({w.quantile for w in rec.activating}) == list(range(10))
    assert all(w.max_act == 0 for w in rec.non_activating)
    assert min(w.max_act for w in rec.explain) >= max(w.max_act for w in rec.activating)
    assert render([1000, 1001, 1002], decode, marked=[1, 2]) == " w1000<< w1001 w1002>>"


def test_windows_have_one_length_and_short_documents_count():
    # documents of 5..70 tokens: windows run across document boundaries, every one exactly ctx_len
    rng = np.random.default_rng(0)
    token_ids = [torch.as_tensor(rng.choice(VOCAB, size=int(n))) for n in rng.integers(5, 70, size=60)]
    acts = [torch.as_tensor((t == VOCAB[0]).float()[:, None].numpy()) for t in token_ids]
    (rec,) = collect_records(token_ids, acts, {0: "given"}, firing_frequency(token_ids, acts), ctx_len=16)
    windows = rec.explain + rec.activating + rec.non_activating
    assert windows and {len(w.tokens) for w in windows} == {16} and {len(w.acts) for w in windows} == {16}
    assert all((np.asarray(w.tokens) == VOCAB[0]).any() for w in rec.explain + rec.activating)


def test_known_answer_planted_tokens_and_dense_latent(tmp_path):
    token_ids, acts = planted()
    given = list(range(N_PLANTED)) + [N_PLANTED + 1]  # the planted latents and the dead one
    common = dict(explainer=TokensExplainer(decode), scorer=RuleScorer(), n_random=0, seed=0)
    clean = autointerp(token_ids, acts, latent_ids=given, **common)
    with_dense = autointerp(token_ids, acts, latent_ids=given + [N_PLANTED], out_dir=tmp_path, **common)

    # every planted latent is explained by its token and detected perfectly
    for test in ("detection", "fuzzing"):
        assert scores(clean, test=test)["uniform"] > 0.95 and scores(clean, test=test)["n_scored"] == N_PLANTED
    assert clean["runs"]["real"]["status"] == {"scored": N_PLANTED, "never fires": 1}  # counted, not dropped
    rows = [json.loads(line) for line in (tmp_path / "scores.jsonl").read_text().splitlines()]
    assert rows[0]["explanation"] == 'fires on " w1000"' and rows[0]["detection"] > 0.9
    # another latent's explanation is worth chance
    assert 0.4 <= scores(clean, "shuffled")["uniform"] <= 0.6
    assert scores(clean, "shuffled", "fuzzing")["uniform"] <= 0.6

    # the dense latent fires on every token: with no silent window its detection fails (0.5), and it
    # carries most of the weight, sinking the frequency-weighted score while moving the uniform mean
    # by about 1/9 of its shortfall
    dense_row = next(r for r in rows if r["latent"] == N_PLANTED)
    assert dense_row["frequency"] == 1.0 and dense_row["n_non_activating"] == 0 and dense_row["detection"] == 0.5
    assert dense_row["status"].startswith("fires in every window")
    before, after = scores(clean), scores(with_dense)
    assert before["weighted"] - after["weighted"] > 0.25
    assert before["uniform"] - after["uniform"] < 0.08
    assert after["uniform"] - after["weighted"] > 0.25
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["settings"]["explainer"] == "tokens" and "git" in json.dumps(summary)
    assert (tmp_path / "autointerp.png").stat().st_size > 1000


def zipf_corpus(n_docs: int = 400, seed: int = 0):
    """Documents of 4..120 tokens (short prompts among long ones) over a Zipfian vocabulary of 300
    tokens; 40 latents each fire on one of the ranks 5..44 (a planted dictionary)."""
    rng = np.random.default_rng(seed)
    vocab = np.arange(2000, 2300)
    p = 1 / np.arange(1, 301)
    token_ids, acts = [], []
    for n in rng.integers(4, 121, size=n_docs):
        ids = rng.choice(vocab, size=int(n), p=p / p.sum())
        a = np.stack([(ids == vocab[5 + j]) * (1 + rng.random(int(n))) for j in range(40)], 1).astype(np.float32)
        token_ids.append(torch.as_tensor(ids))
        acts.append(torch.as_tensor(a))
    return token_ids, acts


def test_chance_controls_sit_at_chance():
    """The pinned controls: shuffled explanations and token-blind latents (0.005 to 0.8 of tokens)
    score 0.5 within CHANCE_MARGIN on documents of mixed length, while the planted latents they
    control score near 1. (Scored with windows of every length and a count, the unstructured latents
    scored ~0.9: the longest windows held both the firings and the most explanation tokens.)"""
    token_ids, acts = zipf_corpus()
    s = autointerp(token_ids, acts, TokensExplainer(decode), RuleScorer(), n_random=40, seed=0, ctx_len=16)
    assert scores(s)["uniform"] > 0.9 and scores(s)["weighted"] > 0.9
    c = s["controls"]
    assert c["margin"] == CHANCE_MARGIN and set(c["values"]) == {
        "shuffled_uniform", "shuffled_weighted", "unstructured_uniform", "unstructured_with_negatives"}
    for name, v in c["values"].items():
        assert abs(v - 0.5) <= CHANCE_MARGIN, (name, v)
    assert c["at_chance"] and not c["off_chance"]
    by_rate = s["runs"]["unstructured"]["by_rate"]
    assert [r["rate"] for r in by_rate] == [0.005, 0.02, 0.05, 0.1, 0.3, 0.8]
    assert all(abs(r["detection"] - 0.5) <= 0.1 for r in by_rate)


def test_unstructured_latents_fire_at_their_rate_whatever_the_token():
    token_ids, _ = zipf_corpus(n_docs=200)
    rates = [0.005, 0.1, 0.8]
    acts = unstructured_acts(token_ids, rates, seed=0)
    f = firing_frequency(token_ids, acts)
    np.testing.assert_allclose(f, rates, rtol=0.15)
    assert torch.equal(acts(3), acts(3))  # the same activations on a second pass
    x = torch.cat([acts(i) for i in range(len(token_ids))])[:, 1] > 0
    t = torch.cat(token_ids)
    common = t == t.mode().values  # the commonest token: fires on it at the same rate as elsewhere
    assert abs(float(x[common].float().mean()) - float(x[~common].float().mean())) < 0.03


def test_frequency_proportional_sample_estimates_the_weighted_mean():
    rng = np.random.default_rng(0)
    f = np.concatenate([rng.uniform(1e-4, 1e-2, 500), [0.7, 0.5]])  # two dense latents hold most weight
    score = np.concatenate([rng.uniform(0.7, 1.0, 500), [0.5, 0.5]])
    truth = frequency_weighted_mean(score, f)
    draws = frequency_draws(f, 400, seed=1)
    assert sum(draws.values()) == 400 and set(draws) <= set(range(len(f)))
    per_draw = np.repeat([score[j] for j in draws], list(draws.values()))
    uniform = score[rng.choice(len(f), 100, replace=False)]
    est, reps = sampled_means(uniform, per_draw, n_boot=500)
    assert est["weighted_ci"][0] <= truth <= est["weighted_ci"][1] and abs(est["weighted"] - truth) < 0.03
    assert est["uniform_ci"][0] <= score.mean() <= est["uniform_ci"][1] and len(reps["weighted"]) == 500
    assert frequency_draws(np.zeros(4), 10) == {}


def test_random_control_and_rerun_reuses_scored_latents(tmp_path):
    token_ids, acts = planted(n_docs=80, dense=False)
    rng = np.random.default_rng(1)
    control = [torch.relu(torch.as_tensor(rng.normal(size=(len(t), 6)), dtype=torch.float32)) for t in token_ids]
    for c in control:
        c[:, 5] = 0  # a latent of the random dictionary that never fires
    explainer = TokensExplainer(decode)
    calls = []
    explain = explainer.explain
    explainer.explain = lambda rec: calls.append(rec.latent) or explain(rec)
    kw = dict(n_random=4, control_acts=control, out_dir=tmp_path, fingerprint="planted-80", seed=3)
    first = autointerp(token_ids, acts, explainer, RuleScorer(), **kw)
    assert first["dictionaries"]["random_sae"]["dead"] == 1
    assert first["runs"]["random_sae"]["n_latents"] == 4  # as many as the real run, live ones only
    assert abs(scores(first, "random_sae")["uniform"] - 0.5) < 0.25  # token-blind latents: near chance
    n = len(calls)
    # a finished run comes back as it was written, without reading a document's activations
    class Untouchable(list):
        def __getitem__(self, i):
            raise AssertionError("a finished run read the activations again")

        __iter__ = __getitem__

    finished = autointerp(token_ids, Untouchable(acts), explainer, RuleScorer(), **kw)
    assert len(calls) == n and finished == json.loads((tmp_path / "summary.json").read_text())
    assert finished["runs"] == json.loads(json.dumps(first["runs"]))
    # an interrupted one (no summary yet) reuses the latents it scored
    (tmp_path / "summary.json").unlink()
    second = autointerp(token_ids, acts, explainer, RuleScorer(), **kw)
    assert len(calls) == n and second["runs"] == first["runs"]
    # other settings are another run: nothing of the first is reused
    autointerp(token_ids, acts, explainer, RuleScorer(), **(kw | {"seed": 4}))
    assert len(calls) > n


def test_rule_scorer_refuses_free_text_explanations():
    from assay.autointerp.explainers import Explanation

    token_ids, acts = planted(n_docs=40, dense=False)
    (rec,) = collect_records(token_ids, acts, {0: "given"}, firing_frequency(token_ids, acts))
    with pytest.raises(InputError, match="tokens"):
        score_latent(RuleScorer(), Explanation("fires on bread"), rec, np.random.default_rng(0))


def test_hf_explainer_and_lm_scorer_run_on_tiny_model(tiny):
    token_ids, acts = planted(n_docs=40, dense=False)
    (rec,) = collect_records(token_ids, acts, {0: "given"}, firing_frequency(token_ids, acts),
                             n_explain=4, n_quantiles=2, per_quantile=2)
    e = HFExplainer(tiny, max_new_tokens=5, n_windows=2).explain(rec)
    assert isinstance(e.text, str) and e.text
    scorer = LMScorer(tiny, batch_size=3)
    s = score_latent(scorer, e, rec, np.random.default_rng(0))
    assert all(0 <= v <= 1 for v in s.values())
    from assay.autointerp.scorers import detection_samples

    samples = detection_samples(rec)
    p = scorer.probabilities(e, samples, "detection")
    assert p.shape == (len(samples),) and ((p >= 0) & (p <= 1)).all()
    # left padding must not change an answer: batched equals one prompt at a time
    one = LMScorer(tiny, batch_size=1).probabilities(e, samples[:3], "detection")
    np.testing.assert_allclose(p[:3], one, atol=1e-4)


def test_autointerp_sae_end_to_end_on_tiny_model(tiny, tmp_path):
    from conftest import PROMPTS

    from assay.autointerp import autointerp_sae
    from assay.sae.base import build_sae

    sae = build_sae("topk", d_in=tiny.d_model, d_sae=48, k=4).eval()
    sae.metadata = {"input_scale": 0.5}
    s = autointerp_sae(sae, tiny, 2, PROMPTS * 3, n_random=4, latent_ids=[0], out_dir=tmp_path / "out",
                       activations_root=tmp_path, progress=False, ctx_len=8, n_explain=3, n_quantiles=2)
    # the given latent, 4 drawn uniformly, and those of 4 frequency-proportional draws not already in
    assert 5 <= s["runs"]["real"]["n_latents"] <= 9 and 4 <= s["runs"]["random_sae"]["n_latents"] <= 8
    # the random SAE is set to the trained one's frequency profile: the same L0 and dead count
    real, rnd = s["dictionaries"]["real"], s["dictionaries"]["random_sae"]
    assert real["l0"] == pytest.approx(4) and rnd["l0"] == pytest.approx(4, rel=0.1)
    assert rnd["dead"] == real["dead"]
    assert set(s["controls"]["values"]) >= {"shuffled_uniform", "unstructured_uniform"}
    assert s["model"] == "tiny-gemma3" and (tmp_path / "out" / "summary.json").exists()


class _Stub(BaseHTTPRequestHandler):
    seen: list = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Stub.seen.append((self.path, self.headers.get("Authorization"), body))
        if body["model"] == "broken":
            self.send_response(500)
            self.end_headers()
            return
        reply = json.dumps({"choices": [{"message": {"role": "assistant", "content": "  the word w1000\nmore"}}]})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(reply.encode())

    def log_message(self, *args):
        pass


def test_chat_explainer_against_a_local_stub(monkeypatch):
    server = HTTPServer(("127.0.0.1", 0), _Stub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/v1"
    token_ids, acts = planted(n_docs=40, dense=False)
    (rec,) = collect_records(token_ids, acts, {0: "given"}, firing_frequency(token_ids, acts))
    monkeypatch.setenv("ASSAY_EXPLAINER_API_KEY", "sk-test")
    try:
        e = ChatExplainer(url, "stub-model", decode).explain(rec)
        assert e.text == "the word w1000"
        path, auth, body = _Stub.seen[-1]
        assert path == "/v1/chat/completions" and auth == "Bearer sk-test" and body["model"] == "stub-model"
        assert "<< w1000>>" in body["messages"][-1]["content"]
        with pytest.raises(AssayError, match="HTTP 500"):
            ChatExplainer(url, "broken", decode).explain(rec)
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(AssayError, match="unreachable"):
        ChatExplainer(url, "stub-model", decode, timeout=2).explain(rec)
    with pytest.raises(InputError, match="--explainer-model"):
        ChatExplainer(url, "", decode)


def _assay(capsys, monkeypatch, *args: str) -> tuple[int, str]:
    """Run `assay autointerp ARGS` in this process through the real entry point (exit code, stderr)."""
    import assay.cli

    monkeypatch.setattr(sys, "argv", ["assay", "autointerp", *args])
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as stop:
        assay.cli.main()
    return stop.value.code, capsys.readouterr().err


@pytest.fixture(scope="module")
def small_sae_dir(tmp_path_factory):
    from assay.sae.base import build_sae
    from assay.sae.io import save_sae

    d = tmp_path_factory.mktemp("sae")
    save_sae(build_sae("topk", d_in=640, d_sae=64, k=4), d,
             {"model_name": "gemma-3-270m", "hook_name": "blocks.9.hook_resid_post", "assay_layer": 9})
    return d


@pytest.mark.parametrize("args,code,message", [
    (["/nonexistent/sae"], 2, "not a directory"),
    (["{empty}"], 2, "no cfg.json"),
    (["{sae}", "--explainer", "gpt4"], 1, "--explainer 'gpt4' is not understood"),
    (["{sae}", "--scorer", "tokens"], 1, "a scorer is 'rule' or 'hf:MODEL'"),
    (["{sae}", "--latent-ids", "3,x"], 2, "comma-separated list of integers"),
    (["{sae}", "--latent-ids", "3,64"], 1, "--latent-ids [64] out of range: this SAE has 64 latents"),
])
def test_cli_bad_input_is_one_clear_line(args, code, message, small_sae_dir, tmp_path, capsys, monkeypatch):
    returncode, err = _assay(capsys, monkeypatch, *[a.format(sae=small_sae_dir, empty=tmp_path) for a in args])
    assert returncode == code, err
    text = " ".join(err.translate({ord(c): " " for c in "│╭╮╰╯─"}).split())  # typer boxes usage errors
    assert message in text and "Traceback" not in err
