"""GDM's harmful-intent study as code: data -> activations -> probes and SAEs -> one report.

Every method is a `Run` (method, aggregation, SAE, k, selector, seed) whose per-example scores are
cached under `<out>/parts/`, keyed on what it was fitted on *and on the source of the code that
computes it*, so an interrupted run continues where it stopped, a warm rerun only re-evaluates,
and a part computed by older code is recomputed rather than mixed in. Metrics, intervals and
comparisons are computed from the scores when the report is made.

Splits: `train` fits every probe; `val` chooses hyperparameters (C, early stopping) and, in the
headline, each family's configuration; `calib` (carved from validation behaviours) only sets the
threshold, so it is also the held-out in-distribution split; `ood` is never used for any choice.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from assay.errors import InputError
from assay.experiment.config import StudyConfig
from assay.fileio import atomic_path, read_json, sha256_json, write_json
from assay.probes.names import info

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "calib", "ood")
# Part of every cached part's key, beside the code fingerprint: bump for changes the code
# fingerprint cannot see (none expected).
STUDY_VERSION = 4

# The code whose numbers every part records; its source is hashed into the part's key, with the
# module of the part's probe class (and the SAE code for a probe on an SAE).
_COMMON = ("assay.experiment.study", "assay.experiment.config", "assay.probes.base", "assay.probes.methods",
           "assay.probes.names", "assay.probes.inputs", "assay.probes.linear", "assay.probes.logistic",
           "assay.activations.aggregation", "assay.metrics")


def part_code(method: str) -> tuple[str, ...]:
    from assay.probes.methods import METHODS

    m = METHODS[method]
    extra = {"sentence-embedding": ("assay.models.sentence",)}.get(m.reads, ())
    return _COMMON + (m.probe.__module__,) + extra + (("assay.sae.architectures",) if m.reads_sae else ())


@dataclass(frozen=True)
class Run:
    """One fitted configuration: its scores on every example are one cached part."""

    method: str
    features: str  # what it reads, as reports label it (an aggregation, 'tokens:all[-N:]', 'text')
    sae: str | None = None
    k: int | None = None
    selector: str | None = None
    seed: int | None = None

    @property
    def id(self) -> str:
        parts = [self.method, self.features, self.sae, f"k{self.k}" if self.k else None, self.selector,
                 f"s{self.seed}" if self.seed is not None else None]
        return "/".join(p for p in parts if p)

    @property
    def kind(self) -> str:
        return info(self.method).kind

    def without_seed(self) -> "Run":
        return Run(**{**asdict(self), "seed": None})


class Study:
    """Holds what every stage shares: config, output folder, data, labels, scores, timings."""

    def __init__(self, cfg: StudyConfig, out_dir: str | Path, progress: bool = True):
        self.cfg, self.out, self.progress = cfg, Path(out_dir), progress
        self.out.mkdir(parents=True, exist_ok=True)
        self.timings: dict[str, float] = {}
        self.scores: dict[Run, np.ndarray] = {}
        self.meta: dict[Run, dict[str, Any]] = {}
        self.sae_paths: dict[tuple[str, int], Path] = {}
        self._sae: Any = None  # the SAE whose probes are being fitted
        self._rankings: dict[tuple[str, str], Any] = {}  # its latents ranked per (aggregation, selector)
        self._exclusions: frozenset[str] | None = None

    # --- plumbing ------------------------------------------------------------------------
    def stage(self, name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        log.info("stage %s ...", name)
        value = fn()
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t0
        log.info("stage %s done in %.1f s", name, time.perf_counter() - t0)
        return value

    def _context(self, run: Run) -> dict[str, Any]:
        """What a run's scores depend on besides the run itself and the code."""
        ctx = {"data": self.ds.fingerprint, "model": self.lm.fingerprint, "layer": self.cfg.layer,
               "dtype": self.cfg.dtype, "activations": self.acts.key}
        if run.kind == "attention":  # its input's max_tokens is in `features`; kept so part keys stay put
            ctx["attention_max_tokens"] = self.cfg.attention_max_tokens
        if run.sae:
            ctx["sae"] = self.sae_paths[(run.sae, run.seed)].name
        return ctx

    def part_key(self, run: Run) -> str:
        from assay.provenance import code_fingerprint

        code = code_fingerprint(*part_code(run.method))
        return sha256_json([STUDY_VERSION, asdict(run), self._context(run), code])[:12]

    def _part_files(self, run: Run) -> tuple[Path, Path]:
        """(scores .safetensors, metadata .json) of a run's part."""
        stem = f"{re.sub(r'[^A-Za-z0-9+-]+', '_', run.id)}-{self.part_key(run)}"
        return self.out / "parts" / f"{stem}.safetensors", self.out / "parts" / f"{stem}.json"

    def cached(self, run: Run) -> bool:
        if run in self.scores:
            return True
        scores_file, meta_file = self._part_files(run)
        if not (meta_file.exists() and scores_file.exists()):
            return False
        from safetensors.torch import load_file

        scores = load_file(str(scores_file))["scores"].numpy()
        if len(scores) != len(self.y):
            return False
        self.scores[run] = scores
        self.meta[run] = read_json(meta_file)
        return True

    def score(self, run: Run, fit: Callable[[], tuple[np.ndarray, dict[str, Any]]]) -> None:
        """Fit `run` (unless its part is cached) and keep its scores over all examples."""
        if self.cached(run):
            return
        from safetensors.torch import save_file

        from assay.provenance import code_fingerprint, git_commit

        scores, meta = fit()
        scores = np.asarray(scores, dtype=np.float64).ravel()
        meta = _jsonable({**meta, "computed_by": {"git_commit": git_commit(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                                   "code": code_fingerprint(*part_code(run.method))[:16]}})
        scores_file, meta_file = self._part_files(run)
        with atomic_path(scores_file) as tmp:
            save_file({"scores": torch.from_numpy(scores)}, str(tmp))
        write_json(meta_file, meta)  # written last: a part is complete when both exist
        self.scores[run], self.meta[run] = scores, meta

    def fit_probe(self, probe: Any, X: Any, mask: Any = None, **fit_kw: Any) -> tuple[np.ndarray, dict[str, Any]]:
        """Fit on train (validation for the probe's own hyperparameters), score every example."""
        tr, va = self.idx["train"], self.idx["val"]
        kw = {} if mask is None else {"mask": mask[tr], "mask_val": mask[va]}
        probe.fit(X[tr], self.y[tr], X[va], self.y[va], **kw, **fit_kw)
        scores = probe.score(X, mask=mask) if mask is not None else probe.score(X)
        return np.asarray(scores), dict(getattr(probe, "meta", {}))

    # --- the study -----------------------------------------------------------------------
    def run(self) -> Any:
        from assay.probes.inputs import Inputs

        t_start = time.perf_counter()
        self.prepare()
        cfg = self.cfg
        self.acts = self.stage("activations", self.benchmark_activations)
        self.inputs = Inputs(self.acts, self.ds.texts, layer=cfg.layer, aggregations=cfg.aggregations, dtype=cfg.dtype,
                             progress=self.progress)
        self.stage("probes", lambda: self.fit_runs(None))
        self.stage("SAEs", lambda: self.train_saes(self.val_tokens()))
        quality = self.stage("SAE quality", self.sae_quality)
        for m, q in zip(self.sae_provenance, quality):  # both in sae_paths' order
            m["quality_measured"] = (q.get("computed_by") or {}).get("unix")
        self.stage("SAE probes", lambda: [self.fit_runs(sae) for sae in self.sae_paths])
        self.autointerp = (self.stage("auto-interp", self.autointerp_saes)
                           if cfg.autointerp_latents or cfg.autointerp_lm_latents else None)
        self.timings["total before report"] = time.perf_counter() - t_start
        return self.stage("report", lambda: self.report(quality))

    def benchmark_activations(self, indices: Any = None) -> Any:
        """Token and pooled activations at the study's layer of every benchmark prompt (or of the
        examples at `indices`, e.g. the validation split alone)."""
        from assay.activations import extract

        cfg, texts, fp = self.cfg, self.ds.texts, self.ds.fingerprint
        if indices is not None:
            texts, fp = [texts[i] for i in indices], sha256_json([fp, [int(i) for i in indices]])
        return extract(self.lm, texts, [cfg.layer], dataset_fingerprint=fp, aggregations=sorted(set(cfg.aggregations)),
                       store_tokens=True, token_budget=cfg.token_budget, progress=self.progress)

    def prepare(self) -> None:
        """Data, splits, model and layer sweep; the study's layer fixed (the sweep's choice when not given)."""
        from assay.data import load_or_build
        from assay.models import load
        from assay.models.loading import converted_meanwhile

        cfg = self.cfg
        with converted_meanwhile(cfg.model) as model_converted:  # a cold cache: the model converts meanwhile
            self.ds = self.stage("data", lambda: with_calibration_split(
                subsample(load_or_build(cfg.data or cfg.preset, cfg.seed), cfg.subsample, cfg.seed),
                cfg.calibrate_on, cfg.seed))
            missing = [s for s in ("train", "val", cfg.calibrate_on, "ood") if s not in self.ds.splits]
            if missing:
                raise InputError(f"the study needs splits train, val, {cfg.calibrate_on} and ood; the dataset has "
                                 f"{self.ds.splits} and lacks {missing}: add a `split` column with those values")

            def model() -> Any:
                model_converted()
                return load(cfg.model, dtype=cfg.dtype, lazy=True)

            self.lm = self.stage("model", model)
        ex = self.ds.examples
        self.y = np.array([e.label for e in ex])
        self.units = self.ds.clusters
        split = np.array([e.split for e in ex])
        self.splits = ["train", "val", cfg.calibrate_on, "ood"]
        self.idx = {s: np.flatnonzero(split == s) for s in self.splits}
        self.layer_sweep = self.stage("layer sweep", self.sweep_layers) if cfg.layer_sweep else None
        if cfg.layer is None:
            chosen = self.layer_sweep["chosen"] if self.layer_sweep else self.lm.n_layers // 2
            self.cfg = cfg.model_copy(update={"layer": chosen})

    def sweep_layers(self) -> dict[str, Any]:
        from assay.experiment.layers import layer_sweep, load_sweep

        if self.cfg.layer_sweep_from:
            return load_sweep(self.cfg.layer_sweep_from, self)
        return layer_sweep(self)

    def methods(self, on_sae: bool) -> list[Any]:
        from assay.probes.methods import METHODS

        return [METHODS[n] for n in self.cfg.methods if METHODS[n].reads_sae == on_sae]

    def runs(self, m: Any, sae: tuple[str, int] | None = None) -> list[Run]:
        """Every configuration of method `m` the study fits: per aggregation for pooled and SAE
        inputs, per seed for stochastic fits and for every probe on a seeded SAE, per k and
        selector for k-sparse."""
        cfg = self.cfg
        if sae is not None:
            name, seed = sae
            if info(m.name).sweeps_k:
                return [Run(m.name, a, name, k, sel, seed) for a in cfg.aggregations for sel in cfg.selectors
                        for k in cfg.ks]
            return [Run(m.name, a, name, info(m.name).k, None, seed) for a in cfg.aggregations]
        aggs = cfg.aggregations if m.reads == "pooled" else [None]
        return [Run(m.name, self.spec(m.name, a).label, seed=s) for a in aggs
                for s in (cfg.seeds if m.seeded else [None])]

    def spec(self, method: str, aggregation: str | None, sae: str | None = None) -> Any:
        from assay.probes.inputs import InputSpec

        return InputSpec.for_method(method, aggregation=aggregation, layer=self.cfg.layer, model=self.cfg.model,
                                    sae=sae, max_tokens=self.cfg.attention_max_tokens)

    def fit_runs(self, sae: tuple[str, int] | None) -> None:
        """Fit every missing run of every method on the model's activations and the texts
        (`sae` None), or on one SAE's outputs, each input computed once for all of them."""
        runs = [r for m in self.methods(on_sae=sae is not None) for r in self.runs(m, sae)]
        todo = [r for r in runs if not self.cached(r)]
        if not todo:
            return
        self._sae = None
        if sae is not None:
            from assay.sae.io import load_sae

            log.info("SAE probes on %s (seed %d)", *sae)
            self._sae = load_sae(self.sae_paths[sae], device=str(self.lm.device))
            self._rankings = self.rank_latents(todo)
        for run in todo:
            self.score(run, lambda: self.fit(run))
        self.inputs.release()

    def read(self, run: Run) -> tuple[Any, Any]:
        a = None if run.features.startswith(("tokens:", "text")) else run.features
        path = str(self.sae_paths[(run.sae, run.seed)]) if run.sae else None
        return self.inputs.read(self.spec(run.method, a, path), self._sae)

    def fit(self, run: Run) -> tuple[np.ndarray, dict[str, Any]]:
        from assay.probes.methods import make_probe

        cfg = self.cfg
        X, mask = self.read(run)
        seed = cfg.seed if run.seed is None else run.seed
        if not info(run.method).sweeps_k:
            return self.fit_probe(make_probe(run.method, seed=seed), X, mask)
        ranking, path = self._rankings[(run.features, run.selector)]
        scores, meta = self.fit_probe(make_probe(run.method, seed=seed, k=run.k, select=run.selector), X,
                                      order=ranking)
        meta["l1_path"] = path
        if run.k == cfg.headline_k and run.seed == cfg.seed:
            meta["stability"] = self.selection_stability(X, run.selector, ranking[: run.k])
        return scores, meta

    def rank_latents(self, runs: list[Run]) -> dict[tuple[str, str], Any]:
        """Latent rankings on the training set the k-sparse `runs` need, once per aggregation and
        selector; the L1 paths in parallel processes (their coordinate descent runs on one core)."""
        from assay.probes.sparse import selection_order

        tr, ks = self.idx["train"], self.cfg.ks
        wanted = sorted({(r.features, r.selector): r for r in runs if info(r.method).sweeps_k}.items())
        Z = {key: self.read(r)[0][tr] for key, r in wanted}
        ranked = parallel_map(selection_order, {key: (Z[key].numpy(), self.y[tr], key[1], ks) for key, _ in wanted
                                                if key[1] == "l1"})
        return ranked | {key: selection_order(Z[key], self.y[tr], key[1], ks) for key, _ in wanted if key[1] != "l1"}

    def sae_exclusions(self) -> frozenset[str]:
        """Every benchmark prompt, normalised: no SAE corpus may contain one. Computed once a run (the
        SAE stage, SAE quality and auto-interp each ask; it reads the ShareGPT file, ~1.3 s)."""
        from assay.data.benchmark import sharegpt_requests
        from assay.data.normalize import normalize_text

        if self._exclusions is None:
            self._exclusions = sharegpt_requests(self.ds) | frozenset(normalize_text(t) for t in self.ds.texts)
        return self._exclusions

    def train_saes(self, val_tokens: list[torch.Tensor] | None = None) -> None:
        """Train (or reuse) the study's SAEs; with `val_tokens`, each records its held-out curve."""
        from assay.experiment.saes import sae_provenance, train_study_saes

        started = time.time()
        self.sae_paths = train_study_saes(self.lm, self.cfg, self.sae_exclusions(), progress=self.progress,
                                          val_tokens=val_tokens)
        self.sae_provenance = sae_provenance(self.sae_paths, started)

    def val_tokens(self) -> list[torch.Tensor]:
        """The validation split's token activations at the study's layer (SAE quality and curves)."""
        return list(self.acts.iter_tokens(self.cfg.layer, 8192, mask="all", indices=self.idx["val"].tolist()))

    def autointerp_saes(self) -> dict[str, Any]:
        from assay.experiment.study_autointerp import study_autointerp

        return study_autointerp(self)

    def sae_quality(self, val_tokens: list[torch.Tensor] | None = None) -> list[dict[str, Any]]:
        """Every SAE's quality on the validation split's tokens (`val_tokens`, by default read from
        the study's activations)."""
        from assay.experiment.sae_quality import sae_quality

        if val_tokens is None:
            val_tokens = self.val_tokens()
        return sae_quality(self.lm, self.cfg, self.sae_paths, val_tokens, self.val_key(), self.sae_exclusions(),
                           self.progress)

    def val_key(self) -> str:
        """Which examples the SAE-quality tokens are: the benchmark's validation split."""
        return sha256_json([self.ds.fingerprint, self.idx["val"].tolist()])[:16]

    def selection_stability(self, Z: torch.Tensor, select: str, chosen: np.ndarray) -> dict[str, Any]:
        """How often the latents chosen on the training set are chosen again on bootstrap resamples
        of its clusters: mean Jaccard overlap of the k-sets, and each chosen latent's pick rate."""
        from assay.metrics.bootstrap import cluster_weights
        from assay.probes.sparse import selection_order

        tr = self.idx["train"]
        k = len(chosen)
        W = cluster_weights(self.units[tr].tolist(), self.cfg.stability_resamples, self.cfg.seed + 7)
        Zt, yt = Z[tr].numpy(), self.y[tr]
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

    def report(self, quality: list[dict[str, Any]]) -> Any:
        from assay.experiment.evaluation import build_report

        return build_report(self, quality)


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


def with_calibration_split(ds: Any, calib: str, seed: int) -> Any:
    """`ds` unchanged when it has a `calib` split; otherwise half of the validation clusters
    (chosen by seed, whole clusters at a time) become the calibration split."""
    if calib in ds.splits or "val" not in ds.splits:
        return ds
    from dataclasses import replace

    from assay.data import Dataset

    units = sorted({u for u, e in zip(ds.clusters, ds.examples) if e.split == "val"})
    rng = np.random.default_rng(seed)
    moved = set(rng.permutation(units)[: len(units) // 2].tolist())
    rows = [replace(e, split=calib) if e.split == "val" and u in moved else e for u, e in zip(ds.clusters, ds.examples)]
    log.info("no %r split: %d of %d validation clusters moved into one", calib, len(moved), len(units))
    return Dataset(rows, ds.path, {**ds.meta, "calibration_split": f"carved from val (seed {seed})"})


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    return obj


def subsample(ds: Any, n: int | None, seed: int) -> Any:
    """At most `n` examples per split and class, chosen by seed, in their original order."""
    if not n:
        return ds
    from assay.data import Dataset

    rng = np.random.default_rng(seed)
    keep: list[int] = []
    groups: dict[tuple[str, int], list[int]] = {}
    for i, e in enumerate(ds.examples):
        groups.setdefault((e.split, e.label), []).append(i)
    for members in groups.values():
        keep += rng.permutation(members)[:n].tolist()
    return Dataset([ds.examples[i] for i in sorted(keep)], ds.path, ds.meta)


def run_study(cfg: StudyConfig, out_dir: str | Path, progress: bool = True) -> Any:
    from assay.fileio import kept_only_if_used

    with kept_only_if_used(out_dir):  # a bad model or dataset leaves no empty run folder behind
        return Study(cfg, out_dir, progress).run()
