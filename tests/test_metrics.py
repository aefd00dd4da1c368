"""Metrics against known answers: analytic AUROC, scikit-learn, calibrated FPR, bootstrap CIs."""

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import average_precision_score, roc_auc_score

from assay.metrics.bootstrap import bootstrap_auroc_ci, bootstrap_ci, bootstrap_rate_ci
from assay.report.breakdown import group_breakdown
from assay.metrics import (auprc, auroc, fpr_at_threshold, recall_at_fpr, roc_curve,
                                threshold_at_fpr)


def gaussians(n, delta, seed=0):
    rng = np.random.default_rng(seed)
    s = np.r_[rng.normal(delta, 1, n), rng.normal(0, 1, n)]
    return s, np.r_[np.ones(n, int), np.zeros(n, int)]


@pytest.mark.parametrize("delta", [0.0, 0.5, 1.0, 2.0])
def test_auroc_matches_analytic_gaussian_value(delta):
    s, y = gaussians(20_000, delta)
    expected = norm.cdf(delta / np.sqrt(2))
    # sd of the AUROC estimate at n=20k per class is < 0.003
    assert auroc(s, y) == pytest.approx(expected, abs=0.01)


def test_auroc_and_auprc_match_sklearn_with_ties():
    rng = np.random.default_rng(1)
    s = rng.integers(0, 5, 300).astype(float)  # heavy ties
    y = (rng.random(300) < 0.3 + 0.1 * s).astype(int)
    assert auroc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert auprc(s, y) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    s2 = rng.normal(size=300)
    assert auprc(s2, y) == pytest.approx(average_precision_score(y, s2), abs=1e-12)


def test_auroc_undefined_for_one_class():
    assert np.isnan(auroc([0.1, 0.2], [1, 1]))


@pytest.mark.parametrize("n,fpr", [(100, 0.01), (1000, 0.01), (37, 0.05), (500, 0.1), (10, 0.01)])
def test_threshold_gives_at_most_target_fpr_on_calibration_set(n, fpr):
    rng = np.random.default_rng(n)
    benign = rng.normal(size=n)
    t = threshold_at_fpr(benign, fpr)
    reached = np.mean(benign > t)
    assert reached <= fpr + 1e-12
    # and it is not needlessly strict: one step lower would exceed the budget or admit one more
    assert np.sum(benign > t) == int(np.floor(fpr * n + 1e-9))


def test_threshold_with_ties_stays_under_target():
    benign = np.r_[np.zeros(95), np.ones(5)]
    t = threshold_at_fpr(benign, 0.01)
    assert fpr_at_threshold(benign, np.zeros(100, int), t) <= 0.01


def test_recall_and_fpr_at_threshold():
    s = np.array([0.0, 1.0, 2.0, 3.0, 0.5, 2.5])
    y = np.array([0, 0, 0, 1, 1, 1])
    assert recall_at_fpr(s, y, 1.5) == pytest.approx(2 / 3)
    assert fpr_at_threshold(s, y, 1.5) == pytest.approx(1 / 3)


def test_roc_curve_endpoints_and_area():
    s, y = gaussians(2000, 1.0)
    fpr, tpr = roc_curve(s, y, max_points=5000)
    assert (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert np.trapezoid(tpr, fpr) == pytest.approx(auroc(s, y), abs=1e-9)
    assert len(roc_curve(s, y, max_points=50)[0]) <= 50


def test_bootstrap_ci_contains_estimate_and_shrinks_with_n():
    widths = []
    for n in (100, 1600):
        s, y = gaussians(n, 1.0, seed=3)
        lo, hi = bootstrap_auroc_ci(s, y, n_boot=1000, seed=0)
        assert lo <= auroc(s, y) <= hi
        widths.append(hi - lo)
    # width ~ 1/sqrt(n): 16x the data, about a quarter the width
    assert widths[1] < widths[0] / 2.5


def test_bootstrap_is_seeded_and_matches_generic_loop():
    s, y = gaussians(200, 1.0, seed=4)
    a = bootstrap_auroc_ci(s, y, seed=7)
    assert a == bootstrap_auroc_ci(s, y, seed=7)
    loop = bootstrap_ci(auroc, s, y, n_boot=1000, seed=7)
    assert a == pytest.approx(loop, abs=0.02)  # different draws, same distribution


def test_rate_ci_contains_rate():
    flags = np.r_[np.ones(30, bool), np.zeros(70, bool)]
    lo, hi = bootstrap_rate_ci(flags, seed=0)
    assert lo < 0.3 < hi and hi - lo < 0.25


def test_group_breakdown_one_class_groups():
    s = np.array([3.0, 2.0, -1.0, 0.0, 0.5, -2.0, 1.5])
    y = np.array([1, 1, 1, 0, 0, 0, 1])
    fam = ["aim", "aim", "gcg", "none", "none", "none", "none"]
    rows = {g.group: g for g in group_breakdown(s, y, fam, threshold=1.0, by="family", n_boot=100)}
    aim, gcg, none = rows["aim"], rows["gcg"], rows["none"]
    assert aim.auroc is None and aim.recall == 1.0 and aim.fpr is None
    assert aim.auroc_vs_rest == 1.0  # both aim scores beat every benign
    assert gcg.recall == 0.0 and gcg.auroc_vs_rest == pytest.approx(1 / 3)
    assert none.auroc == 1.0 and none.recall == 1.0 and none.fpr == 0.0


def test_rankdata_is_scipys_average_ranks():
    """metrics.rankdata stands in for scipy.stats.rankdata (whose import cost a second per command):
    the same ranks to the bit, ties averaged, along either axis, NaN slices NaN, empty and 1-long."""
    from scipy.stats import rankdata as scipy_rankdata

    from assay.metrics import rankdata

    rng = np.random.default_rng(0)
    ties = rng.integers(0, 5, size=(7, 30)).astype(float)  # many ties per row and column
    ties[2, 3], ties[4] = np.nan, np.inf
    cont = rng.normal(size=(40, 9))
    cont[5, :] = 0.0
    cont[6, :] = -0.0  # equal to 0.0: tied with it
    for a in (ties, cont):
        for axis in (0, 1, -1):
            np.testing.assert_array_equal(rankdata(a, axis=axis), scipy_rankdata(a, axis=axis))
    for v in ([], [3.0], [2.0, 2.0, 1.0, np.inf, -np.inf, 2.0], [1.0, np.nan]):
        np.testing.assert_array_equal(rankdata(np.array(v)), scipy_rankdata(np.array(v)))
