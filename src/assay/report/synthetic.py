"""A report from synthetic scores: shows the layout without a model (`assay report demo`), and
drives the renderer and browser tests."""

from __future__ import annotations

import numpy as np

from assay.probes.names import info
from assay.report.evaluate import SplitScores, evaluate_method
from assay.report.published import gdm_published
from assay.report.schema import Provenance, Report, SAEQuality
from assay.provenance import provenance

FAMILIES = {1: ["none", "aim", "role_play", "gcg"], 0: ["none", "count_words", "ignore_one"]}


def _split(rng: np.random.Generator, n: int, sep: float, ood: bool) -> SplitScores:
    y = rng.integers(0, 2, n)
    fam = np.where(y == 1, rng.choice(FAMILIES[1] + (["evil_confidant"] if ood else []), n),
                   rng.choice(FAMILIES[0] + (["all_caps"] if ood else []), n))
    shift = np.where(fam == "evil_confidant", -0.7 * sep, 0.0) + np.where(fam == "all_caps", 0.5 * sep, 0.0)
    s = rng.normal(size=n) + y * sep + shift
    trans = np.where(np.isin(fam, FAMILIES[0][1:] + ["all_caps"]), fam, "none")
    return SplitScores(s, y, {"family": np.where(y == 1, fam, "none").tolist(), "transformation": trans.tolist()})


def synthetic_report(seed: int = 0, n: int = 400, n_boot: int = 200) -> Report:
    rng = np.random.default_rng(seed)
    methods = [("dense-logistic", "all.max", None, None, 4.0), ("diff-of-means", "all.mean", None, None, 2.5),
               ("tfidf", "text", None, None, 2.0), ("1-sparse", "all.max", "chat-sae", 1, 1.0)]
    methods += [("k-sparse", "all.max", "chat-sae", k, 1.0 + np.log(k)) for k in (2, 5, 20)]
    results = []
    for method, feats, sae, k, sep in methods:
        splits = {"val": _split(rng, n, sep, False), "ood": _split(rng, n, sep * 0.8, True)}
        m = info(method)
        results += evaluate_method(method, splits, features=feats, n_boot=n_boot, seed=seed, kind=m.kind, sae=sae, k=k,
                                   selector="l1" if m.sweeps_k else None, model="synthetic", layer=9,
                                   latents=list(range(k)) if k else None)
    return Report(
        title="assay report (synthetic scores)",
        provenance=Provenance(**provenance(model="synthetic", layer=9, dataset_fingerprint="synthetic", seed=seed)),
        config={"synthetic": True, "n": n, "seed": seed},
        results=results,
        sae_quality=[SAEQuality(sae="chat-sae", architecture="jumprelu", training_data="chat", d_sae=4096, l0=42.0,
                                fvu=0.18, dead_fraction=0.01, dense_fraction=0.002)],
        published=gdm_published(), diagnostics={"headline_k": 20},
        notes=["Synthetic scores: this report demonstrates the layout, not a result."],
    )
