"""The report's tables as plain data (title, header, rows), rendered to markdown or HTML elsewhere."""

from __future__ import annotations

from dataclasses import dataclass, field

from assay.probes.names import REFERENCE, info, label
from assay.report.plots import primary
from assay.report.schema import Interval, MethodResult, Report


@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list[str]]
    caption: str = ""
    id: str = field(default="")


def fmt(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def fmt_ci(x: float | None, ci: Interval | None, digits: int = 3) -> str:
    if x is None:
        return "–"
    return f"{x:.{digits}f} [{ci.low:.{digits}f}, {ci.high:.{digits}f}]" if ci else f"{x:.{digits}f}"


def _by_label(report: Report) -> dict[str, dict[str, MethodResult]]:
    """Primary-seed rows with intervals (the k-sweep's other k live in their own table)."""
    out: dict[str, dict[str, MethodResult]] = {}
    for r in primary(report):
        if r.auroc_ci is not None or not info(r.method).sweeps_k:
            out.setdefault(label(r), {})[r.split] = r
    return out


def _seed_cell(rows: dict[str, MethodResult], split: str) -> str:
    r = rows.get(split)
    if r is None or r.seed_auroc_mean is None:
        return "–"
    return f"{r.seed_auroc_mean:.3f} ± {r.seed_auroc_sd:.3f} (n={len(r.seeds)})"


def _kind(rows: dict[str, MethodResult]) -> str:
    return next(iter(rows.values())).kind


def headline_tables(report: Report) -> list[Table]:
    """AUROC and recall at the target FPR, methods x splits, baselines beside the probes."""
    splits, methods = report.splits(), _by_label(report)
    def key(m: str):  # group by kind, then method family, SAE, and k numerically (2 before 20)
        r = next(iter(methods[m].values()))
        return (r.kind, r.method.split("[")[0], r.sae or "", r.k or 0, m)

    order = sorted(methods, key=key)
    seeded = any(r.seed_auroc_mean is not None for rows in methods.values() for r in rows.values())
    extra = ["ood: mean ± sd over seeds"] if seeded else []
    auroc = Table(
        "AUROC", ["method", "kind"] + splits + extra,
        [[m, _kind(methods[m])] + [fmt_ci(methods[m][s].auroc, methods[m][s].auroc_ci) if s in methods[m] else "–" for s in splits]
         + ([_seed_cell(methods[m], "ood")] if seeded else []) for m in order],
        "AUROC with 95% percentile bootstrap intervals that resample clusters (all rows built from one behaviour or "
        "benign request together). Rows are each configuration's first seed; the last column, where present, the "
        "spread of the AUROC over seeds (SAEs and stochastic probes retrained).", "table-auroc",
    )
    target = report.results[0].target_fpr if report.results else 0.01

    def cell(r: MethodResult | None) -> str:
        if r is None or r.recall_at_fpr is None:
            return "–"
        return f"{fmt_ci(r.recall_at_fpr, r.recall_ci)} (FPR {fmt(r.fpr_reached)})"

    recall = Table(
        f"Recall at {target:.0%} FPR", ["method", "kind"] + splits,
        [[m, _kind(methods[m])] + [cell(methods[m].get(s)) for s in splits] for m in order],
        "Threshold set on the benign examples of the calibration split, applied unchanged to every split; intervals "
        "re-calibrate the threshold in every bootstrap resample; the FPR it actually reached on each split in "
        "parentheses.", "table-recall",
    )
    return [auroc, recall]


def breakdown_tables(report: Report, split: str, max_methods: int = 8) -> list[Table]:
    """Per family / transformation / source / row type: recall (harmful groups) or FPR (benign
    groups) at the fixed threshold for each family's configuration chosen on validation, with
    AUROC against the rest of the split."""
    chosen = list((report.diagnostics.get("family_best") or {}).values())
    keys = ("method", "features", "sae", "k", "selector")
    rows_ = [r for r in primary(report) if r.split == split and r.breakdown
             and any(all(getattr(r, k) == c.get(k) for k in keys) for c in chosen)]
    if not rows_:
        rows_ = sorted((r for r in primary(report) if r.split == split and r.breakdown), key=lambda r: r.method)
    rows_ = [r for r in rows_ if r.sae in (None, "pretrain")][:max_methods]
    tables = []
    for by in dict.fromkeys(g.by for r in rows_ for g in r.breakdown):
        groups = list(dict.fromkeys(g.group for r in rows_ for g in r.breakdown if g.by == by))
        body = []
        for name in groups:
            line = [name]
            for r in rows_:
                g = next((g for g in r.breakdown if g.by == by and g.group == name), None)
                if g is None:
                    line.append("–")
                    continue
                parts = []
                if g.recall is not None:
                    parts.append(f"recall {fmt(g.recall, 2)}")
                if g.fpr is not None:
                    parts.append(f"FPR {fmt(g.fpr, 2)}")
                auc = g.auroc if g.auroc is not None else g.auroc_vs_rest
                if auc is not None:
                    parts.append(f"AUROC {fmt(auc)}")
                line.append("; ".join(parts) + f" (n={g.n_pos + g.n_neg})")
            body.append(line)
        tables.append(Table(
            f"{split}: by {by}", [by] + [label(r) for r in rows_], body,
            "Recall for harmful groups, FPR for benign groups, at the calibrated threshold; AUROC within "
            "the group, or of the group against the other class of the split when it has one class.",
            f"table-{split}-{by}",
        ))
    return tables


def sae_quality_table(report: Report) -> Table | None:
    if not report.sae_quality:
        return None
    cols = ["sae", "seed", "meets_bar", "delta_lm_loss", "random_same_norm_delta_lm_loss", "ce_loss_recovered", "l0",
            "fvu", "fvu_other_dims", "dead_in_training", "dead_fraction", "dense_fraction", "d_sae", "training_tokens"]
    head = ["SAE", "seed", "meets the quality bar", "delta LM loss [95% CI]", "random error, same norm",
            "CE loss recovered (zero abl.)", "L0", "FVU", "FVU w/o 8 outlier dims", "dead in training",
            "never fires on val", "fires on >10%", "latents", "training tokens"]

    def cell(q, c):
        v = getattr(q, c)
        if c == "delta_lm_loss" and v is not None and q.delta_lm_loss_ci is not None:
            return fmt_ci(v, q.delta_lm_loss_ci)
        if c == "meets_bar":
            return {True: "yes", False: "no", None: "–"}[v]
        return fmt(v) if isinstance(v, float) else ("–" if v is None else str(v))

    rows = [[cell(q, c) for c in cols] for q in report.sae_quality]
    return Table("SAE quality", head, rows,
                 "Delta LM loss: next-token loss (nats/token) with the reconstruction spliced in at every token but BOS "
                 "minus the clean loss, on held-out documents of the SAE's own corpus; CE loss recovered is against zero "
                 "ablation of the same positions. L0, FVU and the latent counts are on the benchmark's validation tokens. "
                 "The quality bar bounds both delta LM loss and FVU (assay.experiment.sae_quality.QUALITY_BAR).",
                 "table-sae")


def family_table(report: Report) -> Table | None:
    """Each family's configuration chosen on validation, with its paired difference to the dense
    probe's on the held-out splits."""
    chosen = report.diagnostics.get("family_best") or {}
    dense = chosen.get(REFERENCE)
    if not chosen or dense is None:
        return None
    keys = ("method", "features", "sae", "k", "selector")
    splits = [s for s in ("train", "val", "calib", "ood") if s in report.splits()]
    rows = []
    for fam, ref in chosen.items():
        by_split = {r.split: r for r in primary(report) if all(getattr(r, k) == ref.get(k) for k in keys)}
        if not by_split:
            continue
        line = [fam, label(next(iter(by_split.values())))]
        line += [fmt_ci(by_split[s].auroc, by_split[s].auroc_ci) if s in by_split else "–" for s in splits]
        for s in ("calib", "ood"):
            c = next((c for c in report.comparisons if c.kind == "family_best" and c.split == s
                      and all(getattr(c.b, k) == ref.get(k) for k in keys)), None)
            line.append("–" if c is None else f"{c.diff:+.3f} [{c.ci.low:+.3f}, {c.ci.high:+.3f}]{' *' if c.outside_noise else ''}")
        rows.append(line)
    return Table("Each family's best on validation", ["family", "configuration"] + [f"AUROC {s}" for s in splits]
                 + ["dense − it, calib", "dense − it, ood"], rows,
                 "Configuration (aggregation, selector) chosen per family by validation AUROC only; calib is the held-out "
                 "in-distribution split. Differences are paired (same examples) with clustered 95% bootstrap intervals; "
                 "* marks an interval that excludes 0.", "table-families")


def same_aggregation_tables(report: Report) -> list[Table]:
    """SAE methods against the dense probe on the same aggregation, one table per split."""
    out = []
    aggs = list(dict.fromkeys(c.a.features for c in report.comparisons if c.kind == "same_aggregation"))
    for split in ("train", "calib", "ood"):
        cmp = [c for c in report.comparisons if c.kind == "same_aggregation" and c.split == split]
        if not cmp:
            continue
        rows: dict[str, dict[str, str]] = {}
        for c in cmp:
            rows.setdefault(label(c.b, features=False), {})[c.a.features] = (
                f"{c.b_auroc:.3f} ({c.diff:+.3f} [{c.ci.low:+.3f}, {c.ci.high:+.3f}]{' *' if c.outside_noise else ''})")
        out.append(Table(
            f"{split}: SAE probes vs the dense probe on the same aggregation", ["SAE method"] + aggs,
            [[n] + [cells.get(a, "–") for a in aggs] for n, cells in rows.items()],
            "Cell: the SAE method's AUROC (dense minus SAE [paired clustered 95% interval]); * = interval excludes 0.",
            f"table-same-agg-{split}"))
    return out


def k_sweep_table(report: Report, split: str = "ood") -> Table | None:
    rows_ = [r for r in primary(report) if info(r.method).sweeps_k and r.split == split and r.auroc is not None]
    if not rows_:
        return None
    ks = sorted({r.k for r in rows_})
    lines: dict[tuple, dict[int, float]] = {}
    for r in rows_:
        lines.setdefault((r.sae, r.selector, r.features), {})[r.k] = r.auroc
    return Table(f"{split}: k-sparse AUROC by k", ["SAE", "selector", "aggregation"] + [f"k={k}" for k in ks],
                 [[sae, sel, feats] + [fmt(v.get(k)) for k in ks] for (sae, sel, feats), v in sorted(lines.items())],
                 "Every k-sparse configuration (first seed); latents chosen on train.", f"table-k-{split}")


def layer_sweep_table(sweep: dict | None, calibrate_on: str = "calib") -> Table | None:
    if not sweep:
        return None
    aggs = sweep["aggregations"]
    cell = {(r["layer"], r["aggregation"]): r for r in sweep["rows"]}
    order = [layer for layer in sweep["layers"]] + ["concat"]
    rows = []
    for layer in order:
        name = f"{'+'.join(map(str, sweep['concat_layers']))}" if layer == "concat" else str(layer)
        mark = " (used)" if layer == sweep["used"] else ""
        rows.append([name + mark] + [f"{fmt(cell[(layer, a)]['val_auroc'])} / {fmt(cell[(layer, a)]['ood_auroc'])} / "
                                     f"{fmt(cell[(layer, a)]['ood_recall'], 2)}" for a in aggs])
    how = ("the layer used is the one best on validation AUROC averaged over the aggregations"
           if sweep["how"] == "validation" else f"the layer used was given (the validation rule would choose {sweep['chosen']})")
    return Table("Dense probe at every layer", ["layer"] + [f"{a}: val / OOD AUROC / OOD recall" for a in aggs], rows,
                 f"Dense logistic probe fitted on train at each layer (C on val); recall at {sweep['target_fpr']:.0%} FPR "
                 f"with the threshold set on {calibrate_on} benign prompts; {how}. OOD "
                 "is shown, never used to choose.", "table-layers")


def autointerp_table(ai: dict | None) -> Table | None:
    """Per study SAE (and explainer/scorer pair): detection AUROC of the explanations, uniform and
    frequency-weighted, beside its chance controls, the random-SAE baseline and the margin over it,
    and split by where the latents came from."""
    if not ai or not ai.get("rows"):
        return None

    def cell(m: dict | None, w: str, ci: bool = True, fmt: str = ".3f") -> str:
        if not m or m.get(w) is None or m[w] != m[w]:
            return "n/a"
        lo, hi = m.get(f"{w}_ci") or [None, None]
        short = fmt.replace(".3f", ".2f")  # intervals to two places
        return f"{m[w]:{fmt}}" + (f" [{lo:{short}}, {hi:{short}}]" if ci and lo is not None and lo == lo else "")

    rows = []
    for r in ai["rows"]:
        det = lambda run: (r.get(run) or {}).get("detection")  # noqa: E731
        n = lambda run: (det(run) or {}).get("n_scored", 0)  # noqa: E731
        c = r.get("controls") or {}
        chance = ("yes" if c.get("at_chance") else f"**no** ({', '.join(c.get('off_chance') or [])})") if c else "n/a"
        rows.append([f"{r['sae']} (s{r['seed']})", f"{r['explainer']} / {r['scorer']}",
                     f"{n('real_probe')} + {n('real_random')}",
                     cell(det("real"), "uniform"), cell(det("real"), "weighted"),
                     f"{cell(det('shuffled'), 'uniform', False)} / {cell(det('shuffled'), 'weighted', False)}",
                     cell(det("unstructured"), "uniform", False), chance,
                     f"{cell(det('random_sae'), 'uniform', False)} / {cell(det('random_sae'), 'weighted', False)}",
                     cell(det("margin"), "uniform", fmt="+.3f"), cell(det("margin"), "weighted", fmt="+.3f"),
                     cell(det("real_probe"), "uniform", False),
                     f"{cell((r.get('real') or {}).get('fuzzing'), 'uniform', False)} / "
                     f"{cell((r.get('real') or {}).get('fuzzing'), 'weighted', False)}"])
    t = ai["texts"]
    return Table("Auto-interpretability of the SAEs' latents",
                 ["SAE", "explainer / scorer", "latents (probe + uniform)", "detection, uniform [95% CI]",
                  "detection, freq-weighted [95% CI]", "shuffled control (uniform / weighted)",
                  "unstructured control", "controls at chance", "random SAE (uniform / weighted)",
                  "margin over random, uniform [95% CI]", "margin over random, freq-weighted [95% CI]",
                  "probe latents (uniform)", "fuzzing (uniform / weighted)"], rows,
                 f"Detection AUROC of each latent's explanation (0.5 = chance) on held-out windows of one length "
                 f"cut from {t['n']} texts (the {t['train_prompts']} training prompts and {t['held_out_tokens']} "
                 "held-out Wikipedia/dictionary and ShareGPT tokens). Uniform: mean over a uniform sample of live "
                 "latents; frequency-weighted (sum f_i s_i / sum f_i, f_i the firing frequency): mean over latents "
                 "drawn in proportion to f_i. A latent with no silent window scores 0.5. Chance controls, each "
                 "required within 0.5 +/- 0.05 before anything is ranked: explanations shuffled across latents, "
                 "and latents firing at random (0.5-80% of tokens) whatever the token. Baseline: a random SAE "
                 "with the trainer's initialisation whose latents fire at the trained SAE's frequencies; SAEs "
                 "are compared by their margin over it. Probe latents: those the headline k-sparse probe (its "
                 "configuration best on validation) selects.",
                 "table-autointerp")


def diagnostics_tables(report: Report) -> list[Table]:
    d, out = report.diagnostics, []
    if (t := layer_sweep_table(d.get("layer_sweep"), report.config.get("calibrate_on", "calib"))) is not None:
        out.append(t)
    if (d.get("hard_negatives") or {}).get("rows"):
        hn = d["hard_negatives"]
        out.append(Table(
            "AUROC by kind of negative", ["family", "split", "negatives", "harmful / benign rows", "AUROC [95% CI]",
                                          "dense − it [95% CI]"],
            [[r["family"], r["split"], f"{r['negatives']} ({', '.join(r['groups'])})", f"{r['n_pos']} / {r['n_neg']}",
              f"{r['auroc']:.3f} [{r['auroc_ci'][0]:.3f}, {r['auroc_ci'][1]:.3f}]",
              "–" if "dense_minus" not in r else
              f"{r['dense_minus']['diff']:+.3f} [{r['dense_minus']['ci'][0]:+.3f}, {r['dense_minus']['ci'][1]:+.3f}]"
              + (" *" if r["dense_minus"]["outside_noise"] else "")] for r in hn["rows"]],
            "Every harmful row of the split against its hard negatives (" + ", ".join(hn["hard"]) + ") and, apart, "
            "against its ordinary benign rows (" + ", ".join(hn["ordinary"]) + "), each family's configuration chosen "
            "on validation; clustered intervals, differences paired on the same rows; * marks an interval that "
            "excludes 0. transform_innocuous rows are harmful requests whose frame asks for a task on the text "
            "(count its words, repeat it in capitals, list synonyms, skip it in a list) and says not to carry it "
            "out: the user's intent is that task, so the label is benign.", "table-hard-negatives"))
    if (t := autointerp_table(d.get("autointerp"))) is not None:
        out.append(t)
    if d.get("related"):
        out.append(Table("Related experiments", ["command", "what it answers", "committed report"],
                         [[f"`{r['command']}`", r["what"], r["report"]] for r in d["related"]],
                         "Parts of GDM's study run as their own commands (each has its own report).", "table-related"))
    if d.get("ksparse_gaps"):
        iv = lambda x: f"{x['value']:+.3f} [{x['ci'][0]:+.3f}, {x['ci'][1]:+.3f}]"  # noqa: E731
        out.append(Table("k-sparse probes: gap to the dense probe in and out of distribution",
                         ["SAE", "k-sparse configuration", "calib gap [95% CI]", "OOD gap [95% CI]",
                          "OOD − calib [95% CI]", "GDM's pattern"],
                         [[g["sae"], f"{g['config']['features']} {g['config']['selector']} k={g['config']['k']}",
                           iv(g["calib_gap"]), iv(g["ood_gap"]), iv(g["gap_difference"]),
                           "yes" if g["gdm_pattern"] else "no"] for g in d["ksparse_gaps"]],
                         "Dense AUROC minus the k-sparse probe's (each family's configuration chosen on validation); "
                         "paired clustered intervals. GDM's pattern: calib gap within noise of 0, OOD gap above 0, "
                         "and the OOD gap above the calib gap.", "table-ksparse-gaps"))
    if d.get("gap_closed"):
        rule = {"pretrain_config": "pretrain's configuration", "own_config": "its own configuration"}
        out.append(Table("Share of the pretraining SAE's gap closed", ["SAE", "configuration rule", "split",
                                                                       "AUROC dense / pretrain / it", "gap [95% CI]",
                                                                       "share closed [95% CI]", "per seed"],
                         [[g["sae"], rule.get(g.get("rule", "pretrain_config"), "?"), g["split"],
                           f"{g['auroc_dense']:.3f} / {g['auroc_pretrain']:.3f} / {g['auroc_other']:.3f}",
                           f"{g['gap']:+.3f} [{g['gap_ci'][0]:+.3f}, {g['gap_ci'][1]:+.3f}]",
                           "–" if g["fraction_closed"] is None else
                           f"{g['fraction_closed']:.0%} [{g['fraction_ci'][0]:.0%}, {g['fraction_ci'][1]:.0%}]",
                           ", ".join(f"{x:.0%}" for x in g["fraction_per_seed"])] for g in d["gap_closed"]],
                         "(AUROC_it - AUROC_pretrain) / (AUROC_dense - AUROC_pretrain), the pretraining SAE at its "
                         "k-sparse configuration chosen on validation and the other SAE either at that same "
                         "configuration or at its own (chosen on validation); paired clustered bootstrap; "
                         "pretrain+pretrain-ft is the equal-steps control.", "table-gap"))
    if d.get("diff_of_means"):
        names = sorted({k.split(":", 1)[1] for row in d["diff_of_means"] for k in row if k.startswith("val_auroc:")})
        out.append(Table("Why difference of means fails", ["aggregation", "top-8 dims' variance share",
                                                          "their share of |mean difference|²"] + [f"val AUROC {n}" for n in names],
                         [[r["aggregation"], f"{r['top8_variance_share']:.0%}", f"{r['top8_mean_diff_share']:.0%}"]
                          + [fmt(r.get(f"val_auroc:{n}")) for n in names] for r in d["diff_of_means"]],
                         "Train split; the 8 highest-variance residual dimensions are Gemma's massive-activation "
                         "dimensions.", "table-diffmean"))
    if d.get("latent_stability"):
        out.append(Table("Stability of the k-sparse latent choice", ["SAE", "aggregation", "selector", "k",
                                                                    "mean Jaccard", "min Jaccard", "resamples"],
                         [[s["sae"], s["features"], s["selector"], str(s["k"]), fmt(s["jaccard_mean"], 2),
                           fmt(s["jaccard_min"], 2), str(s["resamples"])] for s in d["latent_stability"]],
                         "Overlap of the latents chosen on bootstrap resamples of the training clusters with those chosen on "
                         "the full training set.", "table-stability"))
    return out


def published_table(report: Report) -> Table | None:
    if not report.published:
        return None
    rows = [[p.source, p.method, p.split, p.metric, fmt(p.value), p.note or ""] for p in report.published]
    return Table("Published (GDM)", ["source", "method", "split", "metric", "value", "note"], rows,
                 "Numbers from the literature, on their model and data: context, not a like-for-like comparison.",
                 "table-published")


def all_tables(report: Report) -> list[Table]:
    tables = [t for t in (family_table(report),) if t is not None]
    tables += same_aggregation_tables(report)
    tables += headline_tables(report)
    tables += [t for t in (k_sweep_table(report, "calib"), k_sweep_table(report, "ood"), sae_quality_table(report))
               if t is not None]
    tables += diagnostics_tables(report)
    for split in report.splits():
        if split in ("calib", "ood"):
            tables += breakdown_tables(report, split)
    tables += [t for t in (published_table(report),) if t is not None]
    return tables
