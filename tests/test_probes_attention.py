"""Attention probes find one telling token that mean pooling dilutes away."""

import numpy as np
import pytest
import torch

from assay.metrics import auroc
from assay.activations.aggregation import pool_tokens
from assay.probes import AttentionProbe, LogisticProbe, RollingAttentionProbe, load_probe, make_probe


def planted(n, T=24, d=8, seed=0):
    """Harmful: one token at a random position carries 6u. Benign: the same total 6u spread over
    six random tokens. Every token's mean is identical across classes, so the mean-pooled vectors
    have the same distribution; only where the mass sits tells them apart."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, T, d, generator=g)
    y = torch.randint(0, 2, (n,), generator=g)
    u = torch.zeros(d)
    u[0] = 1.0
    lengths = torch.randint(T // 2, T + 1, (n,), generator=g)  # ragged, right-padded
    m = torch.arange(T)[None, :] < lengths[:, None]
    for i in range(n):
        pos = torch.randperm(int(lengths[i]), generator=g)
        if y[i]:
            x[i, pos[0]] += 6 * u
        else:
            x[i, pos[:6]] += u
    x[~m] = 0.0
    return x, m, y.numpy()


@pytest.fixture(scope="module")
def task():
    return planted(300, seed=0), planted(150, seed=1), planted(300, seed=2)


def test_mean_pooling_is_near_chance(task):
    (x, m, y), (xv, mv, yv), (xt, mt, yt) = task
    p = LogisticProbe(device="cpu").fit(pool_tokens(x, m, "all.mean"), y, pool_tokens(xv, mv, "all.mean"), yv)
    assert auroc(p.score(pool_tokens(xt, mt, "all.mean")), yt) < 0.65


@pytest.mark.parametrize("method,cls", [("attention", AttentionProbe), ("max-rolling-attention", RollingAttentionProbe)])
def test_attention_probe_learns_planted_token(task, method, cls, tmp_path):
    (x, m, y), (xv, mv, yv), (xt, mt, yt) = task
    p = make_probe(method, device="cpu", max_epochs=10, patience=3, lr=2e-2, n_heads=2)
    p.fit(x, y, xv, yv, mask=m, mask_val=mv)
    s = p.score(xt, mt)
    assert auroc(s, yt) > 0.95, p.meta
    p.save(tmp_path / "attn")
    q = load_probe(tmp_path / "attn", device="cpu")
    assert type(q) is cls
    np.testing.assert_array_equal(q.score(xt, mt), s)


def test_rolling_probe_handles_prompts_shorter_than_window():
    x, m, y = planted(40, T=6, seed=3)
    p = RollingAttentionProbe(device="cpu", window=10, max_epochs=2).fit(x, y, x, y, mask=m, mask_val=m)
    assert np.isfinite(p.score(x, m)).all()


def test_attention_probe_needs_a_mask():
    with pytest.raises(ValueError, match="mask"):
        AttentionProbe(device="cpu").fit(torch.zeros(4, 3, 2), [0, 1, 0, 1])
