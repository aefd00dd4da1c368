"""Percentile bootstrap confidence intervals, stratified by class, seeded and vectorised.

Stratifying keeps n_pos and n_neg fixed in every resample, so AUROC is always defined and the
interval reflects sampling noise within each class. A threshold calibrated on validation data is
held fixed: the interval is for the test split's recall at that threshold.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from scipy.stats import rankdata

N_BOOT = 1000


def _resample(x: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """[n_boot, len(x)] resamples with replacement."""
    return x[rng.integers(0, len(x), size=(n_boot, len(x)))]


def _auroc_rows(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """AUROC of every row pair (pos [B, p], neg [B, q]) at once, ties counting one half."""
    p = pos.shape[1]
    ranks = rankdata(np.concatenate([pos, neg], axis=1), axis=1)
    return (ranks[:, :p].sum(axis=1) - p * (p + 1) / 2) / (p * neg.shape[1])


def _percentile(stats: np.ndarray, level: float) -> tuple[float, float]:
    stats = stats[np.isfinite(stats)]
    if len(stats) == 0:
        return float("nan"), float("nan")
    a = (1 - level) / 2
    lo, hi = np.quantile(stats, [a, 1 - a])
    return float(lo), float(hi)


def bootstrap_auroc_ci(
    scores, y, *, n_boot: int = N_BOOT, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile CI of AUROC; NaNs when a class is empty."""
    s, yy = np.asarray(scores, np.float64).ravel(), np.asarray(y).ravel()
    pos, neg = s[yy == 1], s[yy == 0]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    stats = np.empty(n_boot)
    # chunk the resamples so [chunk, n] rank matrices stay a few tens of MB
    chunk = max(1, int(2e6 // (len(pos) + len(neg))))
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        stats[start : start + b] = _auroc_rows(_resample(pos, b, rng), _resample(neg, b, rng))
    return _percentile(stats, level)


def bootstrap_rate_ci(
    flags, *, n_boot: int = N_BOOT, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile CI of a proportion (recall over positives, FPR over negatives) at a fixed
    threshold; `flags` are the booleans of one class only."""
    f = np.asarray(flags, dtype=np.float64).ravel()
    if len(f) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    # the mean of a resample is Binomial(n, p)/n: draw that directly instead of n indices
    stats = rng.binomial(len(f), f.mean(), size=n_boot) / len(f)
    return _percentile(stats, level)


def bootstrap_ci(
    statistic: Callable[[np.ndarray, np.ndarray], float],
    scores,
    y,
    *,
    n_boot: int = N_BOOT,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Generic stratified percentile CI for any `statistic(scores, y)` (a Python loop: use the
    vectorised functions above for AUROC and rates)."""
    s, yy = np.asarray(scores, np.float64).ravel(), np.asarray(y).ravel()
    idx_pos, idx_neg = np.nonzero(yy == 1)[0], np.nonzero(yy == 0)[0]
    rng = np.random.default_rng(seed)
    stats = np.empty(n_boot)
    for b in range(n_boot):
        idx = np.concatenate([
            rng.choice(idx_pos, len(idx_pos)) if len(idx_pos) else idx_pos,
            rng.choice(idx_neg, len(idx_neg)) if len(idx_neg) else idx_neg,
        ])
        stats[b] = statistic(s[idx], yy[idx])
    return _percentile(stats, level)
