"""GDM's harmful-intent study as code: data -> activations -> SAEs -> probes -> one report.

Every stage reuses its cache (benchmark build, activation cache, SAE directories, and each
method's results under `<out>/parts/`), so a rerun after an interruption continues where it
stopped, and a warm rerun only re-renders the report.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from assay.experiment.config import StudyConfig
from assay.fileio import read_json, sha256_json, write_json

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "ood")
# Part of every cached method result's key: bump it when a change alters what a method reports.
STUDY_VERSION = 2


class Study:
    """Holds what every stage shares: config, output folder, data, labels, timings."""

    def __init__(self, cfg: StudyConfig, out_dir: str | Path, progress: bool = True):
        self.cfg, self.out, self.progress = cfg, Path(out_dir), progress
        self.out.mkdir(parents=True, exist_ok=True)
        self.timings: dict[str, float] = {}
        self.results: list[Any] = []

    # --- plumbing ------------------------------------------------------------------------
    def stage(self, name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        log.info("stage %s ...", name)
        value = fn()
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t0
        log.info("stage %s done in %.1f s", name, time.perf_counter() - t0)
        return value

    def method(self, method_id: str, run: Callable[[], list[Any]]) -> None:
        """Run one method's fit+evaluation, or reuse its saved results (same config and data)."""
        from assay.eval.schema import MethodResult

        key = sha256_json([STUDY_VERSION, method_id, self.cfg.model_dump(), self.ds.fingerprint])[:12]
        path = self.out / "parts" / f"{method_id.replace('/', '_')}-{key}.json"
        if path.exists():
            self.results += [MethodResult.model_validate(r) for r in read_json(path)]
            return
        rows = run()
        write_json(path, [r.model_dump() for r in rows])
        self.results += rows

    def evaluate(self, method: str, scores: np.ndarray, *, features: str, kind: str, **fields: Any) -> list[Any]:
        """Metrics of one method's scores (over all examples) on every split."""
        from assay.eval.evaluate import SplitScores, evaluate_method

        splits = {
            s: SplitScores(scores=scores[idx], y=self.y[idx],
                           groups={"family": self.family[idx].tolist(), "transformation": self.transformation[idx].tolist()})
            for s, idx in self.idx.items()
        }
        return evaluate_method(
            method, splits, features=features, kind=kind, target_fpr=self.cfg.target_fpr, n_boot=self.cfg.n_boot,
            seed=self.cfg.seed, model=self.cfg.model, layer=self.cfg.layer, dataset_fingerprint=self.ds.fingerprint,
            **fields,
        )

    def fit_eval(self, method: str, probe: Any, X: torch.Tensor | np.ndarray, *, features: str, kind: str,
                 mask: torch.Tensor | None = None, **fields: Any) -> list[Any]:
        """Fit on train (validation for model selection), score every example, evaluate."""
        tr, va = self.idx["train"], self.idx["val"]
        kw = {} if mask is None else {"mask": mask[tr], "mask_val": mask[va]}
        probe.fit(X[tr], self.y[tr], X[va], self.y[va], **kw)
        scores = probe.score(X, mask=mask) if mask is not None else probe.score(X)
        config = {**fields.pop("config", {}), **getattr(probe, "meta", {})}
        return self.evaluate(method, np.asarray(scores), features=features, kind=kind, config=_jsonable(config), **fields)

    # --- the study -----------------------------------------------------------------------
    def run(self) -> Any:
        from assay.activations import extract
        from assay.data import load_or_build
        from assay.models import load

        cfg = self.cfg
        t_start = time.perf_counter()
        self.ds = self.stage("data", lambda: subsample(load_or_build(cfg.data or cfg.preset, cfg.seed),
                                                       cfg.subsample, cfg.seed))
        missing = [s for s in SPLITS if s not in self.ds.splits]
        if missing:
            raise ValueError(f"the study needs splits {SPLITS}; the dataset lacks {missing}")
        ex = self.ds.examples
        self.y = np.array([e.label for e in ex])
        self.family = np.array([e.family for e in ex], dtype=object)
        self.transformation = np.array([e.transformation for e in ex], dtype=object)
        split = np.array([e.split for e in ex])
        self.idx = {s: np.flatnonzero(split == s) for s in SPLITS}
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
        saes = self.stage("SAEs", self.train_saes)
        quality = self.stage("SAE quality", lambda: self.sae_quality(saes))
        self.stage("SAE probes", lambda: self.sae_probes(saes))
        self.timings["total"] = time.perf_counter() - t_start
        return self.stage("report", lambda: self.report(quality))

    def dense_probes(self) -> None:
        from assay.probes import DiffMeanProbe, LogisticProbe

        for feat in self.cfg.dense_features:
            X = self.acts.pooled(self.cfg.layer, feat)
            self.method(f"logistic/{feat}", lambda: self.fit_eval(
                "logistic", LogisticProbe(seed=self.cfg.seed), X, features=feat, kind="dense"))
            self.method(f"diffmean/{feat}", lambda: self.fit_eval("diff_of_means", DiffMeanProbe(), X, features=feat, kind="dense"))

    def _tokens(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token activations `[n, T, d]` + mask of the examples, each cut to its last N tokens.

        Allocated once at its final size: at the full preset this is the largest tensor of the run.
        """
        n_max = self.cfg.attention_max_tokens
        counts = self.acts.token_counts("all")[indices].clamp(max=n_max)
        X = torch.zeros(len(indices), int(counts.max()), self.lm.d_model)
        M = torch.arange(X.shape[1])[None, :] < counts[:, None]
        for start in range(0, len(indices), 256):
            x, m = self.acts.token_batch(self.cfg.layer, indices[start:start + 256].tolist(), mask="all")
            for j in range(len(x)):
                keep = x[j][m[j]][-n_max:]
                X[start + j, : len(keep)] = keep
        return X, M

    def attention_probes(self) -> None:
        from assay.probes import AttentionProbe, RollingAttentionProbe

        feat = f"tokens:all[-{self.cfg.attention_max_tokens}:]"
        tokens: list[torch.Tensor] = []  # built on first need: a warm rerun never reads them

        def fit(method: str, probe: Any) -> list[Any]:
            if not tokens:
                tokens.extend(self._tokens(np.arange(len(self.y))))
            return self.fit_eval(method, probe, tokens[0], mask=tokens[1], features=feat, kind="attention")

        self.method("attention", lambda: fit("attention", AttentionProbe(seed=self.cfg.seed)))
        self.method("rolling_attention", lambda: fit("max_rolling_attention", RollingAttentionProbe(seed=self.cfg.seed)))

    def text_baselines(self) -> None:
        from assay.baselines.embedding import EmbeddingBaseline, embed
        from assay.baselines.tfidf import TfidfBaseline

        texts = np.array(self.ds.texts, dtype=object)
        tr, va = self.idx["train"], self.idx["val"]

        def tfidf() -> list[Any]:
            model = TfidfBaseline().fit(texts[tr].tolist(), self.y[tr], texts[va].tolist(), self.y[va])
            return self.evaluate("tfidf_logreg", np.asarray(model.score(texts.tolist())), features="text",
                                 kind="baseline", config=_jsonable(model.meta))

        def minilm() -> list[Any]:
            E = embed(texts.tolist())  # once: fitting and scoring reuse the same embeddings
            model = EmbeddingBaseline().fit(None, self.y[tr], None, self.y[va], E=E[tr], E_val=E[va])
            return self.evaluate("minilm_logreg", np.asarray(model.score(E=E)), features="text", kind="baseline",
                                 config=_jsonable(model.meta))

        self.method("tfidf_logreg", tfidf)
        self.method("minilm_logreg", minilm)

    def train_saes(self) -> dict[str, tuple[Any, Path]]:
        from assay.experiment.saes import study_saes

        return study_saes(self.lm, self.cfg, progress=self.progress)

    def sae_quality(self, saes: dict[str, tuple[Any, Path]]) -> list[dict[str, Any]]:
        from assay.experiment.saes import sae_quality

        val_tokens = list(self.acts.iter_tokens(self.cfg.layer, 8192, mask="all", indices=self.idx["val"].tolist()))
        return [sae_quality(self.lm, sae, path, name, self.cfg, val_tokens) for name, (sae, path) in saes.items()]

    def sae_probes(self, saes: dict[str, tuple[Any, Path]]) -> None:
        from assay.probes import KSparseProbe, LogisticProbe, OneSparseProbe

        for name, (sae, _) in saes.items():
            pooled: dict[str, Any] = {}

            def latents(agg: str, what: int) -> torch.Tensor:
                if not pooled:
                    pooled["z"], pooled["r"] = pooled_sae_latents(
                        self.acts, sae, self.cfg.layer, self.cfg.sae_features, range(len(self.y)))
                return (pooled["z"], pooled["r"])[what][agg]

            for agg in self.cfg.sae_features:
                self.method(f"sae/{name}/{agg}/1sparse", lambda: self.fit_eval(
                    "1-sparse", OneSparseProbe(), latents(agg, 0), features=agg, kind="sae_sparse", sae=name, k=1))
                for select in self.cfg.selectors:
                    for k in self.cfg.ks:
                        def run(k=k, select=select):
                            probe = KSparseProbe(k=k, select=select, seed=self.cfg.seed)
                            rows = self.fit_eval(f"k-sparse[{select}]", probe, latents(agg, 0), features=agg,
                                                 kind="sae_sparse", sae=name, k=k)
                            for r in rows:
                                r.latents = [int(i) for i in probe.meta.get("latents", [])] or None
                            return rows
                        self.method(f"sae/{name}/{agg}/{select}/k{k}", run)
                self.method(f"sae/{name}/{agg}/recon", lambda: self.fit_eval(
                    "reconstruction_probe", LogisticProbe(seed=self.cfg.seed), latents(agg, 1), features=agg,
                    kind="sae_reconstruction", sae=name))

    def report(self, quality: list[dict[str, Any]]) -> Any:
        from assay.eval.published import gdm_published
        from assay.eval.render import write_report
        from assay.eval.schema import Provenance, Report, SAEQuality
        from assay.experiment.findings import findings
        from assay.provenance import provenance

        prov = provenance(model=self.cfg.model, layer=self.cfg.layer, dataset_fingerprint=self.ds.fingerprint,
                          seed=self.cfg.seed, model_fingerprint=self.lm.fingerprint, dtype=self.cfg.dtype,
                          timings_seconds={k: round(v, 1) for k, v in self.timings.items()},
                          activation_cache=self.acts.key)
        sae_rows = [SAEQuality(
            sae=q["sae"], architecture=q["architecture"], training_data=q["corpus"], d_sae=q["d_sae"], l0=q["l0"],
            fvu=q["fvu"], ce_loss_recovered=q.get("ce_recovered"),
            delta_lm_loss=q["ce_sae"] - q["ce_clean"] if "ce_sae" in q else None, dead_fraction=q["dead"] / q["d_sae"],
            dense_fraction=q["dense"] / q["d_sae"], eval_split="benchmark val tokens (L0, FVU); held-out corpus text (CE)",
        ) for q in quality]
        report = Report(
            title=f"Harmful-intent probing: dense probes vs SAE probes ({self.cfg.model}, layer {self.cfg.layer}, "
                  f"{self.cfg.preset} preset)",
            provenance=Provenance(**prov), config=self.cfg.model_dump(), results=self.results,
            sae_quality=sae_rows, published=gdm_published(),
        )
        report.notes = findings(report)
        write_report(report, self.out)
        return report


@torch.no_grad()
def pooled_sae_latents(
    acts: Any, sae: Any, layer: int, aggregations: list[str], indices: Any, batch: int = 64,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """SAE latents and reconstructions of every token of the examples `indices`, each pooled by
    every aggregation: the SAE sees single tokens, as in training, and pooling comes after."""
    from assay.probes.sae_encode import encode_pooled

    indices = list(indices)
    Z: dict[str, list[torch.Tensor]] = {a: [] for a in aggregations}
    R: dict[str, list[torch.Tensor]] = {a: [] for a in aggregations}
    for start in range(0, len(indices), batch):
        x, m = acts.token_batch(layer, indices[start:start + batch], mask="all")
        z, r = encode_pooled(sae, x, m, aggregations, reconstruction=True)
        for a in aggregations:
            Z[a].append(z[a])
            R[a].append(r[a])
    return {a: torch.cat(v) for a, v in Z.items()}, {a: torch.cat(v) for a, v in R.items()}


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
