"""The study's auto-interpretability stage: which latents it explains, and how the report states it."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest


def _m(u, w, ci=0.05, n=20):
    return {"n_scored": n, "uniform": u, "uniform_ci": [u - ci, u + ci], "weighted": w, "weighted_ci": [w - ci, w + ci]}


def _row(sae, pair, real, probe, rand, shuffled=(0.5, 0.5), random_sae=(0.6, 0.52), unstructured=0.49):
    d = lambda m: {"detection": m, "fuzzing": m}  # noqa: E731
    vals = {"shuffled_uniform": shuffled[0], "shuffled_weighted": shuffled[1], "unstructured_uniform": unstructured}
    off = sorted(k for k, v in vals.items() if abs(v - 0.5) > 0.05)
    return {"sae": sae, "seed": 0, "architecture": "topk", "pair": pair, "probe": None, "dir": f"autointerp/{sae}",
            "explainer": "tokens" if pair == "rule" else "hf:gemma-3-270m",
            "scorer": "rule" if pair == "rule" else "hf:gemma-3-270m", "dictionary": {},
            "real": d(_m(*real)), "real_probe": d(_m(*probe, n=5)), "real_random": d(_m(*rand, n=15)),
            "shuffled": d(_m(*shuffled)), "unstructured": d(_m(unstructured, unstructured)),
            "random_sae": d(_m(*random_sae)),
            "margin": d(_m(real[0] - random_sae[0], real[1] - random_sae[1], ci=0.04)),
            "controls": {"margin": 0.05, "values": vals, "off_chance": off, "at_chance": not off}}


def _ai(*rows):
    return {"texts": {"n": 500, "train_prompts": 300, "held_out_tokens": 20000, "max_tokens": 128},
            "random_latents": 15, "rows": list(rows)}


AI = _ai(_row("pretrain", "rule", (0.71, 0.62), (0.80, 0.70), (0.68, 0.60)),
         _row("chat", "rule", (0.90, 0.55), (0.85, 0.50), (0.92, 0.57)),
         _row("pretrain", "lm", (0.52, 0.51), (0.55, 0.5), (0.5, 0.5), shuffled=(0.51, 0.5)))


def _check_cites(f, ai):
    for c in f.cites:  # every quoted number is the one at its path, and shown
        node = {"autointerp": ai}
        for part in c.metric.split("/"):
            node = node[int(part)] if isinstance(node, list) else node[part]
        assert node == pytest.approx(c.value) and f"{c.value:.3f}" in f.text


def test_finding_cites_the_numbers_and_says_what_the_controls_and_the_small_lm_show():
    from assay.experiment.diagnostic_findings import autointerp_finding
    from assay.experiment.writing import Writer

    f = autointerp_finding(AI, Writer(None))
    _check_cites(f, AI)
    assert "pretrain 0.710 / 0.620; chat 0.900 / 0.550" in f.text
    assert "within 0.5 +/- 0.05" in f.text and "shuffled uniform 0.500" in f.text and "Off chance" not in f.text
    # margins over the random SAE: pretrain +0.110 / +0.100, chat +0.300 / +0.030 (CI +/- 0.04)
    assert "pretrain +0.110 [+0.070, +0.150] / +0.100 [+0.060, +0.140]" in f.text
    assert "By the uniform mean, 2 of 2 trained SAEs beat the random one beyond noise" in f.text
    assert "By the frequency-weighted mean, 1 of 2 trained SAEs beat the random one beyond noise (pretrain)" in f.text
    assert "Largest uniform margin: chat (its interval clear of the others)" in f.text
    assert "Largest frequency-weighted margin: pretrain (its interval overlaps chat)" in f.text
    assert "probe's own latents score 0.800 (uniform) against 0.680 for uniformly drawn latents" in f.text
    assert "not distinguishable from that control" in f.text  # 0.52 [0.47, 0.57] vs shuffled 0.51


def test_finding_refuses_a_ranking_when_a_chance_control_is_off():
    from assay.experiment.diagnostic_findings import autointerp_finding
    from assay.experiment.writing import Writer

    ai = _ai(_row("pretrain", "rule", (0.71, 0.62), (0.80, 0.70), (0.68, 0.60), unstructured=0.61),
             _row("chat", "rule", (0.90, 0.55), (0.85, 0.50), (0.92, 0.57)))
    f = autointerp_finding(ai, Writer(None))
    _check_cites(f, ai)
    assert "Off chance: pretrain (unstructured_uniform)" in f.text and "rank nothing" in f.text
    assert "No ranking: a chance control is off chance." in f.text and "Largest" not in f.text


def test_table_and_figure():
    from assay.report.plots import autointerp_figure
    from assay.report.tables import autointerp_table

    t = autointerp_table(AI)
    assert len(t.rows) == 3 and t.rows[0][2] == "5 + 15" and t.rows[0][3] == "0.710 [0.66, 0.76]"
    assert autointerp_figure(AI) is not None
    assert autointerp_table(None) is None and autointerp_figure({"rows": []}) is None


def test_probe_latents_come_from_the_configuration_best_on_validation_never_ood():
    """Two k-sparse configurations at the headline k: the one better on val is read, however the
    OOD scores fall; configurations at other k or seeds are ignored."""
    from assay.experiment.parts import Run
    from assay.experiment.study_autointerp import probe_latents

    y = np.array([0, 1] * 10)
    idx = {"val": np.arange(0, 10), "ood": np.arange(10, 20)}
    good = np.where(np.arange(20) < 10, y, 1 - y).astype(float)  # right on val, inverted on OOD
    bad = np.where(np.arange(20) < 10, 1 - y, y).astype(float)
    run = lambda feat, k=20: Run("k-sparse", feat, "pretrain", k, "mean_diff", 0)  # noqa: E731
    a, b, c = run("all.max"), run("user.mean"), run("resp-5", k=5)
    meta = {a: {"stability": {"pick_rate": {"7": 1.0, "3": 0.5}}}, b: {"stability": {"pick_rate": {"9": 1.0}}},
            c: {"stability": {"pick_rate": {"1": 1.0}}}}
    data = SimpleNamespace(cfg=SimpleNamespace(headline_k=20), idx=idx, y=y)
    parts = SimpleNamespace(meta=meta, scores={a: bad, b: good, c: good})
    ids, config = probe_latents(data, parts, "pretrain", 0)
    assert ids == [9] and config["aggregation"] == "user.mean" and config["val_auroc"] == 1.0
    parts.scores = {a: good, b: bad, c: good}
    assert probe_latents(data, parts, "pretrain", 0)[0] == [7, 3]  # in selection order
    assert probe_latents(data, parts, "chat", 0) == ([], None)
