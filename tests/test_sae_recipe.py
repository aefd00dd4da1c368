"""The SAE recipe both `assay sae` and the study use: start, train, evaluate."""

from __future__ import annotations

import pytest
import torch

from assay.sae import build_sae
from assay.sae.io import save_sae
from assay.sae.metrics import reconstruction_stats
from assay.sae.recipe import evaluate_sae, initial_saes


def test_evaluate_sae_is_the_metrics_and_a_histogram(tmp_path):
    torch.manual_seed(0)
    sae = build_sae("topk", d_in=16, d_sae=64, k=4).eval()
    tokens = [torch.randn(300, 16) for _ in range(3)]
    record = evaluate_sae(sae, tokens, tmp_path / "freq.png", "toy", outlier_dims=[0, 1])
    ref = reconstruction_stats(sae, tokens, outlier_dims=[0, 1])
    assert (tmp_path / "freq.png").is_file() and record["freq_hist"] == str(tmp_path / "freq.png")
    assert record["architecture"] == "topk" and record["d_sae"] == 64 and "freq" not in record
    for key in ("l0", "fvu", "fvu_other_dims", "dead", "dense", "tokens"):
        assert record[key] == ref[key], key
    assert record["l0"] == pytest.approx(4.0)


def test_initial_saes_fresh_per_architecture_or_a_checked_finetune(tmp_path):
    fresh = initial_saes(8, ["topk", "relu"], 32, 0, {"topk": {"k": 4}, "relu": {}})
    assert sorted(fresh) == ["relu", "topk"] and fresh["topk"].cfg.d_sae == 32
    save_sae(fresh["topk"], tmp_path / "s")
    seen = []
    again = initial_saes(8, ["topk"], 32, 0, {}, finetune_from=tmp_path / "s", resample=0.25, check=seen.append)
    sae = again["topk"]
    assert seen == [sae]  # checked before anything else touches it
    changed = (sae.W_enc != fresh["topk"].W_enc.to(sae.W_enc.dtype)).any(0)
    assert int(changed.sum()) == 8  # a quarter of the latents re-initialised, the rest kept
