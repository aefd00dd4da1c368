"""Dataset debugging: a planted spurious cue is found by the latents a sparse probe relies on."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
import torch

from assay.activations import extract
from assay.debug import explain_latents, rank_probe_latents
from assay.probes.inputs import sae_outputs as pooled_sae_outputs
from assay.probes import KSparseProbe
from assay.sae import TrainConfig, Trainer, build_sae

WORDS = ("river stone paper garden window music lemon travel engine silver cloud market story winter "
         "bridge candle forest planet coffee letter yellow quiet rapid gentle").split()


@pytest.mark.slow
def test_planted_question_mark_cue_is_ranked_first(bundled, tmp_path):
    # A real model: a randomly initialised one has no clean "?" feature for an SAE to find.
    lm = bundled
    rng = random.Random(0)
    texts, labels = [], []
    for i in range(160):
        body = " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14)))
        harmful = i % 2
        # The planted flaw: every benign prompt is a question, no harmful one is.
        texts.append(body if harmful else body + "?")
        labels.append(harmful)
    y = np.array(labels)
    layer = 9
    acts = extract(lm, texts, [layer], root=tmp_path, progress=False)

    torch.manual_seed(0)
    sae = build_sae("topk", d_in=lm.d_model, d_sae=256, k=8, seed=0)
    stream = itertools.chain.from_iterable(acts.iter_tokens(layer, 512, shuffle_seed=e) for e in range(1000))
    Trainer({"sae": sae}, TrainConfig(total_tokens=256 * 300, batch_size=256, buffer_tokens=2048,
                                      lr=3e-3, progress=False)).fit(stream)
    sae = sae.eval()

    Z = pooled_sae_outputs(acts, sae, layer, ["all.max"], range(len(texts)))["latents"]["all.max"]
    probe = KSparseProbe(k=5, select="mean_diff").fit(Z, y)
    ranked = rank_probe_latents(Z, probe.meta["latents"], probe.head.direction().cpu().numpy())
    reports = explain_latents(acts, sae, layer, ranked, texts, y, lm.tokenizer, top_n=5)

    top = reports[0]
    assert "question_mark" in top.flags, [(r.latent, r.flags, r.top_tokens[:3]) for r in reports]
    assert top.weight < 0  # it points to "benign": the cue, not intent
    assert top.top_tokens[0]["token"].endswith("?") or top.token_cue_share["question_mark"] < 0.5
