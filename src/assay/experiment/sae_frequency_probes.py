"""Probes on each SAE of the sae-frequency sweep: how the architectures' latents serve the
harmful-intent benchmark (GDM compared each SAE's probes the same way).

Per SAE, the 1-sparse probe and the k-sparse probe (k = 20, latents chosen by difference of
means) read the SAE's latents max-pooled over every real token (`all.max`), beside the dense
logistic probe on the same activations; AUROC on the validation split and on the OOD split.
The study's machinery (`assay.experiment.study.Study`) does the work: same data pipeline, same
activation cache, same cached parts, so nothing here re-implements a probe.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

AGGREGATION = "all.max"
K = 20
SELECTOR = "mean_diff"


def sae_probes(lm: Any, layer: int, sae_dirs: dict[str, Path], out: Path, preset: str = "quick", seed: int = 0,
               progress: bool = True) -> dict[str, Any]:
    """{"dense": {...}, "saes": {sae name: {"1-sparse": {...}, "k-sparse": {...}}}}, each with
    `val_auroc` and `ood_auroc`."""
    from assay.activations import extract
    from assay.data import load_or_build
    from assay.experiment.config import StudyConfig
    from assay.experiment.study import Run, Study, subsample, with_calibration_split
    from assay.metrics import auroc
    from assay.probes.inputs import Inputs
    from assay.sae.io import load_sae

    # The study's default aggregations, so the benchmark's activations come from its cache.
    cfg = StudyConfig.preset_config(preset, layer=layer, seed=seed, methods=["dense-logistic", "1-sparse", "k-sparse"],
                                    ks=[K], selectors=[SELECTOR], headline_k=-1)  # -1: no stability resampling
    study = Study(cfg, out, progress=progress)
    study.ds = with_calibration_split(subsample(load_or_build(cfg.data or cfg.preset, cfg.seed), cfg.subsample,
                                                cfg.seed), cfg.calibrate_on, cfg.seed)
    split = np.array([e.split for e in study.ds.examples])
    study.y = np.array([e.label for e in study.ds.examples])
    study.units = study.ds.clusters
    study.idx = {s: np.flatnonzero(split == s) for s in ("train", "val", cfg.calibrate_on, "ood")}
    study.lm = lm
    study.acts = extract(lm, study.ds.texts, [layer], dataset_fingerprint=study.ds.fingerprint,
                         aggregations=sorted(set(cfg.aggregations)), store_tokens=True, token_budget=cfg.token_budget,
                         progress=progress)
    study.inputs = Inputs(study.acts, study.ds.texts, layer=layer, aggregations=cfg.aggregations, dtype=cfg.dtype,
                          progress=progress)
    study.sae_paths = {(name, seed): Path(p) for name, p in sae_dirs.items()}

    def aurocs(run: Run) -> dict[str, float]:
        s = study.scores[run]
        return {f"{part}_auroc": float(auroc(s[study.idx[part]], study.y[study.idx[part]])) for part in ("val", "ood")}

    dense = Run("dense-logistic", AGGREGATION)
    study.score(dense, lambda: study.fit(dense))
    result: dict[str, Any] = {"aggregation": AGGREGATION, "k": K, "selector": SELECTOR, "dense": aurocs(dense),
                              "saes": {}}
    for name in sae_dirs:
        runs = {"1-sparse": Run("1-sparse", AGGREGATION, name, 1, None, seed),
                "k-sparse": Run("k-sparse", AGGREGATION, name, K, SELECTOR, seed)}
        todo = [r for r in runs.values() if not study.cached(r)]
        if todo:
            log.info("probes on SAE %s", name)
            study._sae = load_sae(study.sae_paths[(name, seed)], device=str(lm.device))
            study._rankings = study.rank_latents(todo)
            for run in todo:
                study.score(run, lambda run=run: study.fit(run))
            study.inputs.release()
        result["saes"][name] = {m: aurocs(r) for m, r in runs.items()}
    return result
