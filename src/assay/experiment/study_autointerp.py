"""Auto-interpretability of the study's SAEs: are the latents the sparse probes read interpretable,
and how does each SAE's interpretability look by uniform and by frequency-weighted averaging?

Per SAE (first seed), the latents the headline k-sparse probe selects (its configuration best on
validation: aggregation and selector) are explained and scored first, then a seeded random sample
and a frequency-proportional sample of live latents, with the shuffled and unstructured chance
controls and the random-SAE baseline (`assay.autointerp`); SAEs are compared by their margin over it. Every
SAE reads the same texts, so the SAEs compare like for like: the benchmark's training prompts (where
the probe latents were chosen; nothing here chooses anything) and held-out Wikipedia and ShareGPT
text in equal parts. The default pair is the rule-based one (top tokens, token-set detector). The
bundled language model also explains and scores a few latents of the first SAE, to show what a
small local explainer is worth against its own shuffled control.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from assay.experiment.context import StudyData
from assay.experiment.parts import PartCache

log = logging.getLogger(__name__)

TESTS = ("detection", "fuzzing")


def probe_latents(data: StudyData, parts: PartCache, sae: str, seed: int) -> tuple[list[int], dict[str, Any] | None]:
    """The latents of the headline k-sparse probe on (`sae`, `seed`) whose configuration is best on
    validation AUROC, in selection order, and that configuration."""
    from assay.metrics import auroc
    from assay.probes.names import info

    cfg, va = data.cfg, data.idx["val"]
    runs = [r for r in parts.scores if info(r.method).sweeps_k and r.sae == sae and r.seed == seed
            and r.k == cfg.headline_k and "stability" in parts.meta.get(r, {})]
    if not runs:
        return [], None
    val = {r: float(auroc(parts.scores[r][va], data.y[va])) for r in runs}
    best = max(runs, key=lambda r: (val[r], r.features, r.selector or ""))
    chosen = [int(j) for j in parts.meta[best]["stability"]["pick_rate"]]
    return chosen, {"aggregation": best.features, "selector": best.selector, "k": best.k, "val_auroc": val[best]}


def autointerp_texts(data: StudyData, exclude: frozenset[str]) -> list[str]:
    """The benchmark's training prompts and held-out text of the SAEs' two corpora (half each): the
    pretraining mix (Wikipedia and dictionary) and ShareGPT, from the end of each corpus's order."""
    from assay.sae.corpus import held_out_texts

    cfg, lm = data.cfg, data.lm  # the model, not its tokenizer: the texts are kept under its tokenizer's hash
    prompts = [data.ds.texts[i] for i in data.idx["train"]]
    half = cfg.autointerp_tokens // 2
    return (prompts + held_out_texts("pretrain", lm, half, cfg.autointerp_max_tokens, seed=cfg.seed)
            + held_out_texts("chat", lm, half, cfg.autointerp_max_tokens, seed=cfg.seed, exclude=exclude))


def compact(summary: dict[str, Any], where: str) -> dict[str, Any]:
    """What the report keeps of an autointerp summary: per run (real, shuffled, unstructured,
    random_sae, and the margin of real over random_sae) and per group of real latents (probe,
    random, frequency), detection and fuzzing, uniform and weighted with CIs; the chance check; both
    dictionaries' L0, dead and dense counts."""
    keep = ("n_scored", "uniform", "uniform_ci", "weighted", "weighted_ci")
    out: dict[str, Any] = {"dir": where, "explainer": summary["settings"]["explainer"],
                           "scorer": summary["settings"]["scorer"], "dictionary": summary["dictionaries"]["real"],
                           "dictionaries": summary["dictionaries"], "controls": summary.get("controls")}
    for run, r in summary["runs"].items():
        out[run] = {t: {k: r[t][k] for k in keep if k in r[t]} for t in TESTS if t in r}
    if "unstructured" in summary["runs"]:
        out["unstructured_by_rate"] = summary["runs"]["unstructured"].get("by_rate")
    for group, r in summary["runs"]["real"].get("by_group", {}).items():
        out[f"real_{'probe' if group == 'given' else group}"] = {t: {k: r[t][k] for k in keep} for t in TESTS}
    return out


def study_autointerp(data: StudyData, parts: PartCache, sae_paths: dict[tuple[str, int], Path],
                     exclude: frozenset[str]) -> dict[str, Any]:
    """Every study SAE of the first seed with the rule-based pair; the first SAE also with the
    bundled LM as explainer and scorer (`exclude`: the benchmark's prompts, kept out of the held-out
    chat text). Resumes per latent from `out/autointerp/`."""
    from assay.autointerp import autointerp_sae
    from assay.autointerp.explainers import HFExplainer
    from assay.autointerp.scorers import LMScorer
    from assay.sae.io import load_sae

    cfg, lm = data.cfg, data.lm
    texts = autointerp_texts(data, exclude)
    root = data.out / "autointerp"
    rows = []
    saes = [(name, seed) for (name, seed) in sae_paths if seed == cfg.seed]
    for name, seed in saes:
        sae = load_sae(sae_paths[(name, seed)], device=str(lm.device)).eval()
        ids, config = probe_latents(data, parts, name, seed)
        log.info("auto-interp of SAE %s: %d probe latents + %d random", name, len(ids), cfg.autointerp_latents)
        summary = autointerp_sae(sae, lm, cfg.layer, texts, latent_ids=ids, n_random=cfg.autointerp_latents,
                                 out_dir=root / f"{name}-s{seed}", max_tokens=cfg.autointerp_max_tokens, seed=seed,
                                 progress=data.progress)
        rows.append({"sae": name, "seed": seed, "architecture": sae.architecture, "probe": config,
                     "pair": "rule", **compact(summary, f"autointerp/{name}-s{seed}")})
        if name == saes[0][0] and cfg.autointerp_lm_latents > 0:
            n_probe = min(len(ids), cfg.autointerp_lm_latents // 2)
            lm_summary = autointerp_sae(
                sae, lm, cfg.layer, texts, latent_ids=ids[:n_probe],
                n_random=cfg.autointerp_lm_latents - n_probe, explainer=HFExplainer(lm),
                scorer=LMScorer(lm), out_dir=root / f"{name}-s{seed}-lm", max_tokens=cfg.autointerp_max_tokens,
                seed=seed, progress=data.progress, per_quantile=1,
                random_control=False, unstructured=False)  # shuffled is its control: an LM judges slowly
            rows.append({"sae": name, "seed": seed, "architecture": sae.architecture, "probe": config,
                         "pair": "lm", **compact(lm_summary, f"autointerp/{name}-s{seed}-lm")})
    return {"texts": {"n": len(texts), "train_prompts": int(len(data.idx["train"])),
                      "held_out_tokens": cfg.autointerp_tokens, "max_tokens": cfg.autointerp_max_tokens},
            "random_latents": cfg.autointerp_latents, "rows": rows}

