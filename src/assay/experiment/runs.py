"""Which configurations a study fits (`runs`) and how (`ProbeRuns`): every method of the config at
every aggregation it reads, per seed for stochastic fits and for every probe on a seeded SAE, per k
and latent selector for k-sparse; each fitted on `train`, tuned on `val`, scored on every example,
its scores one cached part (`PartCache`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from assay.experiment.config import StudyConfig
from assay.experiment.context import StudyData
from assay.experiment.parts import PartCache, Run
from assay.probes.names import info

log = logging.getLogger(__name__)


def study_methods(cfg: StudyConfig, on_sae: bool) -> list[Any]:
    from assay.probes.methods import METHODS

    return [METHODS[n] for n in cfg.methods if METHODS[n].reads_sae == on_sae]


def input_spec(cfg: StudyConfig, method: str, aggregation: str | None, sae: str | None = None) -> Any:
    from assay.probes.inputs import InputSpec

    return InputSpec.for_method(method, aggregation=aggregation, layer=cfg.layer, model=cfg.model, sae=sae,
                                max_tokens=cfg.attention_max_tokens)


def runs(cfg: StudyConfig, m: Any, sae: tuple[str, int] | None = None) -> list[Run]:
    """Every configuration of method `m` the study fits, on the model's activations and the texts
    (`sae` None) or on one SAE's outputs."""
    if sae is not None:
        name, seed = sae
        if info(m.name).sweeps_k:
            return [Run(m.name, a, name, k, sel, seed) for a in cfg.aggregations for sel in cfg.selectors
                    for k in cfg.ks]
        return [Run(m.name, a, name, info(m.name).k, None, seed) for a in cfg.aggregations]
    aggs = cfg.aggregations if m.reads == "pooled" else [None]
    return [Run(m.name, input_spec(cfg, m.name, a).label, seed=s) for a in aggs
            for s in (cfg.seeds if m.seeded else [None])]


def fit_probe(data: StudyData, probe: Any, X: Any, mask: Any = None, **fit_kw: Any) -> tuple[np.ndarray, dict[str, Any]]:
    """Fit on train (validation for the probe's own hyperparameters), score every example."""
    tr, va = data.idx["train"], data.idx["val"]
    kw = {} if mask is None else {"mask": mask[tr], "mask_val": mask[va]}
    probe.fit(X[tr], data.y[tr], X[va], data.y[va], **kw, **fit_kw)
    scores = probe.score(X, mask=mask) if mask is not None else probe.score(X)
    return np.asarray(scores), dict(getattr(probe, "meta", {}))


class ProbeRuns:
    """Fits a study's runs on `inputs` (`probes.inputs.Inputs` over its activations), keeping each
    run's scores in `parts`; `sae_paths` are the study's SAEs by (name, seed)."""

    def __init__(self, data: StudyData, inputs: Any, parts: PartCache,
                 sae_paths: dict[tuple[str, int], Path] | None = None) -> None:
        self.data, self.inputs, self.parts = data, inputs, parts
        self.sae_paths = sae_paths if sae_paths is not None else {}
        self.sae: Any = None  # the SAE whose probes are being fitted
        self.rankings: dict[tuple[str, str], Any] = {}  # its latents ranked per (aggregation, selector)

    def fit_all(self, sae: tuple[str, int] | None) -> None:
        """Fit every missing run of every method on the model's activations and the texts (`sae`
        None), or on one SAE's outputs, each input computed once for all of them."""
        cfg = self.data.cfg
        self.fit_missing([r for m in study_methods(cfg, on_sae=sae is not None) for r in runs(cfg, m, sae)], sae)

    def fit_missing(self, todo: list[Run], sae: tuple[str, int] | None = None) -> None:
        todo = [r for r in todo if not self.parts.cached(r)]
        if not todo:
            return
        self.sae = None
        if sae is not None:
            from assay.sae.io import load_sae

            log.info("SAE probes on %s (seed %d)", *sae)
            self.sae = load_sae(self.sae_paths[sae], device=str(self.data.lm.device))
            self.rankings = self.rank_latents(todo)
        for run in todo:
            self.parts.score(run, lambda: self.fit(run))
        self.inputs.release()

    def read(self, run: Run) -> tuple[Any, Any]:
        a = None if run.features.startswith(("tokens:", "text")) else run.features
        path = str(self.sae_paths[(run.sae, run.seed)]) if run.sae else None
        return self.inputs.read(input_spec(self.data.cfg, run.method, a, path), self.sae)

    def fit(self, run: Run) -> tuple[np.ndarray, dict[str, Any]]:
        from assay.probes.methods import make_probe

        cfg = self.data.cfg
        X, mask = self.read(run)
        seed = cfg.seed if run.seed is None else run.seed
        if not info(run.method).sweeps_k:
            return fit_probe(self.data, make_probe(run.method, seed=seed), X, mask)
        ranking, path = self.rankings[(run.features, run.selector)]
        scores, meta = fit_probe(self.data, make_probe(run.method, seed=seed, k=run.k, select=run.selector), X,
                                 order=ranking)
        meta["l1_path"] = path
        if run.k == cfg.headline_k and run.seed == cfg.seed:
            meta["stability"] = self.selection_stability(X, run.selector, ranking[: run.k])
        return scores, meta

    def rank_latents(self, todo: list[Run]) -> dict[tuple[str, str], Any]:
        """Latent rankings on the training set the k-sparse runs need, once per aggregation and
        selector; the L1 paths in parallel processes (their coordinate descent runs on one core)."""
        from assay.probes.sparse import selection_order

        tr, ks, y = self.data.idx["train"], self.data.cfg.ks, self.data.y
        wanted = sorted({(r.features, r.selector): r for r in todo if info(r.method).sweeps_k}.items())
        Z = {key: self.read(r)[0][tr] for key, r in wanted}
        ranked = parallel_map(selection_order, {key: (Z[key].numpy(), y[tr], key[1], ks) for key, _ in wanted
                                                if key[1] == "l1"})
        return ranked | {key: selection_order(Z[key], y[tr], key[1], ks) for key, _ in wanted if key[1] != "l1"}

    def selection_stability(self, Z: torch.Tensor, select: str, chosen: np.ndarray) -> dict[str, Any]:
        """How often the latents chosen on the training set are chosen again on bootstrap resamples
        of its clusters: mean Jaccard overlap of the k-sets, and each chosen latent's pick rate."""
        from assay.metrics.bootstrap import cluster_weights
        from assay.probes.sparse import selection_order

        data, tr, k = self.data, self.data.idx["train"], len(chosen)
        W = cluster_weights(data.units[tr].tolist(), data.cfg.stability_resamples, data.cfg.seed + 7)
        Zt, yt = Z[tr].numpy(), data.y[tr]
        calls = {b: (Zt[np.repeat(np.arange(len(tr)), w)], yt[np.repeat(np.arange(len(tr)), w)], select, [k])
                 for b, w in enumerate(W)}
        sets, picks = [], {int(j): 0 for j in chosen}
        # an L1 path takes seconds on one core; mean-difference ranking is instant
        for again, _ in parallel_map(selection_order, calls, processes=select == "l1").values():
            s = set(again[:k].tolist())
            sets.append(len(s & set(chosen.tolist())) / len(s | set(chosen.tolist())))
            for j in s & set(picks):
                picks[j] += 1
        return {"resamples": len(W), "jaccard_mean": float(np.mean(sets)), "jaccard_min": float(np.min(sets)),
                "pick_rate": {str(j): c / len(W) for j, c in picks.items()}}


def parallel_map(fn: Callable[..., Any], calls: dict[Any, tuple], processes: bool = True) -> dict[Any, Any]:
    """`{key: fn(*args)}` for `calls = {key: args}`, over worker processes (one per core, at most
    8): for single-threaded fits such as the L1 path's coordinate descent. `fn` must be a module-level function and
    `args` plain data (they are pickled). Results are those of a serial loop."""
    import os

    jobs = min(len(calls), os.cpu_count() or 1, 8) if processes else 1
    if jobs < 2:
        return {key: fn(*args) for key, args in calls.items()}
    from joblib import Parallel, delayed

    results = Parallel(n_jobs=jobs, backend="loky")(delayed(fn)(*args) for args in calls.values())
    return dict(zip(calls, results))
