"""`assay experiment sae-frequency`: Gated vs JumpReLU vs quadratic-frequency JumpReLU vs TopK at
matched L0, on a real model's residual stream (GDM's negative-results update, the part on
high-frequency latents).

GDM report that JumpReLU and TopK SAEs grow latents firing on more than 10% of tokens, that
Gated SAEs (L1) do not, and that replacing JumpReLU's L0 penalty by lambda * sum_i f_i (1 +
f_i / omega_0) removes them at a small reconstruction cost. This module trains every variant at
several sparsity levels on the same corpus tokens in one pass (Wikipedia in the small presets, the
study's pretraining mix in `full`, whose SAEs are sized to meet the study's quality bar), tunes each
penalised SAE's coefficient to its target L0 inside that pass (`assay.sae.calibrate`), and measures
on held-out tokens: L0 (and whether it hit its target within 10%), FVU, delta LM loss, dead and
dense latents and the frequency histogram; then auto-interpretability against its chance controls
and a random-SAE baseline. Report sentences are written from the numbers they cite.

Training (and the sweep's cache) is `sae_frequency_train`, evaluation `sae_frequency_eval`; this
module plots and reports.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import torch

from assay.errors import InputError
from assay.experiment.sae_frequency_train import (  # noqa: F401  (re-exported: the experiment's vocabulary)
    PRESETS, TOLERANCE, VARIANTS, FrequencyConfig, Variant, preset_config, sae_name, sweep, train_sweep)
from assay.experiment.sae_frequency_eval import evaluate_sweep, with_atomic_torch_save
from assay.fileio import read_json, write_json, write_text

log = logging.getLogger(__name__)


def autointerp_sweep(lm: Any, layer: int, cfg: FrequencyConfig, rows: list[dict[str, Any]], out: Path,
                     progress: bool = True) -> dict[str, dict[str, Any]]:
    """Every SAE's random live latents explained and scored (tokens explainer, rule scorer) on the
    same held-out corpus tokens, with its chance controls and random-SAE baseline; per SAE the compact
    summary the report shows, the full one in `out/<sae>/summary.json`. Resumes per latent."""
    from assay.autointerp import autointerp_sae
    from assay.sae.corpus import held_out_texts
    from assay.sae.io import load_sae

    texts = held_out_texts(cfg.corpus, lm, cfg.autointerp_tokens, cfg.max_tokens, seed=cfg.seed)
    result = {}
    for r in rows:
        sae = load_sae(r["path"], device=str(lm.device)).eval()
        summary = autointerp_sae(sae, lm, layer, texts, n_random=cfg.autointerp_latents, out_dir=out / r["sae"],
                                 max_tokens=cfg.max_tokens, seed=cfg.seed, progress=progress)
        result[r["sae"]] = compact_autointerp(summary, str(out / r["sae"]))
    return result


def compact_autointerp(summary: dict[str, Any], where: str) -> dict[str, Any]:
    """Detection and fuzzing, uniform and frequency-weighted (with intervals), for the real latents,
    each chance control, the random-SAE baseline and the margin over it, and the chance check: what
    the report's table, findings and curves read."""
    out: dict[str, Any] = {"dir": where, "explainer": summary["settings"]["explainer"],
                           "scorer": summary["settings"]["scorer"], "n_scored": {},
                           "controls": summary.get("controls"), "dictionaries": summary.get("dictionaries")}
    for run, r in summary["runs"].items():
        if "n_scored" in r.get("detection", {}):
            out["n_scored"][run] = r["detection"]["n_scored"]
        for test in ("detection", "fuzzing"):
            if test in r:
                out[f"{run}_{test}"] = {k: r[test][k] for k in ("uniform", "uniform_ci", "weighted", "weighted_ci")}
    return out


# --- figures ---------------------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_histograms(rows: list[dict[str, Any]], freqs: dict[str, torch.Tensor], target: int, path: Path) -> Path:
    """Frequency histograms of every variant at one target L0, small multiples on ONE log axis."""
    import numpy as np

    plt = _plt()
    at = [r for r in rows if r["target_l0"] == target]
    lo = min(float(freqs[r["sae"]][freqs[r["sae"]] > 0].min()) for r in at if (freqs[r["sae"]] > 0).any())
    bins = np.linspace(math.floor(math.log10(lo)), 0, 51)
    fig, axes = plt.subplots(len(at), 1, figsize=(6.5, 1.5 * len(at) + 0.6), sharex=True)
    for ax, r in zip(np.atleast_1d(axes), at):
        f = freqs[r["sae"]]
        ax.hist(f[f > 0].double().log10().numpy(), bins=bins, histtype="stepfilled", alpha=0.7)
        ax.axvline(-1, color="r", ls="--", lw=1)
        ax.set_ylabel("latents")
        ax.set_title(f"{r['label']}: L0 {r['l0']:.1f}, {r['dense']} latents > 10%, {r['dead']} dead", fontsize=9)
    np.atleast_1d(axes)[-1].set_xlabel("log10 firing frequency on held-out tokens (red: 10% of tokens)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_vs_l0(rows: list[dict[str, Any]], ys: list[tuple[str, str]], path: Path) -> Path:
    """One panel per metric against measured L0, one curve per variant."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(ys), figsize=(5 * len(ys), 4))
    for ax, (key, label) in zip(axes if len(ys) > 1 else [axes], ys):
        for v in VARIANTS:
            pts = sorted((r["l0"], r[key]) for r in rows if r["variant"] == v.name)
            ax.plot([a for a, _ in pts], [b for _, b in pts], "o-", label=v.label)
        ax.set_xscale("log")
        ax.set_xlabel("L0 (held-out)")
        ax.set_ylabel(label)
    axes_list = axes if len(ys) > 1 else [axes]
    axes_list[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_omega(rows: list[dict[str, Any]], path: Path) -> Path:
    """The omega_0 sweep: 0.01, 0.1 and plain JumpReLU (omega_0 -> infinity), per target L0."""
    plt = _plt()
    order = [("qf0.01", "0.01"), ("qf0.1", "0.1"), ("jumprelu", "inf (JumpReLU)")]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for target in sorted({r["target_l0"] for r in rows}):
        by = {r["variant"]: r for r in rows if r["target_l0"] == target}
        xs = [lab for v, lab in order if v in by]
        for ax, key in zip(axes, ("dense", "fvu")):
            ax.plot(xs, [by[v][key] for v, _ in order if v in by], "o-", label=f"target L0 {target}")
    axes[0].set_ylabel("latents firing on >10% of tokens")
    axes[1].set_ylabel("FVU (held-out)")
    for ax in axes:
        ax.set_xlabel("omega_0")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def make_figures(rows: list[dict[str, Any]], freqs: dict[str, torch.Tensor], targets: tuple[int, ...],
                 out: Path) -> dict[str, str]:
    mid = sorted(targets)[len(targets) // 2]
    return {
        "frequency_histograms": str(plot_histograms(rows, freqs, mid, out / f"freq_hist_l0_{mid}.png")),
        "reconstruction_vs_l0": str(plot_vs_l0(rows, [("fvu", "FVU"), ("delta_lm_loss", "delta LM loss (nats/token)")],
                                               out / "fvu_and_delta_lm_loss_vs_l0.png")),
        "dense_share_vs_l0": str(plot_vs_l0(rows, [("dense_share", "share of latents firing on >10% of tokens")],
                                            out / "dense_share_vs_l0.png")),
        "omega_sweep": str(plot_omega(rows, out / "omega_sweep.png")),
    }


# --- findings and report ---------------------------------------------------------------------
def _fmt(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:.0f}"


def findings(rows: list[dict[str, Any]], targets: tuple[int, ...],
             matched: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Sentences written from the numbers they cite; each comes with those numbers. `matched`: the
    families against JumpReLU at matched L0 (`sae_frequency_match.compare_at_matched_l0`)."""
    out: list[dict[str, Any]] = []
    by = {(r["variant"], r["target_l0"]): r for r in rows}
    penalised = [r for r in rows if r["architecture"] != "topk"]
    missed = [r for r in penalised if not r["l0_matched"]]
    out.append({"id": "l0_match", "numbers": {"matched": len(penalised) - len(missed), "penalised": len(penalised)},
                "text": f"{len(penalised) - len(missed)} of {len(penalised)} penalised SAEs measured an L0 within "
                        f"{TOLERANCE:.0%} of their target on held-out tokens"
                        + ("." if not missed else "; missed: " + ", ".join(
                            f"{r['sae']} (L0 {_fmt(r['l0'])} vs {r['target_l0']})" for r in missed) + ".")})
    out += matched_findings(matched or [], rows)
    for t in targets:
        dense = {v.name: by[(v.name, t)]["dense"] for v in VARIANTS if (v.name, t) in by}
        if len(dense) == len(VARIANTS):
            out.append({"id": f"dense_by_arch_l0_{t}", "numbers": dense,
                        "text": f"Latents firing on >10% of tokens in each family's SAE for target L0 {t} (where each "
                                "landed, not at matched L0: the comparison above is): " + ", ".join(
                                    f"{v.label} {dense[v.name]}" for v in VARIANTS) + "."})
    return out


def matched_findings(matched: list[dict[str, Any]], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """GDM's claim for every omega_0 (and Gated, TopK beside), at every L0 both families reach:
    dense latents interpolated along each family's curve, with the paired interval of the
    difference, the FVU cost, and the SAEs' quality against the bar."""
    from assay.experiment.sae_quality import QUALITY_BAR, meets_bar

    out = []
    labels = {v.name: v.label for v in VARIANTS}
    judged = [meets_bar(r) for r in rows]
    quality = (f"These SAEs' quality (held-out): delta LM loss {min(r['delta_lm_loss'] for r in rows):.2f} to "
               f"{max(r['delta_lm_loss'] for r in rows):.2f} nats/token, FVU {min(r['fvu'] for r in rows):.3f} to "
               f"{max(r['fvu'] for r in rows):.3f}; {sum(bool(j) for j in judged)} of {len(rows)} meet the quality bar "
               f"(delta LM loss <= {QUALITY_BAR['delta_lm_loss']}, FVU <= {QUALITY_BAR['fvu']})"
               + (", so these verdicts describe SAEs below it." if not all(judged) else "."))
    for variant in dict.fromkeys(m["variant"] for m in matched):
        ms = [m for m in matched if m["variant"] == variant]
        parts = [f"at L0 {m['l0']:g}: {m['dense']:.1f} vs {m['baseline_dense']:.1f} dense latents, difference "
                 f"{m['dense_diff']:+.1f} [{m['dense_diff_ci'][0]:+.1f}, {m['dense_diff_ci'][1]:+.1f}] ({m['verdict']}); "
                 f"FVU {m['fvu']:.3f} vs {m['baseline_fvu']:.3f} ({100 * (m['fvu'] / m['baseline_fvu'] - 1):+.0f}%), "
                 f"delta LM loss {m['delta_lm_loss']:.3f} vs {m['baseline_delta_lm_loss']:.3f}" for m in ms]
        fewer = all(m["verdict"] == "fewer dense latents" for m in ms)
        cheap = all(m["fvu"] <= 1.10 * m["baseline_fvu"] for m in ms)
        qf = variant.startswith("qf")
        holds: dict[str, Any] = {}
        if qf:
            holds = {"holds": fewer and cheap}
            verdict = ("agrees" if fewer and cheap else
                       "fewer dense latents, but at an FVU cost above 10%" if fewer else "does not reproduce it")
            text = (f"GDM found that the quadratic-frequency penalty removes latents firing on >10% of tokens at a "
                    f"small reconstruction cost. {labels[variant]} against JumpReLU at matched L0 (each family "
                    f"interpolated along its own curve; 95% paired block-bootstrap intervals over held-out tokens, "
                    f"not over training seeds): " + "; ".join(parts) + f". Verdict: {verdict}. {quality}")
        elif variant == "gated":
            holds = {"holds": fewer}
            text = (f"GDM found Gated SAEs free of the high-frequency latents JumpReLU grows. {labels[variant]} against "
                    "JumpReLU at matched L0 (interpolated as above): " + "; ".join(parts) + ". "
                    + ("Fewer at every level, as GDM found." if fewer else "Not fewer beyond noise at every level."))
        else:
            text = (f"{labels[variant]} against JumpReLU at matched L0 (interpolated as above): " + "; ".join(parts)
                    + ".")
        out.append({"id": f"matched_l0_{variant}", "numbers": {"comparisons": ms}, "text": text, **holds})
    if not matched:
        out.append({"id": "matched_l0_none", "numbers": {},
                    "text": "No target L0 lies inside both JumpReLU's and a QF family's measured L0 ranges: no "
                            "comparison at matched L0 is possible from this sweep; widen its targets."})
    return out


def build_report(cfg: FrequencyConfig, rows: list[dict[str, Any]], figures: dict[str, str], timings: dict[str, float],
                 context: dict[str, Any], autointerp: dict[str, dict[str, Any]] | None = None,
                 probes: dict[str, Any] | None = None, matched: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """report.json's content. `autointerp`: per SAE name, auto-interpretability summaries (e.g.
    {"uniform": 0.71, "frequency_weighted": 0.55}) added by another module; None leaves the
    section marked pending."""
    from assay.provenance import provenance

    if autointerp:
        unknown = sorted(set(autointerp) - {r["sae"] for r in rows})
        if unknown:
            raise InputError(f"autointerp scores for SAEs not in this sweep: {unknown}")
    found = findings(rows, cfg.targets, matched) + (autointerp_findings(rows, autointerp, cfg.targets) if autointerp else [])
    return provenance(
        experiment="sae-frequency", config=asdict(cfg), **context, tolerance=TOLERANCE,
        variants=[asdict(v) for v in VARIANTS], saes=rows, findings=found, figures=figures,
        matched_l0=matched or [],
        timings_s={k: round(v, 1) for k, v in timings.items()},
        probes=probes or {"status": "not run (pass --probes)"},
        autointerp=autointerp or {"status": "pending: no auto-interpretability scores attached yet"})


def render_markdown(report: dict[str, Any]) -> str:
    cfg = report["config"]
    lines = [f"# SAE latent frequency at matched L0 ({cfg['preset']} preset)", "",
             f"Model {report['model']}, residual stream after block {report['layer']}; {len(report['saes'])} SAEs of "
             f"{cfg['width']} latents trained together on {report['train_tokens']} tokens of the "
             f"`{cfg.get('corpus', 'wiki')}` corpus x {cfg['epochs']} "
             f"epochs; measured on {report['saes'][0]['tokens']} held-out tokens and "
             f"{report['saes'][0].get('ce_texts', 0)} held-out documents for the LM loss.", "", "## Findings", ""]
    lines += [f"- {f['text']}" for f in report["findings"]]
    lines += ["", "## Per SAE", "",
              "| SAE | target L0 | L0 | within 10% | coefficient | FVU | delta LM loss | CE recovered | dead | "
              ">10% latents (share) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["saes"]:
        coef = f"k = {r['coefficient']}" if r["architecture"] == "topk" else f"{r['coefficient_name']} = {r['coefficient']:.3g}"
        lines.append(f"| {r['sae']} | {r['target_l0']} | {r['l0']:.1f} | {'yes' if r['l0_matched'] else '**no**'} | "
                     f"{coef} | {r['fvu']:.4f} | {r['delta_lm_loss']:.4f} | {r['ce_recovered']:.3f} | {r['dead']} | "
                     f"{r['dense']} ({r['dense_share']:.1%}) |")
    matched = report.get("matched_l0") or []
    if matched:
        lines += ["", "## At matched L0 (each family interpolated along its own curve; 95% paired block-bootstrap "
                  "intervals over held-out tokens)", "",
                  "| family | vs | L0 | dense latents | JumpReLU's | difference [95% CI] | FVU | JumpReLU's | "
                  "delta LM loss | JumpReLU's | verdict |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {m['variant']} | {m['baseline']} | {m['l0']:g} | {m['dense']:.1f} | {m['baseline_dense']:.1f} | "
                  f"{m['dense_diff']:+.1f} [{m['dense_diff_ci'][0]:+.1f}, {m['dense_diff_ci'][1]:+.1f}] | "
                  f"{m['fvu']:.4f} | {m['baseline_fvu']:.4f} | {m['delta_lm_loss']:.3f} | "
                  f"{m['baseline_delta_lm_loss']:.3f} | {m['verdict']} |" for m in matched]
    lines += ["", "## Figures", ""] + [f"![{k}]({Path(v).name})" for k, v in report["figures"].items()]
    lines += ["", "## Probes on each SAE (harmful intent)", ""]
    pr = report["probes"]
    if "status" in pr:
        lines.append(f"- {pr['status']}")
    else:
        lines += [f"Aggregation `{pr['aggregation']}`; k-sparse uses k = {pr['k']} latents chosen by {pr['selector']}. "
                  f"Dense logistic probe on the same activations: val AUROC {pr['dense']['val_auroc']:.3f}, "
                  f"OOD AUROC {pr['dense']['ood_auroc']:.3f}.", "",
                  "| SAE | 1-sparse val | 1-sparse OOD | k-sparse val | k-sparse OOD |", "|---|---|---|---|---|"]
        lines += [f"| {n} | {p['1-sparse']['val_auroc']:.3f} | {p['1-sparse']['ood_auroc']:.3f} | "
                  f"{p['k-sparse']['val_auroc']:.3f} | {p['k-sparse']['ood_auroc']:.3f} |" for n, p in pr["saes"].items()]
    lines += ["", "## Auto-interpretability", ""]
    ai = report["autointerp"]
    if "status" in ai:
        lines.append(f"- {ai['status']}")
    else:
        lines += autointerp_lines(ai)
    lines += ["", "## Timings (s)", ""] + [f"- {k}: {v}" for k, v in report["timings_s"].items()]
    return "\n".join(lines) + "\n"


def _ai_cell(m: dict[str, Any], key: str, signed: bool = False) -> str:
    v, ci = m.get(key), m.get(f"{key}_ci") or [None, None]
    if v is None or not math.isfinite(v):
        return "n/a"
    f, g = ("+.3f", "+.2f") if signed else (".3f", ".2f")
    return f"{v:{f}} [{ci[0]:{g}}, {ci[1]:{g}}]"


def autointerp_lines(ai: dict[str, dict[str, Any]]) -> list[str]:
    """The table: detection AUROC per SAE, uniform and frequency-weighted, beside its chance controls,
    the random-SAE baseline and the margin over it."""
    first = next(iter(ai.values()))
    lines = [f"Explainer `{first['explainer']}`, scorer `{first['scorer']}` (the rule-based pair: the latent's top "
             "tokens, tested on held-out windows of one length sampled across activation quantiles). A score is the "
             "AUROC of the explanation at telling activating windows from silent ones; 0.5 is chance, and a latent "
             "with no silent window scores 0.5. Uniform: mean over a uniform sample of live latents; "
             "frequency-weighted: mean over latents drawn in proportion to firing frequency. Chance controls, each "
             "required within 0.5 +/- 0.05 before anything is ranked: explanations shuffled across latents, and "
             "latents firing at random (0.5-80% of tokens) whatever the token. Baseline: a random SAE with the "
             "trainer's initialisation whose latents fire at this SAE's frequencies; SAEs are compared by their "
             "margin over it. Per-latent scores and plots are in each SAE's folder.", "",
             "| SAE | latents (uniform) | detection, uniform | detection, freq-weighted | shuffled (uniform / weighted) "
             "| unstructured | at chance | random SAE (uniform / weighted) | margin, uniform | margin, freq-weighted |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, a in ai.items():
        real, sh, un, rnd, mg = (a.get("real_detection", {}), a.get("shuffled_detection", {}),
                                 a.get("unstructured_detection", {}), a.get("random_sae_detection", {}),
                                 a.get("margin_detection", {}))
        pair = lambda m: " / ".join(f"{m[k]:.3f}" if m.get(k) is not None and math.isfinite(m[k]) else "n/a"  # noqa: E731
                                    for k in ("uniform", "weighted")) if m else "n/a"
        c = a.get("controls") or {}
        chance = "yes" if c.get("at_chance") else f"**no** ({', '.join(c.get('off_chance') or ['not measured'])})"
        lines.append(f"| {name} | {a['n_scored'].get('real', 0)} | {_ai_cell(real, 'uniform')} | "
                     f"{_ai_cell(real, 'weighted')} | {pair(sh)} | {_ai_cell(un, 'uniform')} | {chance} | {pair(rnd)} | "
                     f"{_ai_cell(mg, 'uniform', signed=True)} | {_ai_cell(mg, 'weighted', signed=True)} |")
    return lines


def autointerp_findings(rows: list[dict[str, Any]], ai: dict[str, dict[str, Any]],
                        targets: tuple[int, ...]) -> list[dict[str, Any]]:
    """Whether the chance controls sit at chance and whether trained SAEs beat the random baseline;
    then, only if every control is at chance, which of QF-JumpReLU (omega_0 = 0.01) and JumpReLU has
    the larger margin over its random SAE at each target, by each weighting ('no clear difference'
    where the two intervals overlap: the latents differ, so nothing pairs them)."""
    scored = [r for r in rows if r["sae"] in ai and ai[r["sae"]].get("margin_detection")]
    if not scored:
        return []
    off = {r["sae"]: (ai[r["sae"]].get("controls") or {}).get("off_chance") or ["not measured"]
           for r in scored if not (ai[r["sae"]].get("controls") or {}).get("at_chance")}
    beat = {w: [r["sae"] for r in scored if ai[r["sae"]]["margin_detection"][f"{w}_ci"][0] > 0]
            for w in ("uniform", "weighted")}
    below = {w: [r["sae"] for r in scored if ai[r["sae"]]["margin_detection"][f"{w}_ci"][1] < 0]
             for w in ("uniform", "weighted")}
    text = (f"Chance controls: {len(scored) - len(off)} of {len(scored)} SAEs' runs have both (shuffled explanations, "
            "token-blind latents) within 0.5 +/- 0.05" + (": off for " + "; ".join(f"{k} ({', '.join(v)})"
                                                                                 for k, v in off.items())
                                                         + ", so no ranking below" if off else "") + ". "
            + " ".join(f"By the {label} mean, {len(beat[w])} of {len(scored)} trained SAEs beat their random SAE "
                       f"beyond noise and {len(below[w])} {'falls' if len(below[w]) == 1 else 'fall'} below it." for w, label in
                       (("uniform", "uniform"), ("weighted", "frequency-weighted"))))
    out = [{"id": "autointerp_controls", "numbers": {"n": len(scored), "off_chance": len(off),
                                                     **{f"beat_{w}": len(v) for w, v in beat.items()}},
            "text": text}]
    if off:
        return out
    by = {(r["variant"], r["target_l0"]): r for r in rows}
    for t in targets:
        q, j = by.get(("qf0.01", t)), by.get(("jumprelu", t))
        if not (q and j and q["sae"] in ai and j["sae"] in ai):
            continue
        parts, nums = [], {"qf_l0": round(q["l0"], 1), "jr_l0": round(j["l0"], 1)}
        for w, label in (("uniform", "uniform"), ("weighted", "frequency-weighted")):
            a, b = ai[q["sae"]].get("margin_detection") or {}, ai[j["sae"]].get("margin_detection") or {}
            if a.get(w) is None or b.get(w) is None or not (math.isfinite(a[w]) and math.isfinite(b[w])):
                continue
            nums.update({f"qf_{w}": round(a[w], 3), f"jr_{w}": round(b[w], 3)})
            overlap = a[f"{w}_ci"][0] <= b[f"{w}_ci"][1] and b[f"{w}_ci"][0] <= a[f"{w}_ci"][1]
            verdict = ("no clear difference (intervals overlap)" if overlap else
                       "QF-JumpReLU higher" if a[w] > b[w] else "JumpReLU higher")
            parts.append(f"{label} {a[w]:+.3f} vs {b[w]:+.3f}: {verdict}")
        if parts:
            matched = q["l0_matched"] and j["l0_matched"]
            out.append({"id": f"autointerp_qf_vs_jumprelu_l0_{t}", "numbers": nums,
                        "text": f"Margin of the detection score over each SAE's random SAE at target L0 {t}, "
                                f"QF-JumpReLU (omega_0 = 0.01) vs JumpReLU (L0 {nums['qf_l0']} vs {nums['jr_l0']}"
                                + ("" if matched else ", not matched") + "): " + "; ".join(parts) + "."})
    return out


def plot_autointerp(rows: list[dict[str, Any]], ai: dict[str, dict[str, Any]], path: Path) -> Path:
    """Detection score against measured L0, one curve per variant; uniform and frequency-weighted
    panels, with each SAE's random-SAE baseline as grey crosses."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, (w, title) in zip(axes, (("uniform", "uniform mean over latents"),
                                      ("weighted", "frequency-weighted mean"))):
        for v in VARIANTS:
            pts = sorted((r["l0"], ai[r["sae"]]["real_detection"][w]) for r in rows
                         if r["variant"] == v.name and r["sae"] in ai)
            ax.plot([a for a, _ in pts], [b for _, b in pts], "o-", label=v.label)
        ctl = [(r["l0"], ai[r["sae"]].get("random_sae_detection", {}).get(w)) for r in rows if r["sae"] in ai]
        ctl = [(a, b) for a, b in ctl if b is not None]
        ax.plot([a for a, _ in ctl], [b for _, b in ctl], "x", color="grey", label="random SAE (baseline)")
        ax.axhline(0.5, color="black", lw=0.5, ls=":")
        ax.set_xscale("log")
        ax.set_xlabel("L0 (held-out)")
        ax.set_title(title, fontsize=10)
    axes[0].set_ylabel("detection AUROC (rule-based)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def matched_l0(rows: list[dict[str, Any]], blocks: dict[str, Any], cfg: FrequencyConfig) -> list[dict[str, Any]]:
    """Every family against JumpReLU at the target L0s inside all the penalised families' measured
    ranges (`sae_frequency_match`)."""
    from assay.experiment.sae_frequency_match import compare_at_matched_l0, comparison_levels

    others = [v.name for v in VARIANTS if v.name != "jumprelu"]
    levels = comparison_levels(rows, ["jumprelu", "qf0.1", "qf0.01"], cfg.targets)
    fired = {k: v.numpy() for k, v in blocks["fired"].items()}
    return compare_at_matched_l0(rows, fired, blocks["block_tokens"].numpy(), "jumprelu", others, levels,
                                 seed=cfg.seed)


# --- the experiment ------------------------------------------------------------------------
def run_sae_frequency(cfg: FrequencyConfig, out: str | Path, lm: Any = None, model: str = "gemma-3-270m",
                      layer: int | None = None, dtype: str = "float32", progress: bool = True, probes: bool = False,
                      autointerp: dict[str, dict[str, Any]] | None = None) -> tuple[dict[str, Any], list[Path]]:
    """Train, evaluate, plot, report. Returns (report, the SAE directories): the directories are
    what an auto-interpretability pass reads, whose scores `build_report(autointerp=...)` takes."""
    from assay.fileio import kept_only_if_used

    with kept_only_if_used(out):  # a bad model or layer leaves no empty run folder behind
        return _run_sae_frequency(cfg, Path(out), lm, model, layer, dtype, progress, probes, autointerp)


def _run_sae_frequency(cfg: FrequencyConfig, out: Path, lm: Any, model: str, layer: int | None, dtype: str,
                       progress: bool, probes: bool, autointerp: dict[str, dict[str, Any]] | None
                       ) -> tuple[dict[str, Any], list[Path]]:
    from assay.models.loading import check_layer

    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    def stage(name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        result = fn()
        timings[name] = time.perf_counter() - t0
        log.info("stage %s: %.1f s", name, timings[name])
        return result

    if lm is None:
        from assay.models import load

        lm = stage("model", lambda: load(model, dtype=dtype, lazy=True))
    layer = lm.n_layers // 2 if layer is None else layer
    check_layer(layer, lm.n_layers)
    root, names = stage("train (extract + one pass)", lambda: train_sweep(lm, layer, cfg, progress))
    rows, freqs, blocks = stage("evaluate (held-out)", lambda: evaluate_sweep(lm, layer, cfg, root, names, progress))
    matched = matched_l0(rows, blocks, cfg)
    figures = stage("figures", lambda: make_figures(rows, freqs, cfg.targets, out))
    with_atomic_torch_save(freqs, out / "frequencies.pt")
    training = read_json(root / "training.json")
    context = {"model": lm.name, "model_fingerprint": lm.fingerprint, "layer": layer, "sweep_dir": str(root),
               "train_tokens": training.get("tokens", 0) // cfg.epochs, "training_steps": training.get("steps"),
               "training_complete": training.get("complete"), "frequencies": str(out / "frequencies.pt"),
               "l0_control": read_json(root / "l0_control.json")}
    if autointerp is None and cfg.autointerp_latents > 0:
        autointerp = stage("autointerp", lambda: autointerp_sweep(lm, layer, cfg, rows, out / "autointerp", progress))
        figures["autointerp_vs_l0"] = str(plot_autointerp(rows, autointerp, out / "autointerp_vs_l0.png"))
    probe_results = None
    if probes:
        from assay.experiment.sae_frequency_probes import sae_probes

        probe_results = stage("probes", lambda: sae_probes(lm, layer, {r["sae"]: Path(r["path"]) for r in rows},
                                                           out / "probes", seed=cfg.seed, progress=progress))
    report = build_report(cfg, rows, figures, timings, context, autointerp, probe_results, matched)
    write_json(out / "report.json", report)
    write_text(out / "report.md", render_markdown(report))
    return report, [names[r["sae"]] for r in rows]
