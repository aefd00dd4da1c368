"""`assay experiment saes`: the harmful-intent study's SAEs alone, trained and measured as the
study trains and measures them, so that a preset too big for one budget can run them as their own
command.

The SAEs land where the study looks for them (the SAE cache, keyed on everything that changes
their weights), and their quality records beside them (keyed on which validation examples they
were measured on), so `assay experiment harmful-intent` with the same settings reuses both and
its report says which run trained them. Writes `saes.json` and `saes.md` (with each first-seed
SAE's firing-frequency histogram) in the output folder.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from assay.experiment.config import StudyConfig
from assay.fileio import write_json, write_text


def run_study_saes(cfg: StudyConfig, out_dir: str | Path, progress: bool = True) -> dict[str, Any] | None:
    """Data, model and layer as the study fixes them; then every SAE of every seed, and their quality
    on the benchmark's validation tokens (the only benchmark prompts read here).

    Under torchrun the SAEs train with DDP across the ranks; rank 0 prepares first (data, layer sweep:
    the others then read its caches) and alone measures and writes the result; the others return None."""
    from assay.fileio import kept_only_if_used

    with kept_only_if_used(out_dir):  # a bad model or dataset leaves no empty run folder behind
        return _run_study_saes(cfg, out_dir, progress)


def _run_study_saes(cfg: StudyConfig, out_dir: str | Path, progress: bool) -> dict[str, Any] | None:
    from assay import distributed
    from assay.experiment.study import Study
    from assay.provenance import provenance

    study = Study(cfg, out_dir, progress and distributed.is_main())
    with distributed.main_first():
        study.prepare()
    study.stage("SAEs", study.train_saes)
    if not distributed.is_main():
        return None
    val = study.stage("validation activations", lambda: study.benchmark_activations(study.idx["val"]))
    val_tokens = list(val.iter_tokens(study.cfg.layer, 8192, mask="all"))
    quality = study.stage("SAE quality", lambda: study.sae_quality(val_tokens))
    cfg = study.cfg
    made = {(p["sae"], p["seed"]): p for p in study.sae_provenance}
    rows = [{**{k: v for k, v in q.items() if k not in ("path", "outlier_dims", "freq_hist")},
             "dir": made[(q["sae"], q["seed"])]["dir"], "trained": made[(q["sae"], q["seed"])]} for q in quality]
    figures = study.out / "figures"
    figures.mkdir(exist_ok=True)
    for q in quality:
        hist = Path(q["path"]) / "freq_hist.png"
        if q["seed"] == cfg.seed and hist.exists():
            shutil.copyfile(hist, figures / f"freq_hist-{q['sae']}.png")
    result = {
        "kind": "study-saes", "config": cfg.model_dump(), "layer": cfg.layer,
        "layer_source": (study.layer_sweep or {}).get("source", {}).get("path") if study.layer_sweep else None,
        "saes": rows,
        "provenance": provenance(model=cfg.model, layer=cfg.layer, dataset_fingerprint=study.ds.fingerprint,
                                 seed=cfg.seed, seeds=cfg.seeds, model_fingerprint=study.lm.fingerprint, dtype=cfg.dtype,
                                 preset=cfg.preset, timings_seconds={k: round(v, 1) for k, v in study.timings.items()}),
    }
    write_json(study.out / "saes.json", result)
    write_text(study.out / "saes.md", render(result))
    return result


def render(result: dict[str, Any]) -> str:
    """saes.md: what was trained, how well it reconstructs, and what it cost."""
    cfg, prov = result["config"], result["provenance"]
    sae = cfg["sae"]
    lines = [
        f"# The harmful-intent study's SAEs ({cfg['preset']} preset, layer {result['layer']}, {cfg['dtype']})", "",
        f"{sae['arch']} SAEs, {sae['width']} latents (k={sae['k']}), {sae['epochs']} epochs over their tokens; seeds "
        f"{', '.join(map(str, cfg_seeds(cfg)))}. Trained by `assay experiment saes`; `assay experiment harmful-intent` "
        "with the same settings reuses them and these quality records (its report names the run that trained them).",
        "", f"Commit {str(prov.get('git_commit'))[:12]}, created {prov.get('created')}, on {prov.get('device')}.", "",
        "L0, FVU, dead and dense (firing on >10% of tokens) latents: on the benchmark's validation tokens. Delta LM "
        "loss: splicing the reconstruction in, on held-out documents of the SAE's own corpus (first seed only).", "",
        "| SAE | seed | corpus | training tokens | L0 | FVU | FVU without 8 top dims | delta LM loss | dead | dense | "
        "trained (s) | corpus extracted (s) | trained in this run |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["saes"]:
        t = r["trained"]
        dl = f"{r['delta_lm_loss']:.3f}" if r.get("delta_lm_loss") is not None else "-"
        lines.append(
            f"| {r['sae']} | {r['seed']} | {r['corpus']} | {r.get('training_tokens') or '-'} | {r['l0']:.1f} | "
            f"{r['fvu']:.3f} | {_num(r.get('fvu_other_dims'))} | {dl} | {r['dead']} | {r['dense']} | "
            f"{_num(t.get('train_seconds'), 0)} | {_num(t.get('corpus_seconds'), 0)} | "
            f"{'yes' if t['trained_in_this_run'] else 'no (' + str(t.get('git_commit') or 'unknown')[:7] + ')'} |")
    lines += ["", "Wall time per stage (s): " + ", ".join(f"{k} {v:.1f}" for k, v in prov["timings_seconds"].items()),
              "", "Firing-frequency histograms (first seed): "
              + ", ".join(f"[{r['sae']}](figures/freq_hist-{r['sae']}.png)" for r in result["saes"]
                          if r["seed"] == cfg["seed"]), ""]
    return "\n".join(lines)


def cfg_seeds(cfg: dict[str, Any]) -> list[int]:
    return [cfg["seed"] + i for i in range(cfg["n_seeds"])]


def _num(x: Any, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"
