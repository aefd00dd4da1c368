"""The SAE feature pass of the study: latents, reconstruction and error of every token, pooled by
every aggregation with that aggregation's own mask, from one read of the activation cache."""

import torch

from assay.activations import extract
from assay.probes.inputs import sae_outputs as pooled_sae_outputs
from assay.sae import build_sae

from conftest import PROMPTS

AGGS = ["all.max", "all.mean", "all.last", "resp-5", "user.mean", "last4.mean"]


def identity_sae(d: int):
    """ReLU SAE with W_enc = [I, -I], W_dec = [I; -I]: decode(encode(x)) = relu(x) - relu(-x) = x."""
    sae = build_sae("relu", d_in=d, d_sae=2 * d)
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae.eval()


def test_reconstruction_of_an_exact_sae_pools_like_the_cache(tiny, tmp_path):
    """With an SAE that reconstructs exactly, the pooled reconstruction of every aggregation equals
    the extraction's own pooled feature, and the error is zero: masks and pooling agree."""
    acts = extract(tiny, PROMPTS, [2], root=tmp_path, progress=False, aggregations=AGGS)
    out = pooled_sae_outputs(acts, identity_sae(tiny.d_model), 2, AGGS, token_budget=40)
    for agg in AGGS:
        torch.testing.assert_close(out["reconstruction"][agg], acts.pooled(2, agg), atol=1e-5, rtol=1e-5)
        assert out["error"][agg].abs().max() < 1e-5, agg


def test_topk_latents_match_encoding_each_prompt_alone(tiny, tmp_path):
    acts = extract(tiny, PROMPTS, [2], root=tmp_path, progress=False, aggregations=["all.max"])
    sae = build_sae("topk", d_in=tiny.d_model, d_sae=96, k=4).eval()
    out = pooled_sae_outputs(acts, sae, 2, ["all.max", "all.mean"], token_budget=50)
    for i in range(len(PROMPTS)):  # each prompt alone: encode its real tokens, then pool
        x, _, _ = acts.example_tokens(2, i)
        z = sae.encode(x)
        torch.testing.assert_close(out["latents"]["all.max"][i], z.amax(0), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out["latents"]["all.mean"][i], z.mean(0), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out["reconstruction"]["all.mean"][i], sae.decode(z).mean(0), atol=1e-5, rtol=1e-5)


def test_topk_low_precision_shortlist_gives_the_exact_code():
    torch.manual_seed(0)
    sae = build_sae("topk", d_in=64, d_sae=512, k=8).eval()
    with torch.no_grad():
        sae.W_enc.add_(0.05 * torch.randn_like(sae.W_enc))
    x = 3 * torch.randn(2000, 64)
    v0, i0 = sae.encode_topk(x)
    v1, i1 = sae.encode_topk(x, torch.bfloat16)
    dense = lambda v, i: torch.zeros(len(x), 512).scatter_(1, i, v)  # noqa: E731
    torch.testing.assert_close(dense(v1, i1), dense(v0, i0))
    torch.testing.assert_close(sae.decode_topk(v0, i0), sae.decode(dense(v0, i0)), atol=1e-5, rtol=1e-5)
