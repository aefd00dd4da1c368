"""Findings from the study's diagnostics: which layer (the sweep), how k-sparse probes fare as k
grows, how much of the dense probe's OOD gap chat SAEs close, the hard negatives, and whether the
latents the probes read are interpretable (auto-interp). Each reads validation numbers only to
choose anything; every number it states is cited through a `Writer`."""

from __future__ import annotations

import statistics
from typing import Any

import numpy as np

from assay.experiment.config import SAE_NAMES
from assay.experiment.families import family_key
from assay.probes import names

from assay.experiment.writing import Writer, dense_at, f3, interval_text, label, row_ref, signed


def mean_val_auroc(rows: list[dict[str, Any]]) -> dict[int, float]:
    """Each single layer's validation AUROC averaged over the aggregations (the score the study's
    layer is chosen by). Reads `val_auroc` only."""
    by_layer: dict[int, list[float]] = {}
    for r in rows:
        if isinstance(r["layer"], int):
            by_layer.setdefault(r["layer"], []).append(r["val_auroc"])
    return {layer: float(np.mean(v)) for layer, v in by_layer.items()}


def ranked_layers(rows: list[dict[str, Any]]) -> list[int]:
    """Layers by validation AUROC averaged over aggregations, best first; ties to the shallower."""
    score = mean_val_auroc(rows)
    return sorted(score, key=lambda layer: (-score[layer], layer))


def layer_finding(sweep: dict[str, Any], w: "Writer | None" = None) -> Any:
    """Which layer the sweep chose, on validation, and what reading it (or several) buys, like for like
    (`w` collects the citations when the finding goes into a report)."""
    w = w or Writer(None)
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


def ksparse_finding(report: Any, w: "Writer", best: dict[str, Any], dense: Any, k: int) -> Any:
    """GDM: k-sparse probes fit in distribution but are worse OOD. The test is the pattern of gaps
    to the dense probe: within noise of 0 on calib (held out, in distribution), above 0 on OOD, and
    the OOD gap above the calib gap, each by its paired clustered interval."""
    rows = report.diagnostics["ksparse_gaps"]
    parts, holds, fits = [], [], []
    for i, g in enumerate(rows):
        ks = best.get(family_key("k-sparse", g["sae"], k))
        if ks is None:
            continue
        fit, c_fit = w.diff(dense_at(dense, ks.features), ks, "train")
        fits.append(c_fit is not None and not (c_fit.outside_noise and c_fit.diff > 0))
        cal = interval_text(w, f"ksparse_gaps/{i}/calib_gap", g["calib_gap"])
        ood = interval_text(w, f"ksparse_gaps/{i}/ood_gap", g["ood_gap"])
        dif = interval_text(w, f"ksparse_gaps/{i}/gap_difference", g["gap_difference"])
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


def gap_closed_finding(rows: list[dict[str, Any]], w: "Writer", k: int) -> Any:
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
    rule_text = {"pretrain_config": f"with the pretraining SAE's configuration ({label(row_ref(g0['config']))}) on every SAE",
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


def hard_negatives_finding(hn: dict[str, Any], w: "Writer | None" = None, split: str = "ood") -> Any:
    """OOD AUROC of each family against the hard negatives and against ordinary benign prompts (the
    same harmful rows), and which families the dense probe beats, or loses to, on the hard ones."""
    w = w or Writer(None)
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


def autointerp_finding(ai: dict[str, Any], w: "Writer | None" = None, saes: list[str] | None = None) -> Any:
    """Each SAE's interpretability against its chance controls (shuffled explanations, token-blind
    latents) and its margin over a random SAE at its frequency profile; a ranking by that margin
    only when every chance control sits at chance; the probe's latents against random ones; and what
    the studied model is worth as its own explainer."""
    import math

    w = w or Writer(None)
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
