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

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "calib", "ood")
# Part of every cached part's key, beside the code fingerprint: bump for changes the code
# fingerprint cannot see (none expected).
STUDY_VERSION = 3

# The code whose numbers each kind of part records; its source is hashed into the part's key.
_COMMON = ("assay.experiment.study", "assay.experiment.config", "assay.probes.base", "assay.probes.aggregation",
           "assay.activations.features")
CODE = {
    "dense": _COMMON + ("assay.probes.linear", "assay.probes.logistic"),
    "attention": _COMMON + ("assay.probes.attention", "assay.probes.linear", "assay.probes.logistic"),
    "baseline": _COMMON + ("assay.baselines", "assay.probes.linear", "assay.probes.logistic"),
    "sae": _COMMON + ("assay.probes.sparse", "assay.probes.sae_encode", "assay.probes.linear", "assay.probes.logistic",
                      "assay.sae.architectures"),
}
KIND_CODE = {"dense": "dense", "attention": "attention", "baseline": "baseline", "sae_sparse": "sae",
             "sae_reconstruction": "sae", "sae_error": "sae"}


@dataclass(frozen=True)
class Run:
    """One fitted configuration: its scores on every example are one cached part."""

    method: str
    kind: str
    features: str
    sae: str | None = None
    k: int | None = None
    selector: str | None = None
    seed: int | None = None

    @property
    def id(self) -> str:
        parts = [self.method, self.features, self.sae, f"k{self.k}" if self.k else None, self.selector,
                 f"s{self.seed}" if self.seed is not None else None]
        return "/".join(p for p in parts if p)

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
        if run.kind == "attention":
            ctx["attention_max_tokens"] = self.cfg.attention_max_tokens
        if run.sae:
            ctx["sae"] = self.sae_paths[(run.sae, run.seed)].name
        return ctx

    def part_key(self, run: Run) -> str:
        from assay.provenance import code_fingerprint

        code = code_fingerprint(*CODE[KIND_CODE[run.kind]])
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
                                                   "code": code_fingerprint(*CODE[KIND_CODE[run.kind]])[:16]}})
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
        from assay.activations import extract
        from assay.data import load_or_build
        from assay.models import load

        cfg = self.cfg
        t_start = time.perf_counter()
        self.ds = self.stage("data", lambda: with_calibration_split(
            subsample(load_or_build(cfg.data or cfg.preset, cfg.seed), cfg.subsample, cfg.seed), cfg.calibrate_on,
            cfg.seed))
        missing = [s for s in ("train", "val", cfg.calibrate_on, "ood") if s not in self.ds.splits]
        if missing:
            raise InputError(f"the study needs splits train, val, {cfg.calibrate_on} and ood; the dataset has "
                             f"{self.ds.splits} and lacks {missing}: add a `split` column with those values")
        ex = self.ds.examples
        self.y = np.array([e.label for e in ex])
        self.units = self.ds.clusters
        split = np.array([e.split for e in ex])
        self.splits = ["train", "val", cfg.calibrate_on, "ood"]
        self.idx = {s: np.flatnonzero(split == s) for s in self.splits}
        self.lm = self.stage("model", lambda: load(cfg.model, dtype=cfg.dtype))
        features = sorted(set(cfg.dense_features))
        self.acts = self.stage("activations", lambda: extract(
            self.lm, self.ds.texts, [cfg.layer], dataset_fingerprint=self.ds.fingerprint, features=features,
            store_tokens=True, token_budget=cfg.token_budget, progress=self.progress))
        self.stage("dense probes", self.dense_probes)
        if cfg.attention_probes:
            self.stage("attention probes", self.attention_probes)
        if cfg.baselines:
            self.stage("baselines", self.text_baselines)
        self.stage("SAEs", self.train_saes)
        quality = self.stage("SAE quality", self.sae_quality)
        self.stage("SAE probes", self.sae_probes)
        self.timings["total before report"] = time.perf_counter() - t_start
        return self.stage("report", lambda: self.report(quality))

    def dense_probes(self) -> None:
        from assay.probes import DiffMeanProbe, LogisticProbe

        for feat in self.cfg.dense_features:
            X = self.acts.pooled(self.cfg.layer, feat)
            self.score(Run("dense-logistic", "dense", feat), lambda: self.fit_probe(LogisticProbe(seed=self.cfg.seed), X))
            for norm in self.cfg.diffmean_normalize:
                self.score(Run(DIFFMEAN_NAMES[norm], "dense", feat),
                           lambda: self.fit_probe(DiffMeanProbe(normalize=norm), X))

    def _tokens(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token activations `[n, T, d]` + mask of every example, each cut to its last N tokens.

        Allocated once at its final size, in the extraction dtype (bf16 activations lose nothing
        and take half the memory): at the full preset this is the largest tensor of the run.
        """
        n_max = self.cfg.attention_max_tokens
        counts = self.acts.token_counts("all").clamp(max=n_max)
        X = torch.zeros(len(self.y), int(counts.max()), self.lm.d_model, dtype=self.lm.dtype)
        M = torch.arange(X.shape[1])[None, :] < counts[:, None]
        for start in range(0, len(self.y), 256):
            x, m = self.acts.token_batch(self.cfg.layer, list(range(start, min(start + 256, len(self.y)))), mask="all")
            for j in range(len(x)):
                keep = x[j][m[j]][-n_max:]
                X[start + j, : len(keep)] = keep
        return X, M

    def attention_probes(self) -> None:
        from assay.probes import AttentionProbe, RollingAttentionProbe

        feat = f"tokens:all[-{self.cfg.attention_max_tokens}:]"
        tokens: list[torch.Tensor] = []  # built on first need: a warm rerun never reads them

        def fit(probe: Any) -> tuple[np.ndarray, dict[str, Any]]:
            if not tokens:
                tokens.extend(self._tokens())
            return self.fit_probe(probe, tokens[0], mask=tokens[1])

        for seed in self.cfg.seeds:
            self.score(Run("attention", "attention", feat, seed=seed), lambda: fit(AttentionProbe(seed=seed)))
            self.score(Run("max-rolling-attention", "attention", feat, seed=seed),
                       lambda: fit(RollingAttentionProbe(seed=seed)))
        tokens.clear()

    def text_baselines(self) -> None:
        from assay.baselines.embedding import EmbeddingBaseline, embed
        from assay.baselines.tfidf import TfidfBaseline
        from assay.runtime import dtype_name, resolve_dtype

        texts = np.array(self.ds.texts, dtype=object)
        tr, va = self.idx["train"], self.idx["val"]

        def tfidf() -> tuple[np.ndarray, dict[str, Any]]:
            model = TfidfBaseline().fit(texts[tr].tolist(), self.y[tr], texts[va].tolist(), self.y[va])
            return np.asarray(model.score(texts.tolist())), model.meta

        def minilm() -> tuple[np.ndarray, dict[str, Any]]:
            # once: fitting and scoring reuse them; the encoder runs in the study's dtype
            E = embed(texts.tolist(), progress=self.progress, dtype=dtype_name(resolve_dtype(self.cfg.dtype)))
            model = EmbeddingBaseline().fit(None, self.y[tr], None, self.y[va], E=E[tr], E_val=E[va])
            return np.asarray(model.score(E=E)), {**model.meta, "encoder_dtype": dtype_name(resolve_dtype(self.cfg.dtype))}

        self.score(Run("tfidf", "baseline", "text"), tfidf)
        self.score(Run("minilm", "baseline", "text"), minilm)

    def sae_exclusions(self) -> frozenset[str]:
        """Every benchmark prompt, normalised: no SAE corpus may contain one."""
        from assay.data.benchmark import sharegpt_requests
        from assay.data.normalize import normalize_text

        return sharegpt_requests(self.ds) | frozenset(normalize_text(t) for t in self.ds.texts)

    def train_saes(self) -> None:
        from assay.experiment.saes import train_study_saes

        self.sae_paths = train_study_saes(self.lm, self.cfg, self.sae_exclusions(), progress=self.progress)

    def sae_quality(self) -> list[dict[str, Any]]:
        from assay.experiment.sae_quality import sae_quality

        val_tokens = list(self.acts.iter_tokens(self.cfg.layer, 8192, mask="all", indices=self.idx["val"].tolist()))
        return sae_quality(self.lm, self.cfg, self.sae_paths, val_tokens, self.sae_exclusions(), self.progress)

    def sae_runs(self, name: str, seed: int) -> list[Run]:
        cfg, runs = self.cfg, []
        for agg in cfg.dense_features:
            runs.append(Run("1-sparse", "sae_sparse", agg, name, 1, None, seed))
            runs += [Run("k-sparse", "sae_sparse", agg, name, k, sel, seed) for sel in cfg.selectors for k in cfg.ks]
            runs += [Run("reconstruction", "sae_reconstruction", agg, name, seed=seed),
                     Run("error", "sae_error", agg, name, seed=seed)]
        return runs

    def sae_probes(self) -> None:
        from assay.probes import KSparseProbe, LogisticProbe, OneSparseProbe
        from assay.probes.sae_encode import pooled_sae_outputs
        from assay.probes.sparse import selection_order
        from assay.runtime import resolve_dtype
        from assay.sae.io import load_sae

        cfg, tr = self.cfg, self.idx["train"]
        search = torch.bfloat16 if resolve_dtype(cfg.dtype) == torch.bfloat16 else None
        for (name, seed), path in self.sae_paths.items():
            runs = self.sae_runs(name, seed)
            if all(self.cached(r) for r in runs):
                continue
            log.info("SAE probes on %s (seed %d)", name, seed)
            sae = load_sae(path, device=str(self.lm.device))
            outputs = pooled_sae_outputs(self.acts, sae, cfg.layer, cfg.dense_features, search_dtype=search,
                                         progress=self.progress)
            # Latent rankings the missing k-sparse runs need, the L1 paths in parallel processes
            # (their coordinate descent runs on one core).
            wanted = sorted({(r.features, r.selector) for r in runs if r.method == "k-sparse" and not self.cached(r)})
            ranked = parallel_map(selection_order, {(a, s): (outputs["latents"][a][tr].numpy(), self.y[tr], s, cfg.ks)
                                                    for a, s in wanted if s == "l1"})
            ranked |= {(a, s): selection_order(outputs["latents"][a][tr], self.y[tr], s, cfg.ks) for a, s in wanted if s != "l1"}
            for agg in cfg.dense_features:
                Z = outputs["latents"][agg]

                def order(sel: str, agg: str = agg) -> tuple[np.ndarray, Any]:
                    return ranked[(agg, sel)]

                self.score(Run("1-sparse", "sae_sparse", agg, name, 1, None, seed), lambda: self.fit_probe(OneSparseProbe(), Z))
                for sel in cfg.selectors:
                    for k in cfg.ks:
                        def fit(k: int = k, sel: str = sel) -> tuple[np.ndarray, dict[str, Any]]:
                            ranking, path_ = order(sel)
                            scores, meta = self.fit_probe(KSparseProbe(k=k, select=sel, seed=seed), Z, order=ranking)
                            meta["l1_path"] = path_
                            if k == cfg.headline_k and seed == cfg.seed:
                                meta["stability"] = self.selection_stability(Z, sel, ranking[:k])
                            return scores, meta
                        self.score(Run("k-sparse", "sae_sparse", agg, name, k, sel, seed), fit)
                for what in ("reconstruction", "error"):
                    X = outputs[what][agg]
                    self.score(Run(what, f"sae_{what}", agg, name, seed=seed),
                               lambda: self.fit_probe(LogisticProbe(seed=seed), X))
            del outputs

    def selection_stability(self, Z: torch.Tensor, select: str, chosen: np.ndarray) -> dict[str, Any]:
        """How often the latents chosen on the training set are chosen again on bootstrap resamples
        of its clusters: mean Jaccard overlap of the k-sets, and each chosen latent's pick rate."""
        from assay.eval.bootstrap import cluster_weights
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


DIFFMEAN_NAMES = {"none": "diff-of-means", "standardize": "diff-of-means-std", "whiten": "lda"}


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
    return Study(cfg, out_dir, progress).run()
