"""Uniform and frequency-weighted means of per-latent scores, their intervals, bins and the plot.

A uniform mean over latents counts a latent that fires on one token in 10,000 the same as one that
fires on every other token; but what a reader of the SAE meets, token by token, is latents in
proportion to how often they fire. Weighting each latent's score by its firing frequency,
    score_fw = sum_i f_i s_i / sum_i f_i,
gives the interpretability of the average *firing*, and is what dense, uninterpretable latents drag
down (Google DeepMind's negative-results post on SAEs). Both are reported, with percentile intervals
from resampling latents. Over a fixed set of latents (`means_with_ci`) both are computed exactly;
over a dictionary (`sampled_means`) the uniform mean comes from a uniform sample of latents and the
weighted one from a sample drawn in proportion to frequency.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from assay.metrics.bootstrap import N_BOOT, cluster_weights

BIN_EDGES = np.logspace(-4, 0, 9)  # two bins per decade of firing frequency, 1e-4 .. 1


def frequency_weighted_mean(scores, frequencies) -> float:
    """sum f_i s_i / sum f_i over latents with a finite score; NaN when none has weight."""
    s, f = np.asarray(scores, float), np.asarray(frequencies, float)
    ok = np.isfinite(s)
    total = f[ok].sum()
    return float((f[ok] * s[ok]).sum() / total) if total > 0 else float("nan")


def means_with_ci(scores, frequencies, *, n_boot: int = N_BOOT, level: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """Uniform and frequency-weighted means of the scored latents, each with a percentile interval
    over the same resamples of latents (so the two intervals are comparable)."""
    s, f = np.asarray(scores, float), np.asarray(frequencies, float)
    ok = np.isfinite(s)
    s, f = s[ok], f[ok]
    out: dict[str, Any] = {"n_scored": int(len(s))}
    if not len(s):
        nan = float("nan")
        return {**out, "uniform": nan, "uniform_ci": [nan, nan], "weighted": nan, "weighted_ci": [nan, nan]}
    W = cluster_weights(np.arange(len(s)), n_boot, seed).astype(float)  # each latent its own unit
    with np.errstate(invalid="ignore", divide="ignore"):
        uni = (W * s).sum(1) / W.sum(1)
        fw = (W * f * s).sum(1) / (W * f).sum(1)
    a = (1 - level) / 2

    def ci(x: np.ndarray) -> list[float]:
        x = x[np.isfinite(x)]
        return [float(v) for v in np.quantile(x, [a, 1 - a])] if len(x) else [float("nan")] * 2

    return {**out, "uniform": float(s.mean()), "uniform_ci": ci(uni),
            "weighted": frequency_weighted_mean(s, f), "weighted_ci": ci(fw)}


def bootstrap_mean(x, *, n_boot: int = N_BOOT, seed: int = 0) -> tuple[float, np.ndarray]:
    """The mean of the finite values of `x` and `n_boot` bootstrap replicates of it (each value its
    own unit); NaN and an empty array when nothing is finite."""
    x = np.asarray(x, float)
    x = x[np.isfinite(x)]
    if not len(x):
        return float("nan"), np.zeros(0)
    W = cluster_weights(np.arange(len(x)), n_boot, seed).astype(float)
    return float(x.mean()), (W * x).sum(1) / W.sum(1)


def percentile_ci(replicates: np.ndarray, level: float = 0.95) -> list[float]:
    r = np.asarray(replicates, float)
    r = r[np.isfinite(r)]
    a = (1 - level) / 2
    return [float(v) for v in np.quantile(r, [a, 1 - a])] if len(r) else [float("nan")] * 2


def sampled_means(uniform_scores, draw_scores, *, n_boot: int = N_BOOT,
                  seed: int = 0) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Uniform and frequency-weighted means of a dictionary's scores, estimated from two samples of
    its latents: `uniform_scores` of latents drawn uniformly (their plain mean estimates the uniform
    mean) and `draw_scores` of latents drawn with probability proportional to firing frequency, with
    replacement, one entry per draw (their plain mean estimates sum f_i s_i / sum f_i without bias,
    and, unlike weighting a uniform sample, does not rest on the few dense latents a small uniform
    sample happens to hold). Returns the means with percentile intervals, and the bootstrap
    replicates (for differences between dictionaries)."""
    u, ur = bootstrap_mean(uniform_scores, n_boot=n_boot, seed=seed)
    w, wr = bootstrap_mean(draw_scores, n_boot=n_boot, seed=seed + 1)
    n_u = int(np.isfinite(np.asarray(uniform_scores, float)).sum())
    n_w = int(np.isfinite(np.asarray(draw_scores, float)).sum())
    return ({"n_scored": n_u, "n_draws_scored": n_w, "uniform": u, "uniform_ci": percentile_ci(ur),
             "weighted": w, "weighted_ci": percentile_ci(wr)}, {"uniform": ur, "weighted": wr})


def frequency_bins(scores, frequencies, edges: np.ndarray = BIN_EDGES) -> list[dict[str, Any]]:
    """Mean score of the latents in each firing-frequency bin (frequencies below the first edge go
    to the first bin)."""
    s, f = np.asarray(scores, float), np.asarray(frequencies, float)
    ok = np.isfinite(s)
    idx = np.clip(np.searchsorted(edges, f, side="right") - 1, 0, len(edges) - 2)
    rows = []
    for b in range(len(edges) - 1):
        m = ok & (idx == b)
        rows.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "n": int(m.sum()),
                     "mean": float(s[m].mean()) if m.any() else None})
    return rows


def plot(runs: dict[str, dict[str, Any]], path: Path, title: str) -> Path:
    """Score against firing frequency (log axis), one panel per test, one colour per run; the
    uniform mean dashed, the frequency-weighted mean solid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from assay.fileio import atomic_path

    tests = ["detection", "fuzzing"]
    fig, axes = plt.subplots(1, len(tests), figsize=(11, 4.2), sharey=True)
    colours = {"real": "tab:blue", "shuffled": "tab:orange", "unstructured": "tab:green", "random_sae": "tab:grey"}
    for ax, test in zip(axes, tests):
        for run, r in runs.items():
            f, s = np.asarray(r["frequency"], float), np.asarray(r[test], float)
            ok = np.isfinite(s) & (f > 0)
            c = colours.get(run, None)
            ax.scatter(f[ok], s[ok], s=14, alpha=0.7, color=c, label=run)
            m = r["summary"][test]
            if np.isfinite(m["uniform"]):
                ax.axhline(m["uniform"], color=c, ls="--", lw=1)
                ax.axhline(m["weighted"], color=c, ls="-", lw=1.5)
        ax.set_xscale("log")
        ax.axhline(0.5, color="black", lw=0.5, ls=":")
        ax.set_xlabel("firing frequency (fraction of tokens)")
        ax.set_title(f"{test} AUROC")
        ax.set_ylim(-0.02, 1.02)
    axes[0].set_ylabel("AUROC per latent")
    axes[0].legend(fontsize=8, loc="lower left")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return path
