"""SAE probes on synthetic sparse latents with known informative latents."""

import numpy as np
import pytest

from assay.metrics import auroc, column_auroc
from assay.probes import (KSparseProbe, OneSparseProbe, fit_k_sweep, l1_path_order, l1_path_select,
                          load_probe, mean_diff_scores, make_probe)

INFORMATIVE = [7, 42, 99, 150, 201]


def latents(n=400, d_sae=256, seed=0):
    """ReLU-sparse latents; harmful examples fire the INFORMATIVE latents more (each weakly, so
    no single latent separates the classes but several together do)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    pre = rng.normal(-1.0, 1.0, size=(n, d_sae))
    pre[:, INFORMATIVE] += 1.2 * y[:, None]
    pre[:, 99] -= 2.4 * y  # one latent that fires on *benign*: the sign must be learned
    return np.maximum(pre, 0).astype(np.float32), y


@pytest.fixture(scope="module")
def zs():
    return latents(seed=0), latents(n=300, seed=1)


def test_latent_auroc_matches_per_column_auroc(zs):
    (Z, y), _ = zs
    fast = column_auroc(Z, y, chunk=50)
    for j in (0, 7, 99, 255):
        assert fast[j] == pytest.approx(auroc(Z[:, j], y), abs=1e-12)


def test_one_sparse_picks_an_informative_latent_with_sign(zs):
    (Z, y), (Zv, yv) = zs
    p = OneSparseProbe().fit(Z, y)
    assert p.latents.tolist()[0] in INFORMATIVE
    assert auroc(p.score(Zv), yv) > 0.6
    p99 = OneSparseProbe().fit(Z[:, [99, 0]], y)  # only the benign-firing latent is informative
    assert p99.latents[0] == 0 and p99.sign == -1.0 and auroc(p99.score(Z[:, [99, 0]]), y) > 0.55


@pytest.mark.parametrize("select", ["mean_diff", "l1"])
@pytest.mark.parametrize("k", [1, 2, 5, 10])
def test_k_sparse_uses_exactly_k_latents(zs, select, k):
    (Z, y), (Zv, yv) = zs
    p = KSparseProbe(k=k, select=select, device="cpu").fit(Z, y, Zv, yv)
    assert len(p.latents) == k == len(set(p.latents.tolist()))
    assert np.count_nonzero(p.coef_full(Z.shape[1])) == k
    # scores depend on the chosen latents only
    Z2 = Zv.copy()
    others = np.setdiff1d(np.arange(Z.shape[1]), p.latents)
    Z2[:, others] = np.random.default_rng(0).random((len(Z2), len(others)))
    np.testing.assert_array_equal(p.score(Z2), p.score(Zv))


@pytest.mark.parametrize("select", ["mean_diff", "l1"])
def test_k_sparse_finds_the_informative_latents(zs, select):
    (Z, y), (Zv, yv) = zs
    p = KSparseProbe(k=5, select=select, device="cpu").fit(Z, y, Zv, yv)
    assert set(p.latents.tolist()) == set(INFORMATIVE)
    one = OneSparseProbe().fit(Z, y)
    assert auroc(p.score(Zv), yv) > auroc(one.score(Zv), yv) + 0.05


def test_l1_path_reaches_k_and_records_path(zs):
    (Z, y), _ = zs
    chosen, path = l1_path_select(Z, y, 3)
    assert len(chosen) == 3 and path[0]["n_active"] <= 1
    assert max(r["n_active"] for r in path) >= 3


def test_mean_diff_scores_dead_latents_zero():
    Z = np.zeros((10, 3), np.float32)
    Z[:, 1] = np.arange(10)
    assert mean_diff_scores(Z, np.r_[np.zeros(5), np.ones(5)]).tolist()[0] == 0.0


@pytest.mark.parametrize("make", [lambda: make_probe("1-sparse"), lambda: make_probe("k-sparse", k=5, device="cpu"),
                                  lambda: make_probe("k-sparse", k=5, select="l1", device="cpu")])
def test_sparse_save_load_identical_scores(zs, make, tmp_path):
    (Z, y), (Zv, yv) = zs
    p = make().fit(Z, y, Zv, yv)
    p.save(tmp_path / "p")
    q = load_probe(tmp_path / "p", device="cpu")
    assert q.latents.tolist() == p.latents.tolist()
    np.testing.assert_array_equal(q.score(Zv), p.score(Zv))


def test_k_sweep_returns_one_probe_per_k(zs):
    (Z, y), (Zv, yv) = zs
    probes = fit_k_sweep(Z, y, Zv, yv, ks=(1, 2, 5), Cs=(1.0,), device="cpu")
    assert {k: len(p.latents) for k, p in probes.items()} == {1: 1, 2: 2, 5: 5}


def test_l1_path_is_sparse_and_one_walk_serves_every_k(zs):
    """The path's fits are L1 (a few latents active at small C, as an L2 fit never is), and the
    order from one walk gives each k the same first-k set a walk for that k alone gives."""
    (Z, y), _ = zs
    order, path = l1_path_order(Z, y, [1, 2, 5])
    assert any(0 < r["n_active"] < Z.shape[1] // 4 for r in path)
    for k in (1, 2, 5):
        alone, _ = l1_path_select(Z, y, k)
        assert set(alone.tolist()) == set(order[:k].tolist())


@pytest.mark.parametrize("select", ["mean_diff", "l1"])
def test_k_above_the_number_of_varying_latents_uses_them_all(zs, select):
    (Z, y), (Zv, yv) = zs
    Z, Zv = Z.copy(), Zv.copy()
    Z[:, 8:] = 0.0  # only 8 latents vary on train
    p = KSparseProbe(k=20, select=select, device="cpu").fit(Z, y, Zv, yv)
    assert len(p.latents) == 20 and set(range(8)) <= set(p.latents.tolist())


def test_l1_logistic_meets_the_optimality_conditions_on_nearly_separable_latents():
    """The path's solver reaches the L1 optimum (KKT: |X_j^T (p - y)| = lam on active latents with
    the opposite sign, <= lam elsewhere, intercept gradient 0), also where a few sparse latents
    fire only on one class, the case where liblinear stalls."""
    from scipy.special import expit

    from assay.probes.sparse import l1_logistic

    Z, y = latents(n=400, seed=3)
    Z[:, 250] = 0.0
    Z[:5, 250] = 4.0 * y[:5]  # latents that fire on a few harmful examples only
    Z[:, 251] = 0.0
    Z[10:13, 251] = 3.0 * y[10:13] + 0.1
    X = Z.astype(np.float64) / Z.std(0)
    yf = y.astype(np.float64)
    for lam in (40.0, 10.0, 2.0):
        w, b = l1_logistic(X, yf, lam, np.zeros(X.shape[1]), 0.0)
        g = X.T @ (expit(X @ w + b) - yf)
        active = w != 0
        assert 0 < active.sum() < X.shape[1]
        np.testing.assert_allclose(g[active], -lam * np.sign(w[active]), rtol=1e-3, atol=1e-3 * lam)
        assert np.abs(g[~active]).max() <= lam * (1 + 1e-3)
        assert abs(np.sum(expit(X @ w + b) - yf)) < 1e-3
