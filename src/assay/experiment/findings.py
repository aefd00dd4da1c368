"""Plain-language findings computed from a report's numbers, each set beside GDM's claim.

Nothing here is written in advance: every sentence is built from the measured values, and says
so when our result differs from theirs.
"""

from __future__ import annotations

from typing import Any


def _get(report: Any, split: str, **match: Any) -> Any | None:
    rows = [r for r in report.results if r.split == split and all(getattr(r, k) == v for k, v in match.items())]
    return max(rows, key=lambda r: (r.auroc or 0)) if rows else None


def _fmt(r: Any | None) -> str:
    if r is None or r.auroc is None:
        return "n/a"
    rec = f", recall@{r.target_fpr:.0%}FPR {r.recall_at_fpr:.2f}" if r.recall_at_fpr is not None else ""
    return f"AUROC {r.auroc:.3f}{rec}"


def best_dense(report: Any) -> Any | None:
    """The logistic probe whose aggregation scores best on validation (chosen on val, not OOD)."""
    val = [r for r in report.results if r.split == "val" and r.method == "logistic"]
    return max(val, key=lambda r: r.auroc or 0) if val else None


def findings(report: Any) -> list[str]:
    notes: list[str] = []
    dense_val = best_dense(report)
    if dense_val is None:
        return ["No dense probe results."]
    feat = dense_val.features
    dense = {s: _get(report, s, method="logistic", features=feat) for s in ("train", "val", "ood")}
    notes.append(
        f"Dense linear probe (logistic regression on {feat}, the aggregation best on validation): "
        f"train {_fmt(dense['train'])}; val {_fmt(dense['val'])}; OOD {_fmt(dense['ood'])}. "
        "GDM: train 1.0, val 1.0, OOD 0.999 (Gemma 2 9B IT)."
    )
    saes = sorted({r.sae for r in report.results if r.sae})
    for sae in saes:
        one = {s: _get(report, s, method="1-sparse", sae=sae) for s in ("train", "ood")}
        k20 = {s: _k_row(report, s, sae, 20) for s in ("val", "ood")}
        rec = {s: _get(report, s, method="reconstruction_probe", sae=sae) for s in ("val", "ood")}
        parts = [f"SAE '{sae}': 1-sparse train {_fmt(one['train'])}"]
        if one["train"] and dense["train"] and one["train"].auroc is not None and dense["train"].auroc is not None:
            fits = one["train"].auroc >= dense["train"].auroc - 0.02
            parts.append("(fits the training set about as well as the dense probe, unlike GDM's finding)" if fits
                         else f"({dense['train'].auroc - one['train'].auroc:.3f} below dense on train; GDM: fails to fit train)")
        if k20["val"]:
            parts.append(f"; k=20 ({k20['val'].method}) val {_fmt(k20['val'])}, OOD {_fmt(k20['ood'])}")
        if rec["ood"]:
            parts.append(f"; probe on reconstruction OOD {_fmt(rec['ood'])}")
        notes.append(" ".join(parts) + ".")
        if k20["ood"] and dense["ood"] and k20["ood"].auroc is not None:
            gap = dense["ood"].auroc - k20["ood"].auroc
            noise = max(_ci_width(dense["ood"]), _ci_width(k20["ood"])) / 2
            verdict = ("SAE probe worse, as GDM found" if gap > noise else
                       "SAE probe better: differs from GDM's finding" if gap < -noise else
                       "within the bootstrap noise: no clear gap, unlike GDM's finding")
            notes.append(f"OOD gap dense - 20-sparse ('{sae}'): {gap:+.3f} AUROC ({verdict}; half-width of the wider "
                         f"95% CI {noise:.3f}).")
    pre, ft = _k_row(report, "ood", "pretrain", 20), _k_row(report, "ood", "pretrain+chat-ft", 20)
    if pre and ft and dense["ood"] and None not in (pre.auroc, ft.auroc, dense["ood"].auroc):
        gap = dense["ood"].auroc - pre.auroc
        # A share of a gap smaller than the AUROC's own sampling noise means nothing.
        noise = max(_ci_width(dense["ood"]), _ci_width(pre)) / 2
        if gap > max(0.02, noise):
            closed = (ft.auroc - pre.auroc) / gap
            notes.append(f"Finetuning the pretraining SAE on chat closes {closed:.0%} of its OOD gap to the dense probe "
                         f"at k=20 ({pre.auroc:.3f} -> {ft.auroc:.3f}, dense {dense['ood'].auroc:.3f}; GDM: about half).")
        else:
            notes.append(f"The pretraining SAE's 20-sparse probe is within noise of the dense probe OOD ({pre.auroc:.3f} "
                         f"vs {dense['ood'].auroc:.3f}), so there is no gap for chat finetuning to close "
                         f"(finetuned: {ft.auroc:.3f}).")
    for name in ("tfidf_logreg", "minilm_logreg"):
        b = _get(report, "ood", method=name)
        if b:
            notes.append(f"Baseline {name}: val {_fmt(_get(report, 'val', method=name))}, OOD {_fmt(b)}.")
    notes.append("All SAE-probe rows use latents chosen on train only; thresholds are set on benign validation "
                 "examples and applied unchanged to OOD.")
    return notes


def _ci_width(r: Any) -> float:
    return (r.auroc_ci.high - r.auroc_ci.low) if r is not None and r.auroc_ci is not None else 0.0


def _k_row(report: Any, split: str, sae: str, k: int) -> Any | None:
    """The k-sparse row (best selector on validation) for this SAE at k."""
    val = [r for r in report.results if r.split == "val" and r.sae == sae and r.k == k and r.kind == "sae_sparse"
           and r.method != "1-sparse"]
    if not val:
        return None
    chosen = max(val, key=lambda r: r.auroc or 0)
    return _get(report, split, method=chosen.method, sae=sae, features=chosen.features)
