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
from assay.experiment.sae_quality import QUALITY_BAR, bar_text
from assay.fileio import read_json, write_json, write_text


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
    val_tokens = None
    if distributed.is_main():  # the main rank alone measures (the curves during training, then quality)
        val = study.stage("validation activations", lambda: study.benchmark_activations(study.data.idx["val"]))
        val_tokens = list(val.iter_tokens(study.cfg.layer, 8192, mask="all"))
    study.stage("SAEs", lambda: study.train_saes(val_tokens))
    if not distributed.is_main():
        return None
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
    curves = training_curves(study.sae_paths)
    if any(c["points"] for c in curves):
        plot_curves(curves, figures / "curves.png")
    result = {
        "kind": "study-saes", "config": cfg.model_dump(), "layer": cfg.layer,
        "layer_source": (study.layer_sweep or {}).get("source", {}).get("path") if study.layer_sweep else None,
        "saes": rows, "bar": {"bounds": QUALITY_BAR, "text": bar_text(rows), "curves": curve_notes(curves, rows)},
        "curves": curves,
        "provenance": provenance(model=cfg.model, layer=cfg.layer, dataset_fingerprint=study.data.ds.fingerprint,
                                 seed=cfg.seed, seeds=cfg.seeds, model_fingerprint=study.data.lm.fingerprint, dtype=cfg.dtype,
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
        "loss: splicing the reconstruction in, on held-out documents of the SAE's own corpus.", "",
        f"**Quality bar**: {result['bar']['text']}"
        + ("" if not result["bar"]["curves"] else " Where the curves were heading: " + " ".join(result["bar"]["curves"])),
        "", "| SAE | seed | corpus | training tokens | L0 | FVU | FVU without 8 top dims | delta LM loss | meets bar | "
        "dead | dense | trained (s) | corpus extracted (s) | trained in this run |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["saes"]:
        t = r["trained"]
        dl = f"{r['delta_lm_loss']:.3f}" if r.get("delta_lm_loss") is not None else "-"
        lines.append(
            f"| {r['sae']} | {r['seed']} | {r['corpus']} | {r.get('training_tokens') or '-'} | {r['l0']:.1f} | "
            f"{r['fvu']:.3f} | {_num(r.get('fvu_other_dims'))} | {dl} | "
            f"{ {True: 'yes', False: 'no', None: '-'}[r.get('meets_bar')]} | {r['dead']} | {r['dense']} | "
            f"{_num(t.get('train_seconds'), 0)} | {_num(t.get('corpus_seconds'), 0)} | "
            f"{'yes' if t['trained_in_this_run'] else 'no (' + str(t.get('git_commit') or 'unknown')[:7] + ')'} |")
    if any(c["points"] for c in result.get("curves", [])):
        lines += ["", "![held-out curves](figures/curves.png)", "",
                  "Curves: FVU, L0 and dense latents on the benchmark's validation tokens at points during training, and "
                  "delta LM loss on the held-out documents for the first seed (points in `saes.json`, `curves`)."]
    lines += ["", cost_text(result["saes"]),
              "", "Wall time per stage of this run (s): "
              + ", ".join(f"{k} {v:.1f}" for k, v in prov["timings_seconds"].items()),
              "", "Firing-frequency histograms (first seed): "
              + ", ".join(f"[{r['sae']}](figures/freq_hist-{r['sae']}.png)" for r in result["saes"]
                          if r["seed"] == cfg["seed"]), ""]
    return "\n".join(lines)


def cost_text(rows: list[dict[str, Any]]) -> str:
    """What the SAEs cost where they were trained, summed from each SAE's own record (a rerun that
    reuses them costs seconds, so this run's stage timings alone would hide it)."""
    train = [r["trained"].get("train_seconds") for r in rows]
    corpus = [r["trained"].get("corpus_seconds") for r in rows]
    if any(v is None for v in train + corpus):
        return "Training cost: not recorded for every SAE."
    commits = sorted({str(r["trained"].get("git_commit") or "unknown")[:7] for r in rows})
    total = sum(train) + sum(corpus)
    return (f"Training cost, summed from the records of the run(s) that trained them ({', '.join(commits)}): "
            f"corpus extraction {sum(corpus):.0f} s, training with held-out curves {sum(train):.0f} s, "
            f"{total / 3600:.2f} h in all (the SAE-quality stage and the validation activations come on top).")


def training_curves(paths: dict[tuple[str, int], Path]) -> list[dict[str, Any]]:
    """Each SAE's held-out curve from its `training.json`, on one token axis: a finetune's points
    are offset by its parent's training tokens, so it continues its parent's curve."""
    from assay.experiment.config import by_name

    runs = {key: read_json(p / "training.json") for key, p in paths.items() if (p / "training.json").exists()}
    out = []
    for (name, seed), t in runs.items():
        parent = by_name(name).parent
        offset = (runs.get((parent, seed)) or {}).get("tokens", 0) if parent else 0
        points = [{"tokens": offset + p["tokens"], **p[name]} for p in t.get("curve") or [] if name in p]
        out.append({"sae": name, "seed": seed, "parent": parent, "offset_tokens": offset, "points": points})
    return out


def curve_notes(curves: list[dict[str, Any]], rows: list[dict[str, Any]]) -> list[str]:
    """Per SAE that misses a bound: where its curve was heading when training stopped, from the
    curve's own points (a line in log tokens through its last three: a rough extrapolation that
    ignores the learning-rate decay at the end, which lowers the last points)."""
    import math

    notes = []
    missed = {(r["sae"], r["seed"]) for r in rows if r.get("meets_bar") is False}
    for c in curves:
        pts = c["points"][len(c["points"]) // 2:] if c["offset_tokens"] == 0 else c["points"]
        if (c["sae"], c["seed"]) not in missed or len(pts) < 3:
            continue
        for key, bound in QUALITY_BAR.items():
            tail = [(p["tokens"], p[key]) for p in pts[-3:] if p.get(key) is not None]
            if len(tail) < 3 or tail[-1][1] <= bound:
                continue
            xs, ys = [math.log(t) for t, _ in tail], [v for _, v in tail]
            mx, my = sum(xs) / 3, sum(ys) / 3
            slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
            log_at = mx + (bound - my) / slope if slope < 0 else math.inf
            where = ("not falling there, so more of the same training would not reach it" if slope >= 0 else
                     f"a line in log tokens through them reaches {bound} only beyond 10^12 tokens" if log_at > math.log(1e12)
                     else f"a line in log tokens through them reaches {bound} at about {math.exp(log_at) / 1e6:,.0f}M tokens")
            notes.append(f"{c['sae']} (seed {c['seed']}): {key} {tail[0][1]:.3f} -> {tail[-1][1]:.3f} over its last "
                         f"three curve points ({tail[0][0] / 1e6:.1f}M to {tail[-1][0] / 1e6:.1f}M tokens); {where}.")
    return notes


def plot_curves(curves: list[dict[str, Any]], path: Path) -> Path:
    """FVU on the benchmark's validation tokens and delta LM loss against training tokens, one line
    per SAE and seed (finetunes continue their parent's line), with the quality bar dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    colours = {}
    for c in curves:
        colour = colours.setdefault(c["sae"], f"C{len(colours)}")
        for ax, key in zip(axes, ("fvu", "delta_lm_loss")):
            pts = [(p["tokens"], p[key]) for p in c["points"] if p.get(key) is not None]
            if pts:
                first = c["seed"] == min(x["seed"] for x in curves if x["sae"] == c["sae"])
                ax.plot([t / 1e6 for t, _ in pts], [v for _, v in pts], "o-" if first else "-", color=colour,
                        alpha=1.0 if first else 0.4, ms=3, label=c["sae"] if first else None)
    for ax, key, label in zip(axes, ("fvu", "delta_lm_loss"), ("FVU (benchmark validation tokens)",
                                                                 "delta LM loss (nats/token, held-out text)")):
        ax.axhline(QUALITY_BAR[key], color="k", ls="--", lw=1)
        ax.set_xlabel("training tokens (millions; finetunes continue their parent)")
        ax.set_ylabel(label)
        ax.set_yscale("log")
    axes[0].legend(fontsize=8)
    fig.suptitle("Held-out curves during training (dashed: the quality bar; faint lines: later seeds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def cfg_seeds(cfg: dict[str, Any]) -> list[int]:
    return [cfg["seed"] + i for i in range(cfg["n_seeds"])]


def _num(x: Any, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"
