"""Percentile bootstrap confidence intervals, stratified by class, seeded and vectorised.

Stratifying keeps n_pos and n_neg fixed in every resample, so AUROC is always defined and the
interval reflects sampling noise within each class. A threshold calibrated on validation data is
held fixed: the interval is for the test split's recall at that threshold.

The clustered functions below resample behaviours (units) instead of rows and pair methods on
one resample; they are the ones to use for the benchmark, whose rows are not independent.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from assay.metrics import (auroc, fpr_at_threshold, rankdata, recall_at_fpr,
                                threshold_at_fpr)

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


# ---------------------------------------------------------------------------------------------
# Clustered, paired bootstrap
#
# The benchmark's rows are not independent: one harmful behaviour appears plain, wrapped in
# several jailbreaks and transformed (about five rows), and those rows succeed or fail together.
# Resampling rows treats them as independent evidence and gives intervals roughly sqrt(rows per
# behaviour) too narrow. Here the unit of resampling is the behaviour (`units`: one id per row,
# the near-duplicate cluster of the request it came from): units are drawn with replacement,
# not stratified by class (a unit may hold rows of both classes), and every row gets the
# multiplicity of its unit in the resample. Statistics are computed on integer row weights
# W [n_boot, n], vectorised over resamples and exactly those of the replicated rows.
#
# Comparisons are paired: two methods scored on the same rows get the same W, so a resample
# that happens to draw hard behaviours is hard for both, and the shared example difficulty
# cancels in the difference instead of inflating its interval.
# ---------------------------------------------------------------------------------------------


def _unit_codes(units) -> tuple[np.ndarray, int]:
    """Integer code of every row's unit, codes given in first-seen order; and the unit count."""
    index: dict = {}
    codes = np.fromiter((index.setdefault(u, len(index)) for u in units), dtype=np.int64)
    return codes, len(index)


def cluster_weights(units, n_boot: int, seed: int) -> np.ndarray:
    """int32 [n_boot, n] row multiplicities of a cluster bootstrap.

    Each resample draws K units with replacement from the K distinct units (not stratified by
    class); a row's weight is how often its unit was drawn, so all rows of a unit move together
    and every resample holds exactly K units (counted with multiplicity). The draw depends only
    on (the distinct units in first-seen order, n_boot, seed): two methods scored on the same
    rows get the same W, which is what makes `paired_*` comparisons paired.
    """
    codes, k = _unit_codes(units)
    if k == 0:
        return np.zeros((n_boot, 0), dtype=np.int32)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, k, size=(n_boot, k))
    counts = np.bincount((draws + k * np.arange(n_boot)[:, None]).ravel(), minlength=n_boot * k)
    return counts.reshape(n_boot, k).astype(np.int32)[:, codes]


def _weights(W, n: int) -> np.ndarray:
    W = np.asarray(W)
    if W.ndim == 1:
        W = W[None, :]
    if W.ndim != 2 or W.shape[1] != n:
        raise ValueError(f"weights {W.shape} do not match {n} rows")
    if W.dtype.kind not in "iu":
        raise ValueError(f"weights must be integer multiplicities, got {W.dtype}")
    return W


def weighted_auroc(scores, y, W) -> np.ndarray:
    """AUROC [B] of every resample given integer row weights W [B, n], ties counting one half:
    exactly `metrics.auroc(np.repeat(scores, W[b]), np.repeat(y, W[b]))`. NaN where a class has
    zero weight.

    One sort of the scores serves all resamples: ties are grouped, each group's positive and
    negative weights summed, and U = sum_g P_g (N_{<g} + N_g / 2) with N_{<g} a cumulative sum
    along the sorted axis, O(B n) in integers, one division at the end.
    """
    s = np.asarray(scores, np.float64).ravel()
    yy = np.asarray(y).ravel()
    if s.shape != yy.shape:
        raise ValueError(f"scores {s.shape} and labels {yy.shape} differ in length")
    W = _weights(W, len(s))
    if len(s) == 0:
        return np.full(W.shape[0], np.nan)
    order = np.argsort(s, kind="stable")
    ss, neg = s[order], (yy[order] == 0)
    Ws = W[:, order]
    Wn = Ws * neg  # negative weights, positives zeroed
    Wp = Ws - Wn
    starts = np.r_[0, np.nonzero(np.diff(ss))[0] + 1]
    if len(starts) < len(ss):  # ties: one column per distinct score
        Wn = np.add.reduceat(Wn, starts, axis=1)
        Wp = np.add.reduceat(Wp, starts, axis=1)
    Wn, Wp = Wn.astype(np.int64), Wp.astype(np.int64)
    below = np.cumsum(Wn, axis=1) - Wn  # negative weight strictly below each group
    u2 = np.einsum("bg,bg->b", Wp, 2 * below + Wn)  # twice U, exact in integers
    n_pos, n_neg = Wp.sum(axis=1), Wn.sum(axis=1)
    denom = 2 * n_pos * n_neg
    out = np.full(W.shape[0], np.nan)
    ok = denom > 0
    out[ok] = u2[ok] / denom[ok]
    return out


def weighted_threshold_at_fpr(benign_scores, W, fpr: float) -> np.ndarray:
    """Threshold [B] that `metrics.threshold_at_fpr` returns on each resample's replicated benign
    scores: the (m+1)-th highest with m = floor(fpr * total weight). NaN where the resample
    holds no benign row."""
    s = np.asarray(benign_scores, np.float64).ravel()
    W = _weights(W, len(s))
    if not 0.0 <= fpr < 1.0:
        raise ValueError(f"fpr must be in [0, 1), got {fpr}")
    out = np.full(W.shape[0], np.nan)
    if len(s) == 0:
        return out
    order = np.argsort(-s, kind="stable")
    cum = np.cumsum(W[:, order], axis=1, dtype=np.int64)
    total = cum[:, -1]
    m = np.floor(fpr * total + 1e-9).astype(np.int64)  # the same rounding as threshold_at_fpr
    # replicated position m lies in the first sorted row whose cumulative count exceeds m
    idx = np.minimum((cum <= m[:, None]).sum(axis=1), len(s) - 1)
    ok = total > 0
    out[ok] = s[order][idx[ok]]
    return out


def weighted_mean(flags, W) -> np.ndarray:
    """Weighted proportion [B] of true `flags` ([n], or [B, n] for per-resample thresholds):
    recall over positives or FPR over negatives. NaN where a resample's total weight is 0."""
    W = np.asarray(W)
    f = np.asarray(flags, dtype=bool)
    W = _weights(W, f.shape[-1])
    if f.ndim == 2 and f.shape[0] != W.shape[0]:
        raise ValueError(f"flags {f.shape} do not match weights {W.shape}")
    hits = (W * f).sum(axis=1, dtype=np.int64)
    total = W.sum(axis=1, dtype=np.int64)
    out = np.full(W.shape[0], np.nan)
    ok = total > 0
    out[ok] = hits[ok] / total[ok]
    return out


def _check_rows(n: int, units, what: str = "units") -> None:
    if len(units) != n:
        raise ValueError(f"{what} has {len(units)} entries for {n} rows")


def _p_two_sided(diffs: np.ndarray, diff: float) -> float:
    """Share of resampled differences on the other side of zero from `diff` (zero counting as
    the other side), doubled and capped at 1. Crude: 0 means below about 2 / n_boot."""
    d = diffs[np.isfinite(diffs)]
    if len(d) == 0 or not np.isfinite(diff):
        return float("nan")
    if diff == 0:
        return 1.0
    share = np.mean(d <= 0) if diff > 0 else np.mean(d >= 0)
    return float(min(1.0, 2 * share))


def cluster_auroc_ci(
    scores, y, units, *, n_boot: int = N_BOOT, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile CI of AUROC resampling units (behaviours), not rows: rows of one behaviour are
    correlated, so a row bootstrap is too narrow. Resamples where a class is absent are dropped."""
    s = np.asarray(scores, np.float64).ravel()
    _check_rows(len(s), units)
    return _percentile(weighted_auroc(s, y, cluster_weights(units, n_boot, seed)), level)


def paired_auroc_diff(
    scores_a, scores_b, y, units, *, n_boot: int = N_BOOT, level: float = 0.95, seed: int = 0
) -> dict:
    """AUROC_a - AUROC_b on the same rows, with a clustered, paired percentile interval: both
    methods are scored on the same unit resample (one W), so the difficulty of the drawn
    behaviours, shared by both, cancels in the difference.

    Returns diff (full-data point estimate), low, high, p_two_sided (crude bootstrap p-value,
    see `_p_two_sided`), n_units, n_boot.
    """
    sa = np.asarray(scores_a, np.float64).ravel()
    sb = np.asarray(scores_b, np.float64).ravel()
    if sa.shape != sb.shape:
        raise ValueError(f"scores_a {sa.shape} and scores_b {sb.shape} differ in length")
    _check_rows(len(sa), units)
    W = cluster_weights(units, n_boot, seed)
    diffs = weighted_auroc(sa, y, W) - weighted_auroc(sb, y, W)
    diff = auroc(sa, y) - auroc(sb, y)
    low, high = _percentile(diffs, level)
    return {"diff": float(diff), "low": low, "high": high,
            "p_two_sided": _p_two_sided(diffs, diff),
            "n_units": _unit_codes(units)[1], "n_boot": n_boot}


def _split_weights(cal_units, units, n_cal: int, n: int, same_split: bool, n_boot: int,
                   seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(calibration W, test W). Calibration units are drawn with `seed`; a different test split
    draws its own units independently with `seed + 1`; the same split uses one W for both."""
    _check_rows(n_cal, cal_units, "cal_units")
    _check_rows(n, units)
    Wc = cluster_weights(cal_units, n_boot, seed)
    if same_split:
        if n_cal != n:
            raise ValueError("same_split=True but the calibration and test splits differ in length")
        return Wc, Wc
    return Wc, cluster_weights(units, n_boot, seed + 1)


def _recall_fpr_resamples(cal_benign: np.ndarray, Wc_benign: np.ndarray, s: np.ndarray,
                          yy: np.ndarray, Wt: np.ndarray, fpr: float):
    """Per resample: threshold from the calibration benign rows, then weighted recall of the
    test positives and FPR of the test negatives strictly above it."""
    t = weighted_threshold_at_fpr(cal_benign, Wc_benign, fpr)
    pos, neg = yy == 1, yy == 0
    rec = weighted_mean(s[pos][None, :] > t[:, None], Wt[:, pos])
    fp = weighted_mean(s[neg][None, :] > t[:, None], Wt[:, neg])
    bad = ~np.isfinite(t)  # no benign calibration row drawn: no threshold
    rec[bad], fp[bad] = np.nan, np.nan
    return t, rec, fp


def recall_ci(
    cal_scores, cal_y, cal_units, scores, y, units, fpr: float, *, same_split: bool,
    n_boot: int = N_BOOT, level: float = 0.95, seed: int = 0,
) -> dict:
    """Recall (and FPR reached) at a threshold calibrated on the benign rows of a calibration
    split for target `fpr`, with clustered percentile intervals that include the threshold's own
    uncertainty: every resample draws calibration units (threshold via
    `weighted_threshold_at_fpr`) and test units (weighted recall of test positives with
    score > threshold, weighted FPR of test negatives).

    Streams: calibration units use `seed`; when `same_split` is false the test units are drawn
    independently with `seed + 1`; when true (test split is the calibration split) one W serves
    both. Point estimates use the full-data threshold. Returns recall, recall_low, recall_high,
    fpr, fpr_low, fpr_high, threshold, threshold_low, threshold_high.
    """
    cs, cy = np.asarray(cal_scores, np.float64).ravel(), np.asarray(cal_y).ravel()
    s, yy = np.asarray(scores, np.float64).ravel(), np.asarray(y).ravel()
    Wc, Wt = _split_weights(cal_units, units, len(cs), len(s), same_split, n_boot, seed)
    benign = cy == 0
    t, rec, fp = _recall_fpr_resamples(cs[benign], Wc[:, benign], s, yy, Wt, fpr)
    t0 = threshold_at_fpr(cs[benign], fpr)
    r_lo, r_hi = _percentile(rec, level)
    f_lo, f_hi = _percentile(fp, level)
    t_lo, t_hi = _percentile(t, level)
    return {"recall": recall_at_fpr(s, yy, t0), "recall_low": r_lo, "recall_high": r_hi,
            "fpr": fpr_at_threshold(s, yy, t0), "fpr_low": f_lo, "fpr_high": f_hi,
            "threshold": t0, "threshold_low": t_lo, "threshold_high": t_hi}


def paired_recall_diff(
    cal_scores_a, cal_scores_b, cal_y, cal_units, scores_a, scores_b, y, units, fpr: float, *,
    same_split: bool, n_boot: int = N_BOOT, level: float = 0.95, seed: int = 0,
) -> dict:
    """Recall_a - recall_b at thresholds calibrated for target `fpr` on the same calibration
    split, each method with its own threshold from the same calibration resample and its recall
    on the same test resample (streams as in `recall_ci`), so shared difficulty cancels.
    Returns diff, low, high, p_two_sided, recall_a, recall_b, n_boot."""
    cy, yy = np.asarray(cal_y).ravel(), np.asarray(y).ravel()
    ca = np.asarray(cal_scores_a, np.float64).ravel()
    cb = np.asarray(cal_scores_b, np.float64).ravel()
    sa = np.asarray(scores_a, np.float64).ravel()
    sb = np.asarray(scores_b, np.float64).ravel()
    if ca.shape != cb.shape or sa.shape != sb.shape:
        raise ValueError("the two methods must be scored on the same rows")
    Wc, Wt = _split_weights(cal_units, units, len(ca), len(sa), same_split, n_boot, seed)
    benign = cy == 0
    _, ra, _ = _recall_fpr_resamples(ca[benign], Wc[:, benign], sa, yy, Wt, fpr)
    _, rb, _ = _recall_fpr_resamples(cb[benign], Wc[:, benign], sb, yy, Wt, fpr)
    rec_a = recall_at_fpr(sa, yy, threshold_at_fpr(ca[benign], fpr))
    rec_b = recall_at_fpr(sb, yy, threshold_at_fpr(cb[benign], fpr))
    diffs = ra - rb
    diff = rec_a - rec_b
    low, high = _percentile(diffs, level)
    return {"diff": float(diff), "low": low, "high": high,
            "p_two_sided": _p_two_sided(diffs, diff),
            "recall_a": rec_a, "recall_b": rec_b, "n_boot": n_boot}
