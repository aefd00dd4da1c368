"""Figures from a `Report` (matplotlib, Agg): ROC curves per split, score histograms per family,
and AUROC against k for the sparse probes."""

from __future__ import annotations

import io
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from assay.eval.schema import MethodResult, Report  # noqa: E402


def row_label(r: MethodResult) -> str:
    """How a method is named in tables and legends: method, features, SAE."""
    k = f" k={r.k}" if r.k is not None and r.method != "1-sparse" else ""
    label = f"{r.method}{k} [{r.features}]"
    return f"{label} on {r.sae}" if r.sae else label


def roc_figure(report: Report, split: str, max_curves: int = 12):
    fig, ax = plt.subplots(figsize=(5.5, 5))
    rows = [r for r in report.results if r.split == split and r.roc is not None and r.auroc is not None]
    rows = sorted(rows, key=lambda r: -(r.auroc or 0))[:max_curves]
    for r in rows:
        ax.plot(r.roc.fpr, r.roc.tpr, lw=1.4, label=f"{row_label(r)}  AUROC {r.auroc:.3f}")
    ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1)
    if rows:
        ax.axvline(rows[0].target_fpr, ls="--", color="grey", lw=0.8)
    ax.set(xlabel="false-positive rate", ylabel="true-positive rate (recall)", title=f"ROC: {split}")
    ax.legend(fontsize=6.5, loc="lower right")
    fig.tight_layout()
    return fig


def histogram_figure(result: MethodResult):
    """Score distributions per group (harmful solid, benign hatched), with the threshold."""
    by_group = defaultdict(list)
    for h in result.histograms:
        by_group[h.group].append(h)
    groups = sorted(by_group)
    fig, axes = plt.subplots(len(groups), 1, figsize=(6, 1.1 + 0.9 * len(groups)), sharex=True, squeeze=False)
    for ax, g in zip(axes[:, 0], groups):
        for h in by_group[g]:
            edges = np.asarray(h.bin_edges)
            ax.stairs(h.counts, edges, fill=h.label == 1, alpha=0.6 if h.label == 1 else 1.0,
                      color="tab:red" if h.label == 1 else "tab:blue", hatch=None if h.label == 1 else "//",
                      label="harmful" if h.label == 1 else "benign")
        if result.threshold is not None:
            ax.axvline(result.threshold, color="black", ls="--", lw=0.8)
        ax.set_ylabel(g, rotation=0, ha="right", fontsize=7)
        ax.tick_params(labelsize=6)
    axes[0, 0].set_title(f"{row_label(result)}: scores on {result.split} (dashed: threshold)", fontsize=8)
    axes[-1, 0].set_xlabel("score (logit)")
    from matplotlib.patches import Patch

    fig.legend(handles=[Patch(color="tab:red", alpha=0.6, label="harmful"),
                        Patch(facecolor="none", edgecolor="tab:blue", hatch="//", label="benign")],
               fontsize=6, loc="upper right")
    fig.tight_layout()
    return fig


def k_sweep_figure(report: Report):
    """AUROC vs k of the k-sparse SAE probes, one panel per split, one line per (SAE, selection,
    aggregation), with the best dense probe (chosen on validation) as a dashed line; None if no
    k-sparse results."""
    lines = defaultdict(list)
    for r in report.results:
        if r.kind == "sae_sparse" and r.k is not None and r.auroc is not None and r.method != "1-sparse":
            lines[(r.split, r.sae, r.method, r.features)].append((r.k, r.auroc))
    if not lines:
        return None
    splits = [s for s in report.splits() if any(key[0] == s for key in lines)]
    dense_val = [r for r in report.results if r.kind == "dense" and r.split == "val" and r.auroc is not None]
    best = max(dense_val, key=lambda r: r.auroc) if dense_val else None
    saes = sorted({key[1] for key in lines if key[1]})
    colours = {sae: plt.cm.tab10(i) for i, sae in enumerate(saes)}
    styles = ["-", "--", ":", "-."]
    variants = sorted({(key[2], key[3]) for key in lines})
    fig, axes = plt.subplots(1, len(splits), figsize=(4.2 * len(splits), 3.8), sharey=True, squeeze=False)
    for ax, split in zip(axes[0], splits):
        for (s, sae, method, feats), pts in sorted(lines.items(), key=lambda kv: str(kv[0])):
            if s != split:
                continue
            pts.sort()
            ax.plot([k for k, _ in pts], [a for _, a in pts], marker="o", ms=3, lw=1.2, color=colours.get(sae),
                    ls=styles[variants.index((method, feats)) % len(styles)], label=f"{sae}: {method} [{feats}]")
        if best is not None:
            dense = next((r for r in report.results if r.split == split and r.method == best.method
                          and r.features == best.features and r.auroc is not None), None)
            if dense is not None:
                ax.axhline(dense.auroc, color="black", ls="--", lw=1, label=f"dense {best.method} [{best.features}]")
        ax.set_xscale("log")
        ax.set(xlabel="k (latents)", title=split)
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("AUROC")
    handles, labels = axes[0, -1].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=6.5, loc="lower center", ncol=2, frameon=False)
    fig.suptitle("k-sparse SAE probes: AUROC vs k", fontsize=9)
    fig.tight_layout(rect=(0, 0.06 + 0.035 * ((len(labels) + 1) // 2), 1, 1))
    return fig


def png_bytes(fig, dpi: int = 110) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()


def report_figures(report: Report, hist_split: str | None = None, max_hists: int = 6) -> dict[str, bytes]:
    """Every figure as PNG bytes, keyed by a file-name stem. Histograms: the best methods on the
    OOD split (or the last split) so the hard families are visible."""
    figs: dict[str, bytes] = {}
    for split in report.splits():
        figs[f"roc_{split}"] = png_bytes(roc_figure(report, split))
    splits = report.splits()
    hist_split = hist_split or ("ood" if "ood" in splits else (splits[-1] if splits else None))
    rows = sorted((r for r in report.results if r.split == hist_split and r.histograms), key=lambda r: -(r.auroc or 0))
    for i, r in enumerate(rows[:max_hists]):
        figs[f"hist_{hist_split}_{i:02d}"] = png_bytes(histogram_figure(r))
    if (fig := k_sweep_figure(report)) is not None:
        figs["k_sweep"] = png_bytes(fig)
    return figs
