"""Findings generated from a report's numbers, each set beside the GDM claim it tests.

Nothing here is written in advance: every number in a sentence is a `Citation` of the report row,
comparison, SAE-quality record or diagnostic it comes from (a test checks each one), and every
choice of configuration reads validation numbers only (`family_best`). Works from a `Report`
alone, so `assay report readme` can regenerate the prose from `report.json`.
"""

from __future__ import annotations

from typing import Any

from assay.experiment.config import SAE_NAMES
from assay.experiment.diagnostic_findings import (autointerp_finding, gap_closed_finding, hard_negatives_finding,
                                                ksparse_finding, layer_finding)
from assay.experiment.families import family_best, family_key
from assay.experiment.writing import Writer, compared, dense_at, f3, find_result, label, quality_ref
from assay.probes import names


def attach(report: Any) -> Any:
    """`report` with its findings, and notes that are their texts, generated from its numbers."""
    report.findings = findings(report)
    report.notes = [f.text for f in report.findings] + scale_notes(report)
    return report


def scale_notes(report: Any) -> list[str]:
    """What a reduced run (a subsampled benchmark: the demo preset, a smoke run) is, from its config."""
    cfg, splits = report.config or {}, getattr(report.provenance, "splits", None) or {}
    if not cfg.get("subsample"):
        return []
    sae = cfg.get("sae") or {}
    rows = ", ".join(f"{s} {v['rows']}" for s, v in splits.items())
    text = (f"A reduced run: at most {cfg['subsample']} rows per split and class of the benchmark ({rows}), so the "
            f"intervals are wide; its SAEs have {sae.get('width', 0):,} latents, trained on "
            f"{sae.get('pretrain_tokens', 0):,} pretraining (Wikipedia and dictionary) and "
            f"{sae.get('chat_tokens', 0):,} chat tokens.")
    if cfg.get("preset") == "demo":
        text += (" The demo preset shows the pipeline at work in minutes, with SAEs far too small to judge SAEs by; "
                 "the quick and full presets are the study.")
    return [text]


def findings(report: Any) -> list[Any]:
    cfg = report.config
    best = family_best(report.results, cfg)
    dense = best.get(names.REFERENCE)
    if dense is None:
        return []
    w = Writer(report)
    out = []
    k = cfg["headline_k"]
    saes = [s for s in SAE_NAMES if family_key("k-sparse", s, k) in best]

    # 1. The dense probe.
    near_perfect = (find_result(report, dense, "ood").auroc or 0) >= 0.98
    out.append(w.finding(
        "Dense linear probes are near perfect in distribution and out of distribution (Gemma 2 9B IT: train 1.0, "
        "val 1.0, OOD 0.999).",
        f"Dense logistic probe ({label(dense)}, the aggregation best on validation): train AUROC "
        f"{w.result(dense, 'train')}, held-out in-distribution (calib) {w.with_ci(dense, 'calib')}, OOD "
        f"{w.with_ci(dense, 'ood')}; recall at {cfg['target_fpr']:.0%} FPR {w.result(dense, 'calib', 'recall_at_fpr')} "
        f"(calib) and {w.result(dense, 'ood', 'recall_at_fpr')} OOD, where the threshold calibrated on calib flags "
        f"{w.result(dense, 'ood', 'fpr_reached')} of the benign prompts. "
        + ("Near perfect OOD, as GDM found." if near_perfect else "Far from GDM's near-perfect OOD score on this model."),
        near_perfect))

    # 1b. The same OOD split, by kind of negative: most OOD negatives are ordinary ShareGPT requests.
    if (report.diagnostics.get("hard_negatives") or {}).get("rows"):
        out.append(hard_negatives_finding(report.diagnostics["hard_negatives"], w))

    # 2. One latent cannot fit the training set.
    parts, fails, _ = _against_dense(w, best, dense, saes, "1-sparse", "train")
    if parts:
        out.append(w.finding(
            "A single SAE latent cannot even fit the training set.",
            "1-sparse probes (latent chosen on train, aggregation on validation): " + "; ".join(parts) + ". "
            + ("Each fits train clearly worse than the dense probe, as GDM found." if all(fails)
               else "Not every SAE's best latent falls short of the dense probe on train beyond noise."),
            all(fails), saes))

    # 3. k-sparse probes: fit in distribution, worse OOD, tested as a difference of gaps.
    if report.diagnostics.get("ksparse_gaps"):
        out.append(ksparse_finding(report, w, best, dense, k))

    # 4. Reconstruction and error probes.
    for fam, what_txt, claim in (
            ("reconstruction", "a dense probe on the SAE's reconstruction",
             "Probes on the SAE reconstruction lose the signal (worse OOD)."),
            ("error", "a dense probe on the SAE's error term (x - x_hat)", "")):
        parts, worse, better = _against_dense(w, best, dense, saes, fam, "ood")
        if not parts:
            continue
        n_worse = sum(worse)
        out.append(w.finding(
            claim, f"With {what_txt} (aggregation chosen on validation): " + "; ".join(parts) + f". Worse than the "
            f"dense probe beyond noise for {n_worse} of {len(worse)} SAEs"
            + (f"; better than it beyond noise for {', '.join(better)}." if better else "; better for none."),
            (n_worse == len(worse)) if claim else None, saes))

    # 5. Chat data closes part of the gap (with the equal-steps control), under both configuration rules.
    if any(g["split"] == "ood" for g in report.diagnostics.get("gap_closed", [])):
        out.append(gap_closed_finding(report.diagnostics["gap_closed"], w, k))

    # 6. Text baselines and attention probes against the dense probe.
    for fam, what in (("tfidf", "TF-IDF + logistic regression"), ("minilm", "MiniLM embeddings + logistic regression"),
                      ("attention", "The attention probe family")):
        ref = best.get(fam)
        if ref is None:
            continue
        d, c = w.diff(dense, ref, "ood")
        verdict = compared(c, "worse than", "better than", "within noise of")
        out.append(w.finding(
            "", f"{what} ({label(ref)}): calib AUROC {w.result(ref, 'calib')}, OOD {w.with_ci(ref, 'ood')}: "
            f"{verdict} the dense probe OOD (dense minus it {d}).", None))

    # 7. Which layer.
    if report.diagnostics.get("layer_sweep"):
        out.append(layer_finding(report.diagnostics["layer_sweep"], w))

    # 8. Auto-interpretability, uniform and frequency-weighted.
    if (report.diagnostics.get("autointerp") or {}).get("rows"):
        out.append(autointerp_finding(report.diagnostics["autointerp"], w,
                                      [r["sae"] for r in report.diagnostics["autointerp"]["rows"]]))

    # 9. Why difference of means fails.
    dm = report.diagnostics.get("diff_of_means", [])
    if dm:
        i = max(range(len(dm)), key=lambda j: dm[j]["top8_variance_share"])
        row = dm[i]
        vals = {m.split(":", 1)[1]: v for m, v in row.items() if m.startswith("val_auroc:")}
        v = {m: w.value("diagnostic", f"diff_of_means/{i}/val_auroc:{m}", x) for m, x in vals.items()}
        share = w.value("diagnostic", f"diff_of_means/{i}/top8_variance_share", row["top8_variance_share"], fmt=lambda x: f"{x:.0%}")
        dshare = w.value("diagnostic", f"diff_of_means/{i}/top8_mean_diff_share", row["top8_mean_diff_share"], fmt=lambda x: f"{x:.0%}")
        out.append(w.finding(
            "", f"Difference of means is not a defect but a property of this residual stream: at {row['aggregation']}, "
            f"the 8 highest-variance dimensions (e.g. {', '.join(map(str, row['top_dims'][:3]))}) hold {share} of the "
            f"variance and {dshare} of the squared class-mean difference, so the raw direction mostly measures them "
            f"(val AUROC {v.get('diff-of-means', 'n/a')}); standardised {v.get('diff-of-means-std', 'n/a')}; whitened "
            f"(LDA) {v.get('lda', 'n/a')}; logistic regression {v.get('dense-logistic', 'n/a')}.", None))

    # 10. What the SAE's reconstruction costs the model, and why.
    q = next((q for q in report.sae_quality if q.sae == "pretrain" and q.seed == cfg["seed"] and q.delta_lm_loss is not None), None)
    if q is not None:
        sref = quality_ref(q)
        dl = w.value("sae_quality", "delta_lm_loss", q.delta_lm_loss, ref=sref)
        fv = w.value("sae_quality", "fvu", q.fvu, ref=sref)
        fo = w.value("sae_quality", "fvu_other_dims", q.fvu_other_dims, ref=sref) if q.fvu_other_dims is not None else "n/a"
        rn = (w.value("sae_quality", "random_same_norm_delta_lm_loss", q.random_same_norm_delta_lm_loss, ref=sref)
              if q.random_same_norm_delta_lm_loss is not None else "n/a")
        if q.random_same_norm_delta_lm_loss is None:
            random_txt = ""
        elif q.random_same_norm_delta_lm_loss >= q.delta_lm_loss:
            random_txt = (f"A random perturbation of the same per-token norm costs more ({rn} nats): the loss comes from "
                          "the error's size, not from a direction the SAE gets especially wrong.")
        else:
            random_txt = (f"A random perturbation of the same per-token norm costs less ({rn} nats): the SAE's error "
                          "points in directions the model is more sensitive to than random ones.")
        if q.fvu_other_dims is None:
            dims_txt = ""
        elif q.fvu_other_dims <= q.fvu:
            dims_txt = (f"FVU is dominated by a few massive-activation dimensions: without the 8 highest-variance ones "
                        f"it is {fo}. ")
        else:
            dims_txt = (f"Without the 8 highest-variance (massive-activation) dimensions FVU is higher, {fo}: the SAE "
                        "reconstructs those dimensions better than the rest. ")
        out.append(w.finding(
            "", f"Splicing the pretraining SAE's reconstruction into layer {report.provenance.layer} (every token but "
            f"BOS) raises the LM loss by {dl} nats/token on {q.ce_texts} held-out documents (95% interval "
            f"[{f3(q.delta_lm_loss_ci.low)}, {f3(q.delta_lm_loss_ci.high)}]) at FVU {fv}. " + dims_txt + random_txt, None))

    # 11. How stable the k-sparse latent choice is.
    stab = report.diagnostics.get("latent_stability", [])
    if stab:
        parts = []
        for sel in sorted({s["selector"] for s in stab}):
            rows = [s for s in stab if s["selector"] == sel]
            mean = sum(s["jaccard_mean"] for s in rows) / len(rows)
            parts.append(f"{sel} {mean:.2f}")
        out.append(w.finding(
            "", f"Latent choice of the k={k} probes under bootstrap resamples of the training behaviours: mean Jaccard "
            f"overlap with the full-data choice {', '.join(parts)} (1 = always the same latents; over "
            f"{len(stab)} SAE x aggregation x selector configurations, {stab[0]['resamples']} resamples each).", None))

    # 12. Which run trained the SAEs, when it was not this one.
    if text := sae_source_text(report.diagnostics.get("sae_provenance") or []):
        out.append(w.finding("", text, None))
    return out


def sae_source_text(made: list[dict[str, Any]]) -> str:
    """A sentence on the SAEs this study reused rather than trained (empty when it trained all):
    which commits trained them and what that cost there, outside this report's timings."""
    before = [m for m in made if not m["trained_in_this_run"]]
    if not before:
        return ""
    commits = sorted({str(m.get("git_commit") or "unknown")[:7] for m in before})
    timed = [m for m in before if m.get("train_seconds") is not None]
    cost = ""
    if timed:
        train = sum(m["train_seconds"] for m in timed) / 60
        corpus = sum(m.get("corpus_seconds") or 0 for m in timed) / 60
        cost = (f"; training them took {train:.0f} min and extracting their corpora {corpus:.0f} min there"
                + ("" if len(timed) == len(before) else f" (timed for {len(timed)} of them)"))
    return (f"{len(before)} of the {len(made)} SAEs were trained before this run and read from the SAE cache (commit "
            f"{', '.join(commits)}, e.g. by `assay experiment saes`{cost}), so this run's SAE stage only loaded them "
            "and its timings leave that work out" + ("; their quality records (L0, FVU, LM loss) were measured before "
                                                    "this run as well" if all(_before(m) for m in before) else "") + ".")


def _before(m: dict[str, Any]) -> bool:
    """Whether an SAE's quality record was measured before the run that reports it."""
    return m.get("quality_measured") is not None and m["quality_measured"] < m["run_started"]


def _against_dense(w: Writer, best: dict[str, Any], dense: Any, saes: list[str], family: str,
                   split: str) -> tuple[list[str], list[bool], list[str]]:
    """Per SAE: the family's configuration chosen on validation on `split`, and the dense probe on
    the same aggregation minus it; whether the dense probe is better beyond noise; and the SAEs whose
    probe is better than the dense one beyond noise."""
    parts, worse, better = [], [], []
    for sae in saes:
        ref = best.get(family_key(family, sae))
        if ref is None:
            continue
        d, c = w.diff(dense_at(dense, ref.features), ref, split)
        parts.append(f"{sae}: {label(ref)} {split} AUROC {w.result(ref, split)}, dense probe on the same "
                     f"aggregation minus it {d}")
        worse.append(c is not None and c.outside_noise and c.diff > 0)
        if c is not None and c.outside_noise and c.diff < 0:
            better.append(sae)
    return parts, worse, better
