"""GDM's harmful-intent study as code: data -> activations -> probes and SAEs -> one report.

`Study` runs the stages in order and times each: data and model (`StudyData`), the layer sweep
(`layers`), activations, the probes (`runs.ProbeRuns`, each run's scores a cached part:
`parts`), the study's SAEs and their quality (`saes`, `sae_quality`), the probes on their
outputs, auto-interp of their latents (`study_autointerp`), then the report (`evaluation`).
Metrics, intervals and comparisons are computed from the parts' scores when the report is made.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable

import torch

from assay.experiment.config import StudyConfig
from assay.experiment.context import StudyData, study_dataset
from assay.experiment.parts import PartCache, run_context
from assay.fileio import sha256_json

log = logging.getLogger(__name__)


class Study:
    """The stages of one study over one output folder; `data` once `prepare` has run."""

    def __init__(self, cfg: StudyConfig, out_dir: str | Path, progress: bool = True):
        self.cfg, self.out, self.progress = cfg, Path(out_dir), progress
        self.out.mkdir(parents=True, exist_ok=True)
        self.timings: dict[str, float] = {}
        self.sae_paths: dict[tuple[str, int], Path] = {}
        self.sae_provenance: list[dict[str, Any]] = []
        self.layer_sweep: dict[str, Any] | None = None
        self.autointerp: dict[str, Any] | None = None
        self.exclusions: frozenset[str] | None = None

    def stage(self, name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        log.info("stage %s ...", name)
        value = fn()
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t0
        log.info("stage %s done in %.1f s", name, time.perf_counter() - t0)
        return value

    def run(self) -> Any:
        from assay.experiment.runs import ProbeRuns
        from assay.probes.inputs import Inputs

        t_start = time.perf_counter()
        self.prepare()
        cfg, data = self.cfg, self.data
        self.acts = self.stage("activations", self.benchmark_activations)
        self.parts = PartCache(self.out, len(data.y), lambda run: run_context(run, data, self.acts.key,
                                                                                self.sae_paths))
        self.inputs = Inputs(self.acts, data.ds.texts, layer=cfg.layer, aggregations=cfg.aggregations,
                             dtype=cfg.dtype, progress=self.progress)
        probes = ProbeRuns(data, self.inputs, self.parts, self.sae_paths)
        self.stage("probes", lambda: probes.fit_all(None))
        self.stage("SAEs", lambda: self.train_saes(self.val_tokens()))
        probes.sae_paths = self.sae_paths
        quality = self.stage("SAE quality", self.sae_quality)
        for m, q in zip(self.sae_provenance, quality):  # both in sae_paths' order
            m["quality_measured"] = (q.get("computed_by") or {}).get("unix")
        self.stage("SAE probes", lambda: [probes.fit_all(sae) for sae in self.sae_paths])
        if cfg.autointerp_latents or cfg.autointerp_lm_latents:
            from assay.experiment.study_autointerp import study_autointerp

            self.autointerp = self.stage("auto-interp", lambda: study_autointerp(
                data, self.parts, self.sae_paths, self.sae_exclusions()))
        self.timings["total before report"] = time.perf_counter() - t_start
        return self.stage("report", lambda: self.report(quality))

    def prepare(self) -> None:
        """Data, splits, model and layer sweep; the study's layer fixed (the sweep's choice when not given)."""
        from assay.experiment.layers import layer_sweep, load_sweep
        from assay.models import load
        from assay.models.loading import converted_meanwhile

        cfg = self.cfg
        with converted_meanwhile(cfg.model) as model_converted:  # a cold cache: the model converts meanwhile
            ds = self.stage("data", lambda: study_dataset(cfg))

            def model() -> Any:
                model_converted()
                return load(cfg.model, dtype=cfg.dtype, lazy=True)

            lm = self.stage("model", model)
        self.data = StudyData(cfg, self.out, ds, lm, self.progress)
        if cfg.layer_sweep:
            self.layer_sweep = self.stage("layer sweep", lambda: load_sweep(cfg.layer_sweep_from, self.data)
                                          if cfg.layer_sweep_from else layer_sweep(self.data))
        if cfg.layer is None:
            chosen = self.layer_sweep["chosen"] if self.layer_sweep else lm.n_layers // 2
            self.cfg = self.data.cfg = cfg.model_copy(update={"layer": chosen})

    def benchmark_activations(self, indices: Any = None) -> Any:
        """Token and pooled activations at the study's layer of every benchmark prompt (or of the
        examples at `indices`, e.g. the validation split alone)."""
        from assay.activations import extract

        cfg, texts, fp = self.cfg, self.data.ds.texts, self.data.ds.fingerprint
        if indices is not None:
            texts, fp = [texts[i] for i in indices], sha256_json([fp, [int(i) for i in indices]])
        return extract(self.data.lm, texts, [cfg.layer], dataset_fingerprint=fp,
                       aggregations=sorted(set(cfg.aggregations)), store_tokens=True, token_budget=cfg.token_budget,
                       progress=self.progress)

    def sae_exclusions(self) -> frozenset[str]:
        """Every benchmark prompt, normalised: no SAE corpus may contain one. Computed once a run (the
        SAE stage, SAE quality and auto-interp each ask; it reads the ShareGPT file, ~1.3 s)."""
        from assay.data.benchmark import sharegpt_requests
        from assay.data.normalize import normalize_text

        if self.exclusions is None:
            ds = self.data.ds
            self.exclusions = sharegpt_requests(ds) | frozenset(normalize_text(t) for t in ds.texts)
        return self.exclusions

    def train_saes(self, val_tokens: list[torch.Tensor] | None = None) -> None:
        """Train (or reuse) the study's SAEs; with `val_tokens`, each records its held-out curve."""
        from assay.experiment.saes import sae_provenance, train_study_saes

        started = time.time()
        self.sae_paths = train_study_saes(self.data.lm, self.cfg, self.sae_exclusions(), progress=self.progress,
                                          val_tokens=val_tokens)
        self.sae_provenance = sae_provenance(self.sae_paths, started)

    def val_tokens(self) -> list[torch.Tensor]:
        """The validation split's token activations at the study's layer (SAE quality and curves)."""
        return list(self.acts.iter_tokens(self.cfg.layer, 8192, mask="all", indices=self.data.idx["val"].tolist()))

    def sae_quality(self, val_tokens: list[torch.Tensor] | None = None) -> list[dict[str, Any]]:
        """Every SAE's quality on the validation split's tokens (`val_tokens`, by default read from
        the study's activations)."""
        from assay.experiment.sae_quality import sae_quality

        if val_tokens is None:
            val_tokens = self.val_tokens()
        val_key = sha256_json([self.data.ds.fingerprint, self.data.idx["val"].tolist()])[:16]
        return sae_quality(self.data.lm, self.cfg, self.sae_paths, val_tokens, val_key, self.sae_exclusions(),
                           self.progress)

    def report(self, quality: list[dict[str, Any]]) -> Any:
        from assay.experiment.evaluation import StudyRecord, build_report, diff_of_means_diagnostic

        record = StudyRecord(timings=self.timings, activation_cache=self.acts.key, layer_sweep=self.layer_sweep,
                             autointerp=self.autointerp, sae_provenance=self.sae_provenance,
                             diff_of_means=diff_of_means_diagnostic(self.data, self.inputs, self.parts.scores))
        return build_report(self.data, self.parts, quality, record)


def run_study(cfg: StudyConfig, out_dir: str | Path, progress: bool = True) -> Any:
    from assay.fileio import kept_only_if_used

    with kept_only_if_used(out_dir):  # a bad model or dataset leaves no empty run folder behind
        return Study(cfg, out_dir, progress).run()
