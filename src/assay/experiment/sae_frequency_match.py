"""Families of SAEs compared at matched L0 by interpolation along each family's own curve.

Each family (JumpReLU, QF-JumpReLU at one omega_0, Gated, TopK) is trained at several sparsity
levels. Its SAEs rarely land exactly on a target L0, and tuning one SAE's coefficient until it does
changes the very penalty being compared. So each SAE is measured where it landed, and a family's
metric at a target L0 is read off the line through its two SAEs that bracket the target (linear in
log L0); targets outside a family's measured range are not compared (no extrapolation).

"Dense" is GDM's definition: a latent firing on more than 10% of held-out tokens. Intervals come
from a paired block bootstrap over the held-out tokens (blocks of consecutive tokens, the same
resample for every SAE): they hold the measurement's noise, not the variation between training
seeds, which one SAE per level cannot show.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from assay.sae.metrics import DENSE_FREQ

BLOCK_TOKENS = 256  # consecutive held-out tokens resampled together (about a document)


def interpolate(l0: Sequence[float], value: Sequence[float], at: float) -> float | None:
    """`value` at L0 `at`, linear in log L0 between the two measured points that bracket it (None
    outside the measured range)."""
    pts = sorted(zip(l0, value))
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 <= at <= x1:
            if x1 == x0:
                return float(y0)
            w = (math.log(at) - math.log(x0)) / (math.log(x1) - math.log(x0))
            return float(y0 + w * (y1 - y0))
    return None


def _dense_and_l0(fired: np.ndarray, tokens: np.ndarray, draws: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per resample: (dense latent count, L0), from firing counts per block `[n_blocks, d_sae]`, the
    tokens per block and how often each resample drew each block `[n_boot, n_blocks]`."""
    freq = (draws @ fired) / np.maximum(draws @ tokens, 1)[:, None]
    return (freq > DENSE_FREQ).sum(-1).astype(float), freq.sum(-1)


def compare_at_matched_l0(rows: list[dict[str, Any]], fired: dict[str, np.ndarray], block_tokens: np.ndarray,
                          baseline: str, others: Sequence[str], targets: Sequence[float], n_boot: int = 1000,
                          seed: int = 0) -> list[dict[str, Any]]:
    """Per other family and target L0 inside both families' measured ranges: dense latents and FVU
    of each, interpolated at that L0, and the difference other - baseline in dense latents with a
    95% paired block-bootstrap interval. `rows` are the SAEs' records (`sae`, `variant`, `l0`,
    `dense`, `fvu`, `delta_lm_loss`); `fired[sae]` their firing counts per held-out block
    `[n_blocks, d_sae]`; `block_tokens` the tokens in each block."""
    rng = np.random.default_rng(seed)
    n_blocks = len(block_tokens)
    draws = np.stack([np.bincount(rng.integers(0, n_blocks, n_blocks), minlength=n_blocks) for _ in range(n_boot)])
    draws, tokens = draws.astype(float), np.asarray(block_tokens, dtype=float)
    family = {v: [r for r in rows if r["variant"] == v] for v in [baseline, *others]}
    boot = {r["sae"]: _dense_and_l0(fired[r["sae"]].astype(float), tokens, draws) for rs in family.values() for r in rs}
    out = []
    for other in others:
        a, b = family[baseline], family[other]
        if len(a) < 2 or len(b) < 2:
            continue
        for t in targets:
            point = {key: (interpolate([r["l0"] for r in b], [r[key] for r in b], t),
                           interpolate([r["l0"] for r in a], [r[key] for r in a], t))
                     for key in ("dense", "fvu", "delta_lm_loss")}
            if point["dense"][0] is None or point["dense"][1] is None:
                continue
            diffs = []
            for i in range(n_boot):
                da = interpolate([boot[r["sae"]][1][i] for r in a], [boot[r["sae"]][0][i] for r in a], t)
                db = interpolate([boot[r["sae"]][1][i] for r in b], [boot[r["sae"]][0][i] for r in b], t)
                if da is not None and db is not None:
                    diffs.append(db - da)
            lo, hi = (np.quantile(diffs, [0.025, 0.975]).tolist() if len(diffs) >= 0.9 * n_boot
                      else [float("nan"), float("nan")])
            diff = point["dense"][0] - point["dense"][1]
            verdict = ("fewer dense latents" if hi < 0 else "more dense latents" if lo > 0 else
                       "no difference in dense latents beyond noise" if math.isfinite(lo) else
                       "no interval (the target sits at the edge of a family's range in most resamples)")
            out.append({"variant": other, "baseline": baseline, "l0": t, "dense": point["dense"][0],
                        "baseline_dense": point["dense"][1], "dense_diff": diff, "dense_diff_ci": [lo, hi],
                        "fvu": point["fvu"][0], "baseline_fvu": point["fvu"][1],
                        "delta_lm_loss": point["delta_lm_loss"][0], "baseline_delta_lm_loss": point["delta_lm_loss"][1],
                        "verdict": verdict, "resamples": len(diffs)})
    return out


def comparison_levels(rows: list[dict[str, Any]], variants: Sequence[str], targets: Sequence[float]) -> list[float]:
    """The targets inside every named family's measured L0 range; where none is, the geometric
    middle of the ranges' overlap (empty when they do not overlap)."""
    ranges = [(min(r["l0"] for r in rows if r["variant"] == v), max(r["l0"] for r in rows if r["variant"] == v))
              for v in variants if any(r["variant"] == v for r in rows)]
    lo, hi = max(a for a, _ in ranges), min(b for _, b in ranges)
    if lo > hi:
        return []
    inside = [float(t) for t in targets if lo <= t <= hi]
    return inside or [math.sqrt(lo * hi)]
