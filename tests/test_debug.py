"""Dataset debugging: a planted spurious cue is found by the latents a sparse probe relies on."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
import torch

from assay.activations import extract
from assay.debug import explain_latents, rank_probe_latents
from assay.models.chat import Role
from assay.probes import make_probe
from assay.probes.inputs import sae_outputs
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

    Z = sae_outputs(acts, sae, layer, ["all.max"])["latents"]["all.max"]
    probe = make_probe("k-sparse", k=5, select="mean_diff").fit(Z, y)
    ranked = rank_probe_latents(Z, probe.meta["latents"], probe.head.direction().cpu().numpy())
    reports = explain_latents(acts, sae, layer, ranked, Z, texts, y, lm.tokenizer, top_n=5)

    top = reports[0]
    assert "question_mark" in top.flags, [(r.latent, r.flags, r.top_tokens[:3]) for r in reports]
    assert top.weight < 0  # it points to "benign": the cue, not intent


class _Tokens:
    """A store and tokenizer over a toy vocabulary: token j's activation is the one-hot e_j."""

    def __init__(self, prompts: list[list[str]], vocab: list[str]):
        self.prompts, self.vocab = prompts, vocab

    def example_tokens(self, layer, i):
        ids = torch.tensor([self.vocab.index(t) for t in self.prompts[i]])
        return torch.eye(len(self.vocab))[ids], torch.full((len(ids),), int(Role.USER)), ids

    def convert_ids_to_tokens(self, ids):
        return [self.vocab[i] for i in ids]


class _Reader:
    """An SAE whose latent j reads the tokens `reads[j]`: relu(x @ W_enc)."""

    def __init__(self, vocab: list[str], reads: list[set[str]]):
        self.W_enc = torch.tensor([[1.0 if t in r else 0.0 for r in reads] for t in vocab])

    def encode(self, x):
        return torch.relu(x @ self.W_enc)


def test_only_the_planted_cue_is_flagged_beside_a_real_signal():
    """Harmful prompts carry a harm word (the real signal); a question mark (the planted cue) ends
    80% of benign and 20% of harmful prompts, so it predicts the label without being it. A
    k-sparse probe uses both latents; only the cue's latent may be flagged."""
    rng = random.Random(0)
    harm, fill = ["bomb", "poison", "malware"], ["river", "stone", "paper", "garden", "window", "music", "lemon"]
    vocab = harm + fill + ["?", "."]
    prompts, labels = [], []
    for i in range(200):
        harmful = i % 2
        body = [rng.choice(fill) for _ in range(rng.randint(4, 12))]
        if harmful:
            body.insert(rng.randrange(len(body)), rng.choice(harm))
        question = rng.random() < (0.2 if harmful else 0.8)
        prompts.append(body + ["?" if question else "."])
        labels.append(harmful)
    texts = [" ".join(t) for t in prompts]
    y = np.array(labels)
    store = _Tokens(prompts, vocab)
    sae = _Reader(vocab, [{"?"}, set(harm), {"river", "stone"}])  # cue, signal, noise
    Z = torch.stack([sae.encode(store.example_tokens(0, i)[0]).amax(0) for i in range(len(prompts))])
    probe = make_probe("k-sparse", k=2, select="mean_diff", device="cpu").fit(Z, y)
    assert sorted(probe.meta["latents"]) == [0, 1]
    ranked = rank_probe_latents(Z, probe.meta["latents"], probe.head.direction().cpu().numpy())
    reports = {r.latent: r for r in explain_latents(store, sae, 0, ranked, Z, texts, y, store, top_n=5)}
    assert reports[0].flags == ["question_mark"], reports[0]
    assert reports[0].weight < 0 and reports[0].token_cue_share["question_mark"] == 1.0
    assert reports[1].flags == [], reports[1]
    assert reports[1].weight > 0 and reports[1].token_cue_share["question_mark"] == 0.0


def test_a_latents_per_prompt_activation_is_the_one_the_probe_read():
    """A probe fitted on mean-pooled latents is explained with mean-pooled values, not a max over
    tokens: "bomb" once among many fillers has max 1 but mean well under 1."""
    vocab = ["bomb", "river", "stone", "."]
    prompts = [["bomb"] + ["river"] * n + ["."] for n in (1, 5, 9)] + [["stone"] * n + ["."] for n in (2, 4, 6)]
    store, sae = _Tokens(prompts, vocab), _Reader(vocab, [{"bomb"}])
    y = np.array([1, 1, 1, 0, 0, 0])
    Z = torch.stack([sae.encode(store.example_tokens(0, i)[0]).mean(0) for i in range(len(prompts))])
    [rep] = explain_latents(store, sae, 0, [(0, 1.0)], Z, [" ".join(p) for p in prompts], y, store, top_n=2)
    assert rep.mean_harmful == pytest.approx(float(Z[:3, 0].mean()))  # (1/3 + 1/7 + 1/11) / 3, not 1.0
    assert rep.mean_harmful < 0.2
    with pytest.raises(ValueError, match="rows"):
        explain_latents(store, sae, 0, [(0, 1.0)], Z[:2], [" ".join(p) for p in prompts], y, store)
