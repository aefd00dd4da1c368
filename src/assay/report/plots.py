"""Figures from a `Report` (matplotlib, Agg): ROC curves per split, score histograms per family,
and AUROC against k for the sparse probes."""

from __future__ import annotations

import io
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from assay.probes.names import REFERENCE, in_family, info, label  # noqa: E402
from assay.report.schema import MethodResult, Report  # noqa: E402


def primary(report: Report) -> list[MethodResult]:
    """The rows of each configuration's first seed (deterministic methods have no seed)."""
    seed = report.provenance.seed
    return [r for r in report.results if r.seed is None or seed is None or r.seed == seed]


_KEYS = ("method", "features", "sae", "k", "selector", "seed")


def val_auroc(report: Report, r: MethodResult) -> float:
    """The validation AUROC of r's configuration: what decides which rows a figure shows."""
    if getattr(report, "_val_index", None) is None or report._val_index[0] is not report.results:
        index = {tuple(getattr(x, k) for k in _KEYS): x.auroc or 0.0 for x in report.results if x.split == "val"}
        object.__setattr__(report, "_val_index", (report.results, index))
    return report._val_index[1].get(tuple(getattr(r, k) for k in _KEYS), 0.0)


def roc_figure(report: Report, split: str, max_curves: int = 12):
    fig, ax = plt.subplots(figsize=(5.5, 5))
    rows = [r for r in primary(report) if r.split == split and r.roc is not None and r.auroc is not None]
    rows = sorted(rows, key=lambda r: -val_auroc(report, r))[:max_curves]  # which to show: chosen on val
    for r in rows:
        ax.plot(r.roc.fpr, r.roc.tpr, lw=1.4, label=f"{label(r)}  AUROC {r.auroc:.3f}")
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
    axes[0, 0].set_title(f"{label(result)}: scores on {result.split} (dashed: threshold)", fontsize=8)
    axes[-1, 0].set_xlabel("score (logit)")
    from matplotlib.patches import Patch

    fig.legend(handles=[Patch(color="tab:red", alpha=0.6, label="harmful"),
                        Patch(facecolor="none", edgecolor="tab:blue", hatch="//", label="benign")],
               fontsize=6, loc="upper right")
    fig.tight_layout()
    return fig


def k_sweep_figure(report: Report):
    """AUROC vs k of the k-sparse SAE probes, one panel per split, one line per SAE (its selector
    and aggregation: the configuration best on validation at the headline k), with the dense
    logistic probe best on validation as a dashed line; None if no k-sparse results."""
    rows = [r for r in primary(report) if info(r.method).sweeps_k and r.k is not None and r.auroc is not None]
    if not rows:
        return None
    head_k = report.diagnostics.get("headline_k") or max(r.k for r in rows)
    val_at_k = [r for r in rows if r.split == "val" and r.k == head_k]
    chosen = {}
    for r in sorted(val_at_k, key=lambda r: (r.auroc, r.features, r.selector or "")):
        chosen[r.sae] = (r.selector, r.features)  # the last (highest val AUROC) wins
    splits = [s for s in report.splits() if any(r.split == s for r in rows)]
    dense_val = [r for r in primary(report) if in_family(r.method, REFERENCE) and r.split == "val" and r.auroc is not None]
    best = max(dense_val, key=lambda r: r.auroc) if dense_val else None
    colours = {sae: plt.cm.tab10(i) for i, sae in enumerate(sorted(chosen))}
    fig, axes = plt.subplots(1, len(splits), figsize=(4.2 * len(splits), 3.8), sharey=True, squeeze=False)
    for ax, split in zip(axes[0], splits):
        for sae, (sel, feats) in sorted(chosen.items()):
            pts = sorted((r.k, r.auroc) for r in rows if r.split == split and r.sae == sae and r.selector == sel
                         and r.features == feats)
            ax.plot([k for k, _ in pts], [a for _, a in pts], marker="o", ms=3, lw=1.2, color=colours[sae],
                    label=f"{sae}: {sel} [{feats}]")
        if best is not None:
            dense = next((r for r in primary(report) if r.split == split and r.method == best.method
                          and r.features == best.features and r.auroc is not None), None)
            if dense is not None:
                ax.axhline(dense.auroc, color="black", ls="--", lw=1, label=f"dense {best.method} [{best.features}]")
        ax.axvline(head_k, color="grey", ls=":", lw=0.8)
        ax.set_xscale("log")
        ax.set(xlabel="k (latents)", title=split)
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("AUROC")
    handles, labels = axes[0, -1].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=6.5, loc="lower center", ncol=2, frameon=False)
    fig.suptitle("k-sparse SAE probes: AUROC vs k (selector and aggregation chosen on validation)", fontsize=9)
    fig.tight_layout(rect=(0, 0.06 + 0.035 * ((len(labels) + 1) // 2), 1, 1))
    return fig


def layer_sweep_figure(sweep: dict | None):
    """The dense probe against depth (`diagnostics.layer_sweep`): validation and OOD AUROC (left)
    and recall at the target FPR (right), one colour per aggregation (validation solid, OOD
    dashed), the layer used marked, and the concatenated-layers probe as points at the right;
    None without a sweep."""
    if not sweep:
        return None
    rows = [r for r in sweep["rows"] if isinstance(r["layer"], int)]
    concat = [r for r in sweep["rows"] if r["layer"] == "concat"]
    x_concat = sweep["n_layers"] + 0.5
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharex=True)
    for i, agg in enumerate(sweep["aggregations"]):
        colour = plt.cm.tab10(i)
        pts = sorted((r["layer"], r) for r in rows if r["aggregation"] == agg)
        c = next((r for r in concat if r["aggregation"] == agg), None)
        for ax, metric in zip(axes, ("auroc", "recall")):
            for split, ls in (("val", "-"), ("ood", "--")):
                ax.plot([layer for layer, _ in pts], [r[f"{split}_{metric}"] for _, r in pts], ls=ls, lw=1.2,
                        marker="o", ms=2.5, color=colour, label=f"{agg} {split}" if metric == "auroc" else None)
                if c is not None:
                    ax.plot([x_concat], [c[f"{split}_{metric}"]], marker="s" if split == "val" else "D", ms=5,
                            color=colour, mfc="none" if split == "ood" else colour)
    layers_txt = "+".join(map(str, sweep["concat_layers"]))
    for ax, what in zip(axes, ("AUROC", f"recall at {sweep['target_fpr']:.0%} FPR")):
        ax.axvline(sweep["used"], color="black", lw=0.9, ls=":")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set(xlabel=f"layer (block index; right: layers {layers_txt} concatenated)", ylabel=what)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=6.5, ncol=2, loc="lower right")
    how = "chosen on validation" if sweep["how"] == "validation" else "given"
    fig.suptitle(f"Dense logistic probe at every layer ({sweep['dtype']}); dotted: layer {sweep['used']} ({how}); "
                 "solid: validation, dashed: OOD", fontsize=9)
    fig.tight_layout()
    return fig


def autointerp_figure(ai: dict | None):
    """Detection AUROC per study SAE (`diagnostics.autointerp`), uniform (left) and
    frequency-weighted (right): the dictionary's estimate with its 95% interval, the probe's latents,
    the two chance controls and the random-SAE baseline; None without auto-interp."""
    if not ai or not ai.get("rows"):
        return None
    series = [("real", "all latents"), ("real_probe", "probe latents"), ("shuffled", "shuffled explanations"),
              ("unstructured", "token-blind latents"), ("random_sae", "random SAE (matched frequencies)")]
    rows = ai["rows"]
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.6 * len(rows) + 4), 4), sharey=True)
    width = 0.8 / len(series)
    for ax, (w, title) in zip(axes, (("uniform", "uniform mean over latents"), ("weighted", "frequency-weighted"))):
        for j, (run, name) in enumerate(series):
            xs, ys, errs = [], [], [[], []]
            for i, r in enumerate(rows):
                m = (r.get(run) or {}).get("detection") or {}
                v = m.get(w)
                if v is None or v != v:
                    continue
                lo, hi = m.get(f"{w}_ci") or [v, v]
                xs.append(i + (j - len(series) / 2 + 0.5) * width)
                ys.append(v)
                errs[0].append(max(0.0, v - lo) if run == "real" else 0.0)
                errs[1].append(max(0.0, hi - v) if run == "real" else 0.0)
            ax.bar(xs, ys, width, yerr=errs, label=name, color=plt.cm.tab10(j), capsize=2)
        ax.axhline(0.5, color="black", lw=0.8, ls=":")
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels([f"{r['sae']}\n{r['explainer']}" for r in rows], fontsize=7)
        ax.set_title(title, fontsize=9)
        ax.set_ylim(0, 1)
    axes[0].set_ylabel("detection AUROC (0.5 = chance)")
    axes[0].legend(fontsize=6.5, loc="lower left")
    fig.tight_layout()
    return fig


def family_figure(report: Report):
    """Each family's configuration chosen on validation: AUROC with its clustered 95% interval on
    the calibration (held-out in-distribution) and OOD splits."""
    chosen = report.diagnostics.get("family_best") or {}
    if not chosen:
        return None
    keys = ("method", "features", "sae", "k", "selector")
    fams = list(chosen)
    fig, ax = plt.subplots(figsize=(7, 0.32 * len(fams) + 1.2))
    for off, split, colour in ((-0.17, "calib", "tab:blue"), (0.17, "ood", "tab:red")):
        for i, fam in enumerate(fams):
            ref = chosen[fam]
            r = next((r for r in primary(report) if r.split == split and all(getattr(r, k) == ref.get(k) for k in keys)), None)
            if r is None or r.auroc is None:
                continue
            err = [[r.auroc - r.auroc_ci.low], [r.auroc_ci.high - r.auroc]] if r.auroc_ci else None
            ax.errorbar(r.auroc, i + off, xerr=err, fmt="o", ms=3, color=colour, label=split if i == 0 else None)
    ax.set_yticks(range(len(fams)), fams, fontsize=7)
    ax.invert_yaxis()
    ax.axvline(0.5, color="grey", ls=":", lw=0.8)
    ax.set_xlabel("AUROC (95% clustered bootstrap interval)")
    ax.set_title("Each family's configuration chosen on validation", fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return fig


def png_bytes(fig, dpi: int = 110) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()


# Everything of a report the figures below read: `figure_inputs` is the key under which a report's
# figures are kept (with this module's source), so a figure that reads another field must add it here.
FIGURE_DIAGNOSTICS = ("headline_k", "family_best", "layer_sweep", "autointerp")


def figure_inputs(report: Report) -> dict:
    return {"seed": report.provenance.seed, "results": [r.model_dump(mode="json") for r in report.results],
            "diagnostics": {k: report.diagnostics.get(k) for k in FIGURE_DIAGNOSTICS}}


def report_figures(report: Report, hist_split: str | None = None, max_hists: int = 6) -> dict[str, bytes]:
    """Every figure as PNG bytes, keyed by a file-name stem. Histograms: on the OOD split (or the
    last split) so the hard families are visible, for the methods best on validation."""
    figs: dict[str, bytes] = {}
    if (fig := family_figure(report)) is not None:
        figs["families"] = png_bytes(fig)
    for split in report.splits():
        figs[f"roc_{split}"] = png_bytes(roc_figure(report, split))
    splits = report.splits()
    hist_split = hist_split or ("ood" if "ood" in splits else (splits[-1] if splits else None))
    rows = sorted((r for r in primary(report) if r.split == hist_split and r.histograms), key=lambda r: -val_auroc(report, r))
    for i, r in enumerate(rows[:max_hists]):
        figs[f"hist_{hist_split}_{i:02d}"] = png_bytes(histogram_figure(r))
    if (fig := k_sweep_figure(report)) is not None:
        figs["k_sweep"] = png_bytes(fig)
    if (fig := layer_sweep_figure(report.diagnostics.get("layer_sweep"))) is not None:
        figs["layer_sweep"] = png_bytes(fig)
    if (fig := autointerp_figure(report.diagnostics.get("autointerp"))) is not None:
        figs["autointerp"] = png_bytes(fig)
    return figs
