"""Probes on each SAE of the sae-frequency sweep: how the architectures' latents serve the
harmful-intent benchmark (GDM compared each SAE's probes the same way).

Per SAE, the 1-sparse probe and the k-sparse probe (k = 20, latents chosen by difference of
means) read the SAE's latents max-pooled over every real token (`all.max`), beside the dense
logistic probe on the same activations; AUROC on the validation split and on the OOD split.
The study's machinery does the work (`context.StudyData`, `parts.PartCache`, `runs.ProbeRuns`):
same data pipeline, same activation cache, same cached parts, so nothing here re-implements a probe.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

AGGREGATION = "all.max"
K = 20
SELECTOR = "mean_diff"


def sae_probes(lm: Any, layer: int, sae_dirs: dict[str, Path], out: Path, preset: str = "quick", seed: int = 0,
               progress: bool = True) -> dict[str, Any]:
    """{"dense": {...}, "saes": {sae name: {"1-sparse": {...}, "k-sparse": {...}}}}, each with
    `val_auroc` and `ood_auroc`."""
    from assay.activations import extract
    from assay.experiment.config import StudyConfig
    from assay.experiment.context import StudyData, study_dataset
    from assay.experiment.parts import PartCache, Run, run_context
    from assay.experiment.runs import ProbeRuns
    from assay.metrics import auroc
    from assay.probes.inputs import Inputs

    # The study's default aggregations, so the benchmark's activations come from its cache.
    cfg = StudyConfig.preset_config(preset, layer=layer, seed=seed, methods=["dense-logistic", "1-sparse", "k-sparse"],
                                    ks=[K], selectors=[SELECTOR], headline_k=-1)  # -1: no stability resampling
    data = StudyData(cfg, out, study_dataset(cfg), lm, progress)
    acts = extract(lm, data.ds.texts, [layer], dataset_fingerprint=data.ds.fingerprint,
                   aggregations=sorted(set(cfg.aggregations)), store_tokens=True, token_budget=cfg.token_budget,
                   progress=progress)
    sae_paths = {(name, seed): Path(p) for name, p in sae_dirs.items()}
    parts = PartCache(out, len(data.y), lambda run: run_context(run, data, acts.key, sae_paths))
    inputs = Inputs(acts, data.ds.texts, layer=layer, aggregations=cfg.aggregations, dtype=cfg.dtype, progress=progress)
    probes = ProbeRuns(data, inputs, parts, sae_paths)

    def aurocs(run: Run) -> dict[str, float]:
        s = parts.scores[run]
        return {f"{part}_auroc": float(auroc(s[data.idx[part]], data.y[data.idx[part]])) for part in ("val", "ood")}

    dense = Run("dense-logistic", AGGREGATION)
    probes.fit_missing([dense])
    result: dict[str, Any] = {"aggregation": AGGREGATION, "k": K, "selector": SELECTOR, "dense": aurocs(dense),
                              "saes": {}}
    for name in sae_dirs:
        runs = {"1-sparse": Run("1-sparse", AGGREGATION, name, 1, None, seed),
                "k-sparse": Run("k-sparse", AGGREGATION, name, K, SELECTOR, seed)}
        probes.fit_missing(list(runs.values()), (name, seed))
        result["saes"][name] = {m: aurocs(r) for m, r in runs.items()}
    return result
