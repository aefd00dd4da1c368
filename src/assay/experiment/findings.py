"""Findings generated from a report's numbers, each set beside the GDM claim it tests.

Nothing here is written in advance: every number in a sentence is a `Citation` of the report row,
comparison, SAE-quality record or diagnostic it comes from (a test checks each one), and every
choice of configuration reads validation numbers only (`family_best`). Works from a `Report`
alone, so `assay report readme` can regenerate the prose from `report.json`.
"""

from __future__ import annotations

import statistics
from functools import partial
from typing import Any

from assay.experiment.evaluation import family_best, family_key, same_config
from assay.experiment.saes import SAE_NAMES
from assay.experiment.layers import mean_val_auroc, ranked_layers
from assay.probes import names

_CMP_SPLITS = ("calib", "ood")

label = partial(names.label, sae=" on the {} SAE")  # how prose names a configuration


def f3(x: float) -> str:
    return f"{x:.3f}"


def signed(x: float) -> str:
    return f"{x:+.3f}"


class _Writer:
    """Collects the citations of one finding while its text is built."""

    def __init__(self, report: Any):
        self.report, self.cites = report, []

    def result(self, ref: Any, split: str, metric: str = "auroc") -> str:
        from assay.report.schema import Citation

        r = find_result(self.report, ref, split)
        value = getattr(r, metric) if r is not None else None
        if value is None:
            return "n/a"
        self.cites.append(Citation(source="result", ref=ref, split=split, metric=metric, value=value))
        return f3(value)

    def with_ci(self, ref: Any, split: str) -> str:
        r = find_result(self.report, ref, split)
        text = self.result(ref, split)
        if r is not None and r.auroc_ci is not None:
            text += f" [{f3(r.auroc_ci.low)}, {f3(r.auroc_ci.high)}]"
        if r is not None and r.seed_auroc_mean is not None:
            text += f" (mean over {len(r.seeds)} seeds {f3(r.seed_auroc_mean)} ± {f3(r.seed_auroc_sd)})"
        return text

    def diff(self, a: Any, b: Any, split: str) -> tuple[str, Any]:
        """'+0.123 [0.1, 0.2]' for AUROC(a) - AUROC(b) on `split`, and the comparison."""
        from assay.report.schema import Citation

        c = find_comparison(self.report, a, b, split)
        if c is None:
            return "n/a", None
        self.cites.append(Citation(source="comparison", ref=b, versus=a, split=split, metric="diff", value=c.diff))
        seeds = f", over seeds {signed(c.seed_diff_mean)} ± {f3(c.seed_diff_sd)}" if c.seed_diff_mean is not None else ""
        return f"{signed(c.diff)} [{signed(c.ci.low)}, {signed(c.ci.high)}]{seeds}", c

    def value(self, source: str, metric: str, value: float, *, ref: Any = None, fmt=f3) -> str:
        from assay.report.schema import Citation

        self.cites.append(Citation(source=source, ref=ref, metric=metric, value=value))
        return fmt(value)

    def finding(self, claim: str, text: str, holds: bool | None, saes: list[str] | None = None) -> Any:
        """A finding from `text` and the numbers it cited; one about `saes` ends with their quality
        (delta LM loss and FVU, every seed) and records those below the bar."""
        from assay.report.schema import Finding

        below: list[str] = []
        if saes:
            quality, below = self.quality(saes)
            text = f"{text} {quality}" if quality else text
        f = Finding(claim=claim, text=text, holds=holds, cites=self.cites, below_bar=below)
        self.cites = []
        return f

    def quality(self, saes: list[str]) -> tuple[str, list[str]]:
        """'SAE quality (...): pretrain delta LM loss 0.41, FVU 0.19; ...' with each number cited, and
        the SAEs any of whose seeds misses the bar (or has no verdict)."""
        from assay.experiment.sae_quality import QUALITY_BAR

        parts, below = [], []
        for sae in saes:
            qs = sorted((q for q in self.report.sae_quality if q.sae == sae), key=lambda q: q.seed or 0)
            if not qs:
                continue
            vals = {m: [self.value("sae_quality", m, getattr(q, m), ref=_quality_ref(q)) for q in qs
                        if getattr(q, m) is not None] for m in ("delta_lm_loss", "fvu")}
            txt = ", ".join(f"{name} {'/'.join(v)}" for name, v in (("delta LM loss", vals["delta_lm_loss"]),
                                                                   ("FVU", vals["fvu"])) if v)
            parts.append(f"{sae} {txt}")
            if not all(q.meets_bar for q in qs):
                below.append(sae)
        if not parts:
            return "", []
        n_seeds = max(len([q for q in self.report.sae_quality if q.sae == s]) for s in saes)
        head = ("SAE quality (delta LM loss in nats/token on held-out text of each SAE's corpus, FVU on the "
                "benchmark's validation tokens" + (", per seed" if n_seeds > 1 else "") + "): ")
        bar = f"delta LM loss <= {QUALITY_BAR['delta_lm_loss']} and FVU <= {QUALITY_BAR['fvu']}"
        tail = (f" Every one meets the quality bar ({bar})." if not below else
                f" Below the quality bar ({bar}): {', '.join(below)}; for those this verdict describes SAEs as trained "
                "here, not good SAEs.")
        return head + "; ".join(parts) + "." + tail, below


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


def find_result(report: Any, ref: Any, split: str) -> Any | None:
    return next((r for r in report.results if r.split == split and same_config(r, ref)), None)


def find_comparison(report: Any, a: Any, b: Any, split: str) -> Any | None:
    return next((c for c in report.comparisons if c.split == split and same_config(c.a, a) and same_config(c.b, b)),
                None)


def _verdict(c: Any, better: str, worse: str, tie: str) -> str:
    if c is None:
        return "not compared"
    return better if c.outside_noise and c.diff > 0 else worse if c.outside_noise and c.diff < 0 else tie


def findings(report: Any) -> list[Any]:
    cfg = report.config
    best = family_best(report.results, cfg)
    dense = best.get(names.REFERENCE)
    if dense is None:
        return []
    w = _Writer(report)
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
        verdict = _verdict(c, "worse than", "better than", "within noise of")
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
        sref = _quality_ref(q)
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


def layer_finding(sweep: dict[str, Any], w: "_Writer | None" = None) -> Any:
    """Which layer the sweep chose, on validation, and what reading it (or several) buys, like for like
    (`w` collects the citations when the finding goes into a report)."""
    w = w or _Writer(None)
    rows, used = sweep["rows"], sweep["used"]
    at = {(r["layer"], r["aggregation"]): (i, r) for i, r in enumerate(rows)}
    agg = max(sweep["aggregations"], key=lambda a: (at[(used, a)][1]["val_auroc"], a))  # best on val at that layer
    i, r = at[(used, agg)]
    cite = lambda j, m: w.value("diagnostic", f"layer_sweep/rows/{j}/{m}", rows[j][m])  # noqa: E731

    def versus(a: Any, b: Any) -> str:
        j, c = next((j, c) for j, c in enumerate(sweep["comparisons"])
                    if c["a"] == a and c["b"] == b and c["aggregation"] == agg and c["split"] == "ood")
        d = w.value("diagnostic", f"layer_sweep/comparisons/{j}/diff", c["diff"], fmt=signed)
        return f"{d} [{signed(c['low'])}, {signed(c['high'])}]"

    how = ("chosen as the best on validation AUROC averaged over the aggregations" if sweep["how"] == "validation"
           else f"given by the user (the validation rule would choose layer {sweep['chosen']})")
    # how far ahead the chosen layer is on the very score it was chosen by: when validation is
    # saturated, a lead far inside one probe's interval says the choice is close to a tie
    score, ranked = mean_val_auroc(rows), ranked_layers(rows)
    margin = ""
    if len(ranked) > 1:
        first, second = ranked[0], ranked[1]
        lead = score[first] - score[second]
        width = statistics.median(x["val_auroc_ci"][1] - x["val_auroc_ci"][0] for x in rows if x["layer"] == first)
        margin = (f" Its validation AUROC averaged over the aggregations ({score[first]:.4f}) leads layer {second}'s "
                  f"by {lead:.4f}, against a median 95% interval width of {width:.3f} for one of its probes"
                  + (": on validation the choice is close to a tie." if lead < 0.1 * width else "."))
    text = (f"Dense logistic probe at each of {len(sweep['layers'])} layers, from one forward pass: the study reads "
            f"layer {used} of {sweep['n_layers']}, {how}. There, at {agg}: val AUROC {cite(i, 'val_auroc')}, OOD "
            f"{cite(i, 'ood_auroc')}, OOD recall at {sweep['target_fpr']:.0%} FPR {cite(i, 'ood_recall')}.{margin}")
    if used != sweep["middle"] and (sweep["middle"], agg) in at:
        text += f" Against the middle block (layer {sweep['middle']}), OOD AUROC difference {versus(used, sweep['middle'])}."
    j, c = at[("concat", agg)]
    text += (f" Layers {'+'.join(map(str, sweep['concat_layers']))} concatenated (the best three on validation): OOD "
             f"AUROC {cite(j, 'ood_auroc')}, minus layer {used}'s {versus('concat', used)}.")
    single = [(k, x) for k, x in enumerate(rows) if isinstance(x["layer"], int) and x["aggregation"] == agg]
    k, best_ood = max(single, key=lambda kx: kx[1]["ood_auroc"])
    text += (f" Not used for any choice: the best single layer on OOD at {agg} is {best_ood['layer']} "
             f"(AUROC {cite(k, 'ood_auroc')}).")
    if src := sweep.get("source"):
        prov = src["provenance"]
        secs = (prov.get("timings_seconds") or {}).get("layer sweep")
        text += (f" The sweep ran as its own command (`assay experiment layers`, commit "
                 f"{str(prov.get('git_commit'))[:7]}{f', {secs / 60:.0f} min' if secs else ''}); this study read its "
                 f"file {src['path']}, checked against this study's {src['checked']}.")
    return w.finding("GDM chose the probing layer by sweeping layers.", text, None)


def _interval_text(w: "_Writer", path: str, row: dict[str, Any]) -> str:
    """'+0.123 [+0.050, +0.190]' for a diagnostic's {'value', 'ci'}, the value cited."""
    return f"{w.value('diagnostic', f'{path}/value', row['value'], fmt=signed)} [{signed(row['ci'][0])}, {signed(row['ci'][1])}]"


def ksparse_finding(report: Any, w: "_Writer", best: dict[str, Any], dense: Any, k: int) -> Any:
    """GDM: k-sparse probes fit in distribution but are worse OOD. The test is the pattern of gaps
    to the dense probe: within noise of 0 on calib (held out, in distribution), above 0 on OOD, and
    the OOD gap above the calib gap, each by its paired clustered interval."""
    rows = report.diagnostics["ksparse_gaps"]
    parts, holds, fits = [], [], []
    for i, g in enumerate(rows):
        ks = best.get(family_key("k-sparse", g["sae"], k))
        if ks is None:
            continue
        fit, c_fit = w.diff(_dense_at(dense, ks.features), ks, "train")
        fits.append(c_fit is not None and not (c_fit.outside_noise and c_fit.diff > 0))
        cal = _interval_text(w, f"ksparse_gaps/{i}/calib_gap", g["calib_gap"])
        ood = _interval_text(w, f"ksparse_gaps/{i}/ood_gap", g["ood_gap"])
        dif = _interval_text(w, f"ksparse_gaps/{i}/gap_difference", g["gap_difference"])
        where = ("GDM's pattern" if g["gdm_pattern"] else
                 "not GDM's pattern: " + ", ".join(x for x, bad in (
                     ("the calib gap is above 0", g["calib_gap"]["above_zero"]),
                     ("the calib gap is below 0", g["calib_gap"]["below_zero"]),
                     ("the OOD gap is not above 0", not g["ood_gap"]["above_zero"]),
                     ("the OOD gap is not above the calib gap", not g["gap_difference"]["above_zero"])) if bad))
        parts.append(f"{g['sae']} ({label(ks)}): train {w.result(ks, 'train')} (dense on the same aggregation minus it "
                     f"{fit}); gap calib {cal}, OOD {ood}, OOD minus calib {dif}: {where}")
        holds.append(g["gdm_pattern"])
    n = sum(holds)
    more = sum(g["gap_difference"]["above_zero"] for g in rows)
    short = sum(g["calib_gap"]["above_zero"] for g in rows)
    return w.finding(
        "k-sparse SAE probes fit in distribution but are distinctly worse out of distribution.",
        f"Gaps to the dense probe's best configuration (dense AUROC minus the k-sparse probe's, k={k} fixed in advance; "
        "selector and aggregation chosen on validation), paired clustered 95% intervals. GDM's claim is tested as the "
        "pattern: a calib (held-out, in-distribution) gap within noise of 0, an OOD gap above 0, and the OOD gap above "
        "the calib gap, each beyond noise. " + "; ".join(parts) + f". The pattern holds for {n} of {len(holds)} SAEs"
        + (", as GDM found." if holds and all(holds) else
           f"; for {'the others' if n else 'each'} the numbers are not GDM's 'fits in distribution, fails out of it' "
           "(why is said for each).")
        + f" The OOD gap exceeds the calib gap beyond noise for {more} of {len(holds)}, and the calib gap is above 0 "
        f"beyond noise for {short} of {len(holds)}."
        + f" They fit train no worse than the dense probe on the same aggregation for {sum(fits)} of {len(fits)}.",
        bool(holds) and all(holds), [g["sae"] for g in rows])


def gap_closed_finding(rows: list[dict[str, Any]], w: "_Writer", k: int) -> Any:
    """GDM: SAEs trained or finetuned on chat close about half the gap. The share of the pretraining
    SAE's OOD gap each other SAE closes under both rules for its configuration (`gap_closed`); the
    claim holds only if the chat finetune closes a share beyond noise, and more than the
    equal-steps control's interval, under both."""
    ood = [(i, g) for i, g in enumerate(rows) if g["split"] == "ood"]
    i0, g0 = ood[0]
    gap = w.value("diagnostic", f"gap_closed/{i0}/gap", g0["gap"])
    saes = ["pretrain"] + sorted({g["sae"] for _, g in ood}, key=SAE_NAMES.index)
    claim = "SAEs trained or finetuned on chat data close about half the gap."
    if not g0["gap_outside_noise"]:
        return w.finding(claim, f"The pretraining SAE's k={k} probe is within noise of the dense probe OOD (gap {gap}, "
                         f"95% interval [{f3(g0['gap_ci'][0])}, {f3(g0['gap_ci'][1])}]): no gap for chat data to close.",
                         None, saes)
    rule_text = {"pretrain_config": f"with the pretraining SAE's configuration ({label(_ref(g0['config']))}) on every SAE",
                 "own_config": "with each SAE's own configuration chosen on validation (the rows of its table)"}
    texts: list[str] = []
    ok: dict[str, dict[str, bool]] = {}  # chat SAE -> rule -> closes a share beyond noise, beyond the control
    for rule in ("pretrain_config", "own_config"):
        parts, fr = [], {}
        for i, g in ood:
            if g.get("rule", "pretrain_config") != rule or g["fraction_closed"] is None:
                continue
            frac = w.value("diagnostic", f"gap_closed/{i}/fraction_closed", g["fraction_closed"], fmt=lambda x: f"{x:.0%}")
            seeds = (f"; per seed {', '.join(f'{x:.0%}' for x in g['fraction_per_seed'])}"
                     if len(g["fraction_per_seed"]) > 1 else "")
            parts.append(f"{g['sae']} {frac} (95% interval {g['fraction_ci'][0]:.0%} to {g['fraction_ci'][1]:.0%}{seeds})")
            fr[g["sae"]] = g
        if not parts:
            continue
        ctl = fr.get("pretrain+pretrain-ft")
        said = []
        for sae, who in (("chat", "the SAE trained on chat"), ("pretrain+chat-ft", "the chat finetune")):
            g = fr.get(sae)
            if g is None:
                continue
            closes = g["fraction_ci"][0] > 0
            # GDM's claim is about chat data: a share the equal-steps control (as many more pretraining
            # tokens) also closes does not support it
            beats = ctl is None or g["fraction_closed"] > ctl["fraction_ci"][1]
            ok.setdefault(sae, {})[rule] = closes and beats
            seeds = g["fraction_per_seed"]
            spread = (f" (though its seeds range from {min(seeds):.0%} to {max(seeds):.0%}, wider than one seed's "
                      "bootstrap interval)" if closes and len(seeds) > 1 and min(seeds) < g["fraction_ci"][0] else "")
            said.append(f"{who} closes no share beyond noise" if not closes else
                        f"{who} closes a share beyond noise, more than the equal-steps control's interval{spread}" if beats
                        else f"{who} closes a share beyond noise, but no more than the equal-steps control might{spread}")
        texts.append(f"{rule_text[rule]}: " + "; ".join(parts) + (f"; {', and '.join(said)}" if said else ""))
    rules = [r for r in ("pretrain_config", "own_config") if any(r in v for v in ok.values())]
    both = [s for s, v in ok.items() if all(v.get(r) for r in rules)]
    one = [s for s, v in ok.items() if s not in both and any(v.values())]
    if not ok:
        verdict, holds = "", None
    elif both:
        verdict, holds = f" Under both rules the claim holds for {', '.join(both)}.", True
    else:
        verdict, holds = (" It holds under both rules for no chat SAE." if one else
                          " It holds under neither rule for any chat SAE."), False
    if one:
        verdict += (f" For {', '.join(one)} it holds under one rule only, so it turns on which configuration is "
                    "compared and is not counted.")
    return w.finding(claim, f"Share of the pretraining SAE's OOD gap to the dense probe (gap {gap} AUROC, k={k}) closed "
                     "by each other SAE's k-sparse probe, (its AUROC - pretrain's) / (dense's - pretrain's), paired "
                     "clustered intervals; " + ". Then, ".join(texts) + "." + verdict, holds, saes)


def hard_negatives_finding(hn: dict[str, Any], w: "_Writer | None" = None, split: str = "ood") -> Any:
    """OOD AUROC of each family against the hard negatives and against ordinary benign prompts (the
    same harmful rows), and which families the dense probe beats, or loses to, on the hard ones."""
    w = w or _Writer(None)
    rows = hn["rows"]
    at = {(r["family"], r["negatives"]): i for i, r in enumerate(rows) if r["split"] == split}
    fams = list(dict.fromkeys(r["family"] for r in rows if r["split"] == split))
    if not fams:
        return w.finding("", f"No {split} rows to split by kind of negative.", None)

    def auc(i: int) -> str:
        lo, hi = rows[i]["auroc_ci"]
        return f"{w.value('diagnostic', f'hard_negatives/rows/{i}/auroc', rows[i]['auroc'])} [{f3(lo)}, {f3(hi)}]"

    def diff(i: int) -> str:
        d = rows[i]["dense_minus"]
        return (f"{w.value('diagnostic', f'hard_negatives/rows/{i}/dense_minus/diff', d['diff'], fmt=signed)} "
                f"[{signed(d['ci'][0])}, {signed(d['ci'][1])}]")

    parts = [f"{fam} {auc(at[(fam, 'hard')])} vs {auc(at[(fam, 'ordinary')])}" for fam in fams
             if (fam, "hard") in at and (fam, "ordinary") in at]
    first = rows[at[(fams[0], "hard")]] if (fams[0], "hard") in at else rows[0]
    text = (f"{split.upper()} AUROC of every harmful prompt ({first['n_pos']}) against the hard negatives "
            f"({first['n_neg']}: {', '.join(first['groups'])}) vs against ordinary benign prompts "
            f"({', '.join(rows[at[(fams[0], 'ordinary')]]['groups']) if (fams[0], 'ordinary') in at else 'none'}), "
            "each family's configuration chosen on validation: " + "; ".join(parts) + ".")
    hard = [at[(f, "hard")] for f in fams if (f, "hard") in at and "dense_minus" in rows[at[(f, "hard")]]]
    better = [rows[i]["family"] for i in hard if rows[i]["dense_minus"]["outside_noise"] and rows[i]["dense_minus"]["diff"] < 0]
    worse = [rows[i]["family"] for i in hard if rows[i]["dense_minus"]["outside_noise"] and rows[i]["dense_minus"]["diff"] > 0]
    if hard:
        text += (" Dense minus each family on the hard negatives (paired, clustered 95% CI): "
                 + "; ".join(f"{rows[i]['family']} {diff(i)}" for i in hard) + ". "
                 + (f"Better than the dense probe on them beyond noise: {', '.join(better)}. " if better else
                    "No family beats the dense probe on them beyond noise. ")
                 + (f"Worse beyond noise: {', '.join(worse)}." if worse else ""))
    dense_hard = at.get((names.REFERENCE, "hard"))
    holds = None if dense_hard is None else rows[dense_hard]["auroc_ci"][0] >= 0.95
    return w.finding("Dense probes stay near perfect out of distribution, on the negatives that test intent too.",
                     text.strip(), holds)


def autointerp_finding(ai: dict[str, Any], w: "_Writer | None" = None, saes: list[str] | None = None) -> Any:
    """Each SAE's interpretability against its chance controls (shuffled explanations, token-blind
    latents) and its margin over a random SAE at its frequency profile; a ranking by that margin
    only when every chance control sits at chance; the probe's latents against random ones; and what
    the studied model is worth as its own explainer."""
    import math

    w = w or _Writer(None)
    rows = ai["rows"]
    ok = lambda x: x is not None and math.isfinite(x)  # noqa: E731

    def get(i: int, run: str, wt: str, test: str = "detection") -> float | None:
        return ((rows[i].get(run) or {}).get(test) or {}).get(wt)

    def cite(i: int, run: str, wt: str, test: str = "detection", fmt=f3) -> str:
        return w.value("diagnostic", f"autointerp/rows/{i}/{run}/{test}/{wt}", get(i, run, wt, test), fmt=fmt)

    def ci(i: int, run: str, wt: str) -> list[float]:
        return ((rows[i].get(run) or {}).get("detection") or {}).get(f"{wt}_ci") or [float("nan")] * 2

    rule = [i for i, r in enumerate(rows) if r["pair"] == "rule" and ok(get(i, "real", "uniform"))
            and ok(get(i, "real", "weighted"))]
    if not rule:
        return w.finding("Uniform averages over latents hide dense, uninterpretable ones.",
                         "Auto-interpretability: no latent could be scored (too few activating windows).", None)
    first = rule[0]
    text = (f"Auto-interpretability with the rule-based pair ({rows[first]['explainer']} explainer, "
            f"{rows[first]['scorer']} scorer; detection AUROC, 0.5 = chance), uniform / frequency-weighted: "
            + "; ".join(f"{rows[i]['sae']} {cite(i, 'real', 'uniform')} / {cite(i, 'real', 'weighted')}" for i in rule)
            + ".")
    # The chance controls first: a score means nothing until they sit at 0.5.
    off = []
    parts = []
    for i in rule:
        c = rows[i].get("controls") or {}
        vals = c.get("values") or {}
        if not vals:
            off.append(f"{rows[i]['sae']} (no controls recorded)")
            continue
        parts.append(f"{rows[i]['sae']} " + ", ".join(
            f"{k.replace('_', ' ')} " + w.value("diagnostic", f"autointerp/rows/{i}/controls/values/{k}", v)
            for k, v in vals.items()))
        if not c.get("at_chance"):
            off.append(f"{rows[i]['sae']} ({', '.join(c.get('off_chance') or [])})")
    margin = (rows[first].get("controls") or {}).get("margin", 0.05)
    text += f" Chance controls (each must sit within 0.5 +/- {margin}): " + "; ".join(parts) + "."
    if off:
        text += (" Off chance: " + "; ".join(off) + ", so these scores rank nothing: the instrument does not "
                 "pass its controls here.")
    based = [i for i in rule if ok(get(i, "margin", "uniform")) and ok(get(i, "margin", "weighted"))]
    if based:
        text += (" Margin over a random SAE (the trainer's initialisation, set to each SAE's frequency profile), "
                 "uniform / frequency-weighted [95% CI]: " + "; ".join(
                     f"{rows[i]['sae']} {cite(i, 'margin', 'uniform', fmt=signed)} "
                     f"[{ci(i, 'margin', 'uniform')[0]:+.3f}, {ci(i, 'margin', 'uniform')[1]:+.3f}] / "
                     f"{cite(i, 'margin', 'weighted', fmt=signed)} "
                     f"[{ci(i, 'margin', 'weighted')[0]:+.3f}, {ci(i, 'margin', 'weighted')[1]:+.3f}]" for i in based)
                 + " (random SAE: " + "; ".join(f"{rows[i]['sae']}'s {cite(i, 'random_sae', 'uniform')} / "
                                                f"{cite(i, 'random_sae', 'weighted')}" for i in based) + ").")
        beat = {wt: [i for i in based if ci(i, "margin", wt)[0] > 0] for wt in ("uniform", "weighted")}
        worse = {wt: [i for i in based if ci(i, "margin", wt)[1] < 0] for wt in ("uniform", "weighted")}
        for wt, name in (("uniform", "uniform"), ("weighted", "frequency-weighted")):
            text += (f" By the {name} mean, {len(beat[wt])} of {len(based)} trained SAEs beat the random one beyond "
                     f"noise" + (f" ({', '.join(rows[i]['sae'] for i in beat[wt])})" if beat[wt] else "")
                     + (f", {len(worse[wt])} {'falls' if len(worse[wt]) == 1 else 'fall'} below it "
                        f"({', '.join(rows[i]['sae'] for i in worse[wt])})"
                        if worse[wt] else "") + ".")
        if len(based) > 1 and not off:
            for wt, name in (("uniform", "uniform"), ("weighted", "frequency-weighted")):
                best = max(based, key=lambda i: get(i, "margin", wt))
                lo = ci(best, "margin", wt)[0]
                rivals = [i for i in based if i != best and ci(i, "margin", wt)[1] >= lo]
                text += (f" Largest {name} margin: {rows[best]['sae']}"
                         + (" (its interval overlaps " + ", ".join(rows[i]["sae"] for i in rivals) + ")" if rivals
                            else " (its interval clear of the others)") + ".")
        elif len(based) > 1:
            text += " No ranking: a chance control is off chance."
    if ok(get(first, "real_probe", "uniform")) and ok(get(first, "real_random", "uniform")):
        text += (f" On {rows[first]['sae']}, the k-sparse probe's own latents score {cite(first, 'real_probe', 'uniform')}"
                 f" (uniform) against {cite(first, 'real_random', 'uniform')} for uniformly drawn latents.")
    lm = next((i for i, r in enumerate(rows) if r["pair"] == "lm" and ok(get(i, "real", "uniform"))), None)
    if lm is not None and ok(get(lm, "shuffled", "uniform")):
        r = rows[lm]["real"]["detection"]
        s_hi = rows[lm]["shuffled"]["detection"]
        above = ok(r["uniform_ci"][0]) and r["uniform_ci"][0] > s_hi["uniform"]
        at_chance = (rows[lm].get("controls") or {}).get("at_chance", True)
        text += (f" The studied model itself as explainer and scorer ({rows[lm]['explainer']}, "
                 f"{r['n_scored']} latents of {rows[lm]['sae']}): detection {cite(lm, 'real', 'uniform')} against "
                 f"{cite(lm, 'shuffled', 'uniform')} with shuffled explanations, "
                 + ("a control off chance (too few latents to shuffle against): nothing can be read from it."
                    if not at_chance else "its interval above that control." if above else
                    "not distinguishable from that control: a small base model is too weak an explainer and "
                    "judge to say what a latent means; use the rule-based pair or a larger model (--explainer "
                    "URL).") )
    return w.finding("Uniform averages over latents hide dense, uninterpretable ones; weight by firing "
                     "frequency.", text, None, list(dict.fromkeys(saes or [])))


def _against_dense(w: _Writer, best: dict[str, Any], dense: Any, saes: list[str], family: str,
                   split: str) -> tuple[list[str], list[bool], list[str]]:
    """Per SAE: the family's configuration chosen on validation on `split`, and the dense probe on
    the same aggregation minus it; whether the dense probe is better beyond noise; and the SAEs whose
    probe is better than the dense one beyond noise."""
    parts, worse, better = [], [], []
    for sae in saes:
        ref = best.get(family_key(family, sae))
        if ref is None:
            continue
        d, c = w.diff(_dense_at(dense, ref.features), ref, split)
        parts.append(f"{sae}: {label(ref)} {split} AUROC {w.result(ref, split)}, dense probe on the same "
                     f"aggregation minus it {d}")
        worse.append(c is not None and c.outside_noise and c.diff > 0)
        if c is not None and c.outside_noise and c.diff < 0:
            better.append(sae)
    return parts, worse, better


def _dense_at(dense: Any, features: str) -> Any:
    return dense.model_copy(update={"features": features})


def _ref(d: dict) -> Any:
    from assay.report.schema import RowRef

    return RowRef(**d)


def _quality_ref(q: Any) -> Any:
    from assay.report.schema import RowRef

    return RowRef(method=q.sae, features="sae_quality", seed=q.seed)
