"""Choosing a monitor's probe by leave-one-collection-out, and the card's nested estimate of it.

A candidate is a probe method read at one layer and aggregation. Each candidate is fitted once per
held-out collection (`folds.fold`) and scored on that collection: its LOCO record. The monitor
ships the candidate with the best mean LOCO AUROC.

That record cannot also be the card's estimate for the shipped monitor: the choice looked at every
collection, so the chosen candidate's numbers are the best of several draws. The card's number for
collection c is nested instead: the candidate is chosen with c held out (by grouped folds over the
other collections, inside c's training rows), then that candidate's fit without c is scored on c.
No held-out collection chooses anything about the model it scores.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from assay.metrics import auroc, fpr_at_threshold, recall_at_fpr, threshold_at_fpr
from assay.monitor.folds import Fold, fold_out, group_folds

log = logging.getLogger(__name__)

OPERATING_FPRS = (0.001, 0.01, 0.05)  # the thresholds every monitor carries
CARD_FPR = 0.01  # the operating point fold records quote


@dataclass(frozen=True)
class Candidate:
    method: str
    layer: int
    aggregation: str | None  # None for methods that read tokens or text
    mix: str = "all"  # which training rows (`build.MIXES`)

    @property
    def name(self) -> str:
        return f"{self.method}@L{self.layer}" + (f"[{self.aggregation}]" if self.aggregation else "") + f"/{self.mix}"

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "layer": self.layer, "aggregation": self.aggregation, "mix": self.mix,
                "name": self.name}


# (features of one candidate, train rows, train labels) -> fitted probe; (probe, features, rows) -> scores
Fitter = Callable[[Candidate, np.ndarray], Any]
Scorer = Callable[[Any, Candidate, np.ndarray], np.ndarray]


def fold_record(scores: np.ndarray, y: np.ndarray, calib_scores: np.ndarray, fpr: float = CARD_FPR) -> dict[str, Any]:
    """AUROC on the fold's test rows, and recall and FPR there at the threshold set for `fpr` on
    the fold's own benign calibration rows (never the test rows)."""
    t = threshold_at_fpr(calib_scores, fpr)
    return {"auroc": auroc(scores, y), "recall": recall_at_fpr(scores, y, t), "fpr": fpr_at_threshold(scores, y, t),
            "threshold": t, "n_pos": int(y.sum()), "n_neg": int((1 - y).sum())}


def loco(candidates: Sequence[Candidate], folds: Sequence[Fold], y: np.ndarray, fit: Fitter, score: Scorer,
         *, inner_k: int = 4, ds: Any = None, advance: Callable[[], None] = lambda: None,
         done: dict[str, dict[str, Any]] | None = None,
         on_fold: Callable[[str, dict[str, Any]], None] | None = None, workers: int = 1,
         init_worker: Callable[[], None] | None = None) -> dict[str, Any]:
    """Every candidate's LOCO record, the nested choice for each held-out collection, and the
    candidate chosen on all of them.

    Resumable: `on_fold(collection, record)` is called as each held-out collection finishes, and the
    records passed back as `done` (by collection) are taken as they are instead of refitted.
    `workers` > 1 works on that many held-out collections at once, in threads that each run
    `init_worker` first (`fit` and `score` must then be safe to call from several threads); each
    collection's record is the same either way, and the result is assembled in `folds` order."""
    collections = [f.collection for f in folds]
    records = {c: r for c, r in (done or {}).items() if c in collections}
    for c in records:
        for _ in range(n_fits(len(candidates), 1, inner_k)):
            advance()
    todo = [f for f in folds if f.collection not in records]
    stop = threading.Event()  # set when one held-out collection fails: the others stop at their next fit

    def step() -> None:
        if stop.is_set():
            raise _Stopped
        advance()

    def held_out(f: Fold) -> dict[str, Any]:
        try:
            return held_out_fits(f)
        except BaseException:  # set here, not only when the main thread sees it: under load that thread
            stop.set()  # can wake many fits later, and the other workers would fit on for nothing
            raise

    def held_out_fits(f: Fold) -> dict[str, Any]:
        per: dict[str, dict[str, Any]] = {}
        kept: dict[str, list[float]] = {}  # test scores, for paired comparisons
        for c in candidates:
            probe = fit(c, f.train)
            s = score(probe, c, f.test)
            kept[c.name] = np.asarray(s, dtype=np.float64).tolist()
            per[c.name] = fold_record(s, y[f.test], score(probe, c, f.calib_benign))
            step()
        if len(candidates) == 1:
            chosen, inner = candidates[0], {}
        else:  # choose with f's collection out of sight: grouped folds over the others, inside f.train
            others = [c for c in collections if c != f.collection]
            inner = inner_scores(candidates, group_folds(others, inner_k), f.train, y, fit, score, ds, step)
            chosen = max(candidates, key=lambda c: (np.nan_to_num(inner[c.name], nan=-1.0), -candidates.index(c)))
        return {"per": per, "scores": kept,
                "nested": {"chosen": chosen.name, "inner_auroc": inner, **per[chosen.name], **f.summary()}}

    def finished(f: Fold, record: dict[str, Any]) -> None:
        records[f.collection] = record
        if on_fold is not None:
            on_fold(f.collection, record)

    if workers > 1 and len(todo) > 1:
        from concurrent.futures import ThreadPoolExecutor, as_completed

        pool = ThreadPoolExecutor(min(workers, len(todo)), initializer=init_worker)
        try:
            futures = {pool.submit(held_out, f): f for f in todo}
            for fut in as_completed(futures):
                finished(futures[fut], fut.result())
        except BaseException:  # one failed, or Ctrl-C: drop the queued ones, stop the running ones
            stop.set()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    else:
        for f in todo:
            finished(f, held_out(f))
    per = {c.name: {k: records[k]["per"][c.name] for k in collections} for c in candidates}
    kept = {c.name: {k: np.asarray(records[k]["scores"][c.name], dtype=np.float64) for k in collections}
            for c in candidates}
    nested = {k: records[k]["nested"] for k in collections}
    means = {c.name: _mean([r["auroc"] for r in per[c.name].values()]) for c in candidates}
    best = max(candidates, key=lambda c: (np.nan_to_num(means[c.name], nan=-1.0), -candidates.index(c)))
    return {"candidates": [c.to_dict() for c in candidates], "collections": collections, "per_candidate": per,
            "mean_auroc": means, "chosen": best.to_dict(), "nested": nested, "_scores": kept}


class _Stopped(Exception):
    """A held-out collection abandoned because another one failed."""


def inner_scores(candidates: Sequence[Candidate], groups: list[list[str]], pool: np.ndarray, y: np.ndarray,
                 fit: Fitter, score: Scorer, ds: Any, advance: Callable[[], None]) -> dict[str, float]:
    """Mean AUROC of each candidate over grouped held-out folds inside `pool`."""
    out: dict[str, list[float]] = {c.name: [] for c in candidates}
    for g in groups:
        train, test = fold_out(ds, g, pool)
        if len(np.unique(y[test])) < 2 or len(np.unique(y[train])) < 2:
            continue
        for c in candidates:
            out[c.name].append(auroc(score(fit(c, train), c, test), y[test]))
            advance()
    return {k: _mean(v) for k, v in out.items()}


def n_fits(n_candidates: int, n_folds: int, inner_k: int) -> int:
    """Probe fits `loco` makes (for a progress bar)."""
    return n_candidates * n_folds * (1 + (inner_k if n_candidates > 1 else 0))


def thresholds(calib_benign_scores: np.ndarray, fprs: Sequence[float] = OPERATING_FPRS) -> dict[str, dict[str, Any]]:
    """Logit thresholds at each target FPR on benign calibration scores. With n calibration
    prompts an FPR below 1/n cannot be resolved: the threshold is then the highest benign score,
    and `resolvable` says so."""
    n = len(calib_benign_scores)
    return {fpr_label(f): {"target_fpr": f, "threshold": threshold_at_fpr(calib_benign_scores, f),
                           "resolvable": bool(f * n >= 1)} for f in fprs}


def fpr_label(fpr: float) -> str:
    return f"fpr={fpr * 100:g}%"


def _mean(values: Sequence[float]) -> float:
    v = [x for x in values if x == x]
    return float(np.mean(v)) if v else float("nan")
