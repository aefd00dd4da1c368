"""Detection metrics as plain functions over scores (higher = harmful) and labels (1 harmful, 0 benign).

The operating point follows GDM's protocol: a threshold is set once on *benign validation*
examples for a target false-positive rate, then applied unchanged to test and OOD splits, where
the FPR actually reached is reported beside the recall.
"""

from __future__ import annotations

import numpy as np

ArrayLike = np.ndarray


def rankdata(a: ArrayLike, axis: int = -1) -> np.ndarray:
    """Ranks from 1 along `axis`, tied values sharing the mean of their positions, and a slice that
    holds a NaN all NaN: scipy.stats.rankdata's defaults (tests/test_metrics.py compares the two),
    without importing scipy.stats, which took about 1 s of every cached rerun's 10 on 2 cores."""
    x = np.moveaxis(np.asarray(a, dtype=np.float64), axis, -1)
    n = x.shape[-1]
    order = np.argsort(x, axis=-1, kind="stable")
    s = np.take_along_axis(x, order, axis=-1)
    pos = np.broadcast_to(np.arange(n), s.shape)
    starts = np.ones(s.shape, dtype=bool)  # first position of each run of equal values
    starts[..., 1:] = s[..., 1:] != s[..., :-1]
    ends = np.ones(s.shape, dtype=bool)  # and its last
    ends[..., :-1] = starts[..., 1:]
    first = np.maximum.accumulate(np.where(starts, pos, 0), axis=-1)
    last = np.flip(np.minimum.accumulate(np.flip(np.where(ends, pos, n), axis=-1), axis=-1), axis=-1)
    ranks = np.empty_like(s)
    np.put_along_axis(ranks, order, (first + last) / 2 + 1, axis=-1)
    ranks[np.isnan(x).any(axis=-1)] = np.nan
    return np.moveaxis(ranks, -1, axis)


def _as_np(scores, y=None) -> tuple[np.ndarray, np.ndarray | None]:
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y is None:
        return s, None
    yy = np.asarray(y).ravel().astype(np.int64)
    if s.shape != yy.shape:
        raise ValueError(f"scores {s.shape} and labels {yy.shape} differ in length")
    return s, yy


def auroc_pos_neg(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(score of a random positive > score of a random negative), ties counting one half
    (the Mann-Whitney U statistic). NaN when either class is empty."""
    pos = np.asarray(pos, dtype=np.float64).ravel()
    neg = np.asarray(neg, dtype=np.float64).ravel()
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    ranks = rankdata(np.concatenate([pos, neg]))
    u = ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(pos) * len(neg)))


def auroc(scores: ArrayLike, y: ArrayLike) -> float:
    """Area under the ROC curve. NaN when only one class is present."""
    s, yy = _as_np(scores, y)
    return auroc_pos_neg(s[yy == 1], s[yy == 0])


def column_auroc(Z: np.ndarray, y: ArrayLike, chunk: int = 1024) -> np.ndarray:
    """AUROC of every column of `Z [n, m]` used alone as a score (e.g. each SAE latent), ties
    (e.g. zeros) counting one half; a block of columns is ranked at a time to bound memory."""
    _, yy = _as_np(np.zeros(len(Z)), y)
    pos, n_pos, n_neg = yy == 1, int(yy.sum()), int((1 - yy).sum())
    out = np.empty(Z.shape[1])
    for j in range(0, Z.shape[1], chunk):
        r = rankdata(Z[:, j : j + chunk], axis=0)
        out[j : j + chunk] = (r[pos].sum(0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return out


def auprc(scores: ArrayLike, y: ArrayLike) -> float:
    """Average precision: sum over distinct thresholds of (R_n - R_{n-1}) P_n (scikit-learn's
    definition, no interpolation). NaN without positives."""
    s, yy = _as_np(scores, y)
    n_pos = int(yy.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    s, yy = s[order], yy[order]
    tp = np.cumsum(yy)
    fp = np.cumsum(1 - yy)
    # keep the last index of each run of tied scores: a threshold admits all ties at once
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tp, fp = tp[last], fp[last]
    precision = tp / (tp + fp)
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def threshold_at_fpr(benign_scores: ArrayLike, fpr: float = 0.01) -> float:
    """Threshold t such that at most `fpr` of `benign_scores` are flagged (flag means score > t).

    t is the (m+1)-th highest benign score with m = floor(fpr * n): exactly the m highest lie
    strictly above it (fewer if tied), so the FPR on these examples is <= fpr by construction.
    """
    s, _ = _as_np(benign_scores)
    if len(s) == 0:
        raise ValueError("threshold_at_fpr needs at least one benign score")
    if not 0.0 <= fpr < 1.0:
        raise ValueError(f"fpr must be in [0, 1), got {fpr}")
    m = int(np.floor(fpr * len(s) + 1e-9))
    return float(np.sort(s)[::-1][m])


def flagged(scores: ArrayLike, threshold: float) -> np.ndarray:
    """Which examples the monitor flags at `threshold` (strictly above)."""
    s, _ = _as_np(scores)
    return s > threshold


def recall_at_fpr(scores: ArrayLike, y: ArrayLike, threshold: float) -> float:
    """Fraction of positives flagged at a threshold calibrated elsewhere (`threshold_at_fpr`)."""
    s, yy = _as_np(scores, y)
    pos = s[yy == 1]
    return float(np.mean(pos > threshold)) if len(pos) else float("nan")


def fpr_at_threshold(scores: ArrayLike, y: ArrayLike, threshold: float) -> float:
    """Fraction of negatives flagged: the FPR a calibrated threshold actually reaches on a split."""
    s, yy = _as_np(scores, y)
    neg = s[yy == 0]
    return float(np.mean(neg > threshold)) if len(neg) else float("nan")


def roc_curve(scores: ArrayLike, y: ArrayLike, max_points: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) at every distinct threshold, thinned to at most `max_points` for plotting and
    storage; always keeps (0, 0) and (1, 1)."""
    s, yy = _as_np(scores, y)
    n_pos, n_neg = int(yy.sum()), int((1 - yy).sum())
    if n_pos == 0 or n_neg == 0:
        return np.array([0.0, 1.0]), np.array([0.0, 1.0])
    order = np.argsort(-s, kind="mergesort")
    s, yy = s[order], yy[order]
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tpr = np.r_[0.0, np.cumsum(yy)[last] / n_pos]
    fpr = np.r_[0.0, np.cumsum(1 - yy)[last] / n_neg]
    if len(fpr) > max_points:
        keep = np.unique(np.linspace(0, len(fpr) - 1, max_points).round().astype(int))
        fpr, tpr = fpr[keep], tpr[keep]
    return fpr, tpr
