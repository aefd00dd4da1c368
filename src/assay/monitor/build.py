"""`build_monitor`: train, choose by leave-one-collection-out, calibrate and write a bundle.

1. Every labelled prompt the dataset has (all splits but `calib`) may be training data: a monitor
   should know every collection the project ships, not only the study's in-distribution split.
   Whether that helps is itself a choice: the data mix `all` against `id` (train and val only).
2. Candidates (method x layer x aggregation x data mix) are compared by leave-one-collection-out
   (`select`); the one with the best mean held-out AUROC ships. The card's per-collection numbers
   are nested, so no collection it reports chose anything. Besides pooled probes, the candidates
   include a token-level one (`located-logistic`): a locator taught where the request sits in the
   benchmark's wrapped prompts (`assay.data.spans`) weights the tokens a dense head reads, so a
   request inside a long jailbreak template is not diluted by it.
3. The chosen probe is fitted on its mix's rows; thresholds at 0.1%, 1% and 5% FPR are set on
   the benign calibration prompts (never trained on).
4. The card also reports the study's protocol (the same candidate trained on the ID `train` split
   only: val and OOD numbers) and the study-protocol probe on each held-out collection beside the
   monitor, on the same rows, so a reader sees what the extra data and the selection bought.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
import time
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from assay.errors import InputError
from assay.metrics import auroc, fpr_at_threshold, recall_at_fpr
from assay.monitor.folds import CALIBRATION_SPLIT, calibration_rows, fold, list_collections, trainable
from assay.monitor.select import CARD_FPR, OPERATING_FPRS, Candidate, fpr_label, loco, n_fits, thresholds

log = logging.getLogger(__name__)

DEFAULT_METHODS = ("dense-logistic", "diff-of-means-std", "located-logistic")
# Data mixes a candidate may train on (always within the rows a fold leaves it).
MIXES = {"all": "every labelled row outside `calib` (train, val and ood)",
         "id": "the study's in-distribution splits only (train and val)"}
DEFAULT_MIXES = ("all", "id")
DEFAULT_AGGREGATIONS = ("resp-5", "all.mean", "all.max")
DEFAULT_CS = (1e-3, 1e-2, 1e-1, 1.0)  # fewer than a study probe's grid: the selection fits hundreds of probes
MIN_CALIBRATION = 100  # benign calibration prompts: below this a 1% threshold is the top one or two scores


def default_layers(n_layers: int) -> list[int]:
    """A third, half and two thirds of the way up: one forward pass to the deepest serves all three,
    and on the full benchmark the selection preferred the shallowest (Gemma 3 270M: 6 over 9 and 12)."""
    return sorted({n_layers // 3, n_layers // 2, (2 * n_layers) // 3})


TOKENS_PER_PROMPT = 16  # a token-level candidate fits on this fixed sample of each prompt's tokens


def candidate_spec(c: Candidate, model: str, max_tokens: int = 512) -> Any:
    """The input a candidate's probe reads (saved in its `probe.json`, layer included)."""
    from assay.probes.inputs import InputSpec
    from assay.probes.methods import method

    reads = method(c.method).reads
    if reads not in ("pooled", "tokens"):
        raise InputError(f"method {c.method!r} reads {reads}; a monitor serves probes on the model's "
                         "activations: pick a pooled or token-level method")
    return InputSpec.for_method(c.method, aggregation=c.aggregation if reads == "pooled" else None, layer=c.layer,
                                model=model, max_tokens=max_tokens)


TOKEN_POOLINGS = ("rmax10", "rmax20")  # token-level candidates: max of rolling means over 10 and 20 tokens
_POOLING = re.compile(r"^(rmax|max|mean)(\d*)$")


def options(method: str) -> set[str]:
    """The config fields a method's probe takes (`Cs`, `pool`, ...): what the build may set on it."""
    from assay.probes.methods import method as get_method

    return {f.name for f in dataclasses.fields(get_method(method).probe.Config)}


def token_pooling(name: str) -> dict[str, Any]:
    """`rmax10` -> {pool: rmax, window: 10}: a token-level candidate's pooling, as probe options."""
    from assay.probes.token import TokenLogisticConfig

    m = _POOLING.match(name)
    if not m or (m.group(1) == "rmax") != bool(m.group(2)):
        raise InputError(f"token pooling {name!r}: use rmaxN (max of rolling means over N tokens), max or mean")
    return {"pool": m.group(1), "window": int(m.group(2) or TokenLogisticConfig.window)}


def build_monitor(
    data: str, out: str | Path, *, model: str | None = None, layers: Sequence[int] | None = None,
    methods: Sequence[str] = DEFAULT_METHODS, aggregations: Sequence[str] = DEFAULT_AGGREGATIONS,
    mixes: Sequence[str] = DEFAULT_MIXES, token_poolings: Sequence[str] = TOKEN_POOLINGS,
    dtype: str = "auto", inner_k: int = 4, default_fpr: float = CARD_FPR, seed: int = 0,
    progress: bool = True, min_calibration: int = MIN_CALIBRATION, lm: Any = None,
) -> Path:
    """Build a monitor bundle from a benchmark (preset name or directory) or a labelled user file.
    `lm` is an already loaded model to use instead of loading `model` (tests, notebooks)."""
    from assay.data import load_or_build
    from assay.models import load
    from assay.models.loading import DEFAULT_MODEL, check_layer, converted_meanwhile
    from assay.monitor.bundle import model_identity, save_bundle
    from assay.monitor.card import render_card
    from assay.monitor.features import monitor_activations
    from assay.probes.inputs import Inputs
    from assay.probes.methods import method as get_method
    from assay.provenance import code_fingerprint, provenance
    from assay.runtime import choose_dtype, set_torch_threads, threads_per_worker

    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    model = model or (lm.name if lm is not None else DEFAULT_MODEL)
    if default_fpr not in OPERATING_FPRS:
        raise InputError(f"--default-fpr {default_fpr} is not one of the calibrated FPRs {list(OPERATING_FPRS)}")
    unknown = [m for m in mixes if m not in MIXES]
    if unknown or not mixes:
        raise InputError(f"unknown data mix {unknown or mixes}; choose from {', '.join(MIXES)}")
    for p in token_poolings:
        token_pooling(p)
    for m in methods:
        if get_method(m).reads not in ("pooled", "tokens"):
            raise InputError(f"method {m!r} reads {get_method(m).reads}; a monitor serves probes on the model's "
                             "activations: pick a pooled or attention method (`assay probe methods`)")
    # a cold cache converts a GGUF model (the bundled default's included) while the data builds
    with converted_meanwhile(model if lm is None else None) as model_converted:
        ds = load_or_build(data, seed)
        y = ds.labels
        calib = calibration_rows(ds)
        n_calib_benign = int((y[calib] == 0).sum())
        if n_calib_benign < min_calibration:
            raise InputError(f"{data} has {n_calib_benign} benign rows in a `{CALIBRATION_SPLIT}` split; a monitor "
                             f"sets its thresholds there and needs at least {min_calibration}: add a `split` column "
                             f"with '{CALIBRATION_SPLIT}' on held-out benign prompts")
        collections = list_collections(ds)
        if len(collections) < 2:
            raise InputError(f"{data} has {len(collections)} collection(s) to hold out; leave-one-collection-out needs "
                             "at least 2 (sources, jailbreak families, or a `group` column in a user file)")

        if lm is None:
            model_converted()
            dtype_name, dtype_why = choose_dtype(dtype)
            lm = load(model, dtype=dtype_name, lazy=True)
        else:
            from assay.runtime import dtype_name as name_of

            dtype_name, dtype_why = name_of(lm.dtype), {"requested": "the model passed in"}
    layers = sorted(set(layers)) if layers else default_layers(lm.n_layers)
    for L in layers:
        check_layer(L, lm.n_layers)
    pools = mix_pools(ds, mixes)
    def variants(m: str) -> Sequence[str | None]:  # what sets a method's candidates apart besides layer and mix
        return aggregations if get_method(m).reads == "pooled" else token_poolings if "pool" in options(m) else [None]

    candidates = [Candidate(m, L, a, mix) for mix in pools for m in methods for L in layers for a in variants(m)]
    timings["model"] = time.perf_counter() - t0

    t = time.perf_counter()
    tokens = any(get_method(m).reads == "tokens" for m in methods)
    # Only the aggregations a candidate reads. The study's layer sweep pools these, and on the bundled
    # model (18 blocks) it reads 6, 9 and 12 too, so a monitor built on the study's data borrows its
    # activations prompt by prompt (`assay.activations.reuse`) instead of a third forward pass.
    pooled = sorted({c.aggregation for c in candidates if get_method(c.method).reads == "pooled"}) or ["all.mean"]
    acts = monitor_activations(lm, ds, layers, tokens=tokens, aggregations=pooled, progress=progress)
    requests = None
    if any(get_method(m).token_sample for m in methods):
        from assay.data.spans import request_token_masks

        requests = request_token_masks(ds, lm.tokenizer)
    inputs = Inputs(acts, requests=requests, progress=progress)
    specs = {c: candidate_spec(c, model) for c in candidates}

    def read(c: Candidate) -> tuple[torch.Tensor, ...]:
        if get_method(c.method).token_sample:
            return inputs.sample(specs[c], TOKENS_PER_PROMPT, seed)
        return inputs.read(specs[c])

    timings["activations"] = time.perf_counter() - t
    shared = SharedFits()

    def fit(c: Candidate, rows: np.ndarray) -> Any:
        from assay.probes.methods import make_probe

        rows = rows[np.isin(rows, pools[c.mix])]
        if len(np.unique(y[rows])) < 2:
            return None  # this mix leaves one class in this fold: a probe that cannot be trained scores nothing
        m, fields = get_method(c.method), options(c.method)
        opts = {"Cs": DEFAULT_CS} if "Cs" in fields else token_pooling(c.aggregation) if "pool" in fields else {}
        probe = make_probe(c.method, seed=seed, inputs=specs[c].to_dict(), **opts)
        idx = torch.as_tensor(rows)
        if m.token_sample:
            X, M, C = read(c)
            if hasattr(probe, "fit_head"):  # the locator on the sample, the head on every token of the rows
                probe.fit_locator(X[idx], M[idx], C[idx])
                return probe.fit_head(inputs.packed(specs[c]).map(probe.pool, rows), y[rows])
            # one fit per (method, layer, rows), whatever the pooling applied to its token logits
            return shared.get((c.method, c.layer, rows.tobytes()), probe,
                              lambda: probe.fit(X[idx], y[rows], mask=M[idx], carries=C[idx]))
        X, M = read(c)
        return probe.fit(X[idx], y[rows], mask=None if M is None else M[idx])

    def score(probe: Any, c: Candidate, rows: np.ndarray) -> np.ndarray:
        if probe is None:
            return np.zeros(len(rows))  # AUROC 0.5: no evidence either way
        if get_method(c.method).token_sample:
            return inputs.packed(specs[c]).score(probe, rows)
        X, M = read(c)
        idx = torch.as_tensor(rows)
        return np.asarray(probe.score(X[idx], None if M is None else M[idx]), dtype=np.float64)

    t = time.perf_counter()
    folds = [fold(ds, c) for c in collections]
    checkpoint = SelectionCheckpoint({"dataset": ds.fingerprint, "activations": acts.key, "collections": collections,
                                      "candidates": [c.name for c in candidates], "inner_k": inner_k, "seed": seed,
                                      "Cs": DEFAULT_CS, "code": code_fingerprint(*SELECTION_CODE)})
    workers = selection_workers(candidates, lm.device)
    for c in candidates:  # read once, before any worker thread asks
        read(c)
    with _bar(progress, n_fits(len(candidates), len(folds), inner_k), "leave-one-collection-out") as advance:
        selection = loco(candidates, folds, y, fit, score, inner_k=inner_k, ds=ds, advance=advance,
                         done=checkpoint.done, on_fold=checkpoint.save, workers=workers,
                         init_worker=partial(set_torch_threads, threads_per_worker(workers)))
    timings["selection"] = time.perf_counter() - t

    t = time.perf_counter()
    chosen = next(c for c in candidates if c.name == selection["chosen"]["name"])
    train_rows = pools[chosen.mix]
    probe = fit(chosen, train_rows)
    calib_benign = calib[y[calib] == 0]
    calib_scores = score(probe, chosen, calib)  # once: the benign ones set the thresholds, all are evaluated
    ths = thresholds(calib_scores[y[calib] == 0])
    calib_eval = _at_thresholds(calib_scores, y[calib], ths)
    # the study trains on `train` whatever the mix: one candidate per method, layer and aggregation
    study = study_protocol(ds, [c for c in candidates if c.mix == next(iter(pools))], y, fit, score, folds, selection)
    timings["final"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0

    name = f"assay-harmful-intent-{Path(str(model)).name}-L{chosen.layer}"
    spec = {
        "name": name,
        # a local path absolute, so the bundle serves from any working directory
        "model": model_identity(lm) | {"source": str(Path(model).resolve()) if Path(str(model)).exists() else model},
        "layer": chosen.layer, "dtype": dtype_name, "dtype_choice": dtype_why,
        "chat_format": list(lm.chat_affixes()),
        "max_tokens": acts.spec["max_tokens"],
        "method": chosen.method, "inputs": probe.inputs, "mix": chosen.mix,
        "probe_config": dataclasses.asdict(probe.config),
        "thresholds": ths, "default_threshold": fpr_label(default_fpr),
        "calibration": {"split": CALIBRATION_SPLIT, "n_benign": n_calib_benign,
                        "fingerprint": _rows_fingerprint(ds, calib_benign)},
        "training": {"data": str(data), "dataset_fingerprint": ds.fingerprint, "n_rows": int(len(train_rows)),
                     "n_harmful": int(y[train_rows].sum()), "splits": sorted({ds[i].split for i in train_rows})},
        "card": {"selection": _selection_summary(selection), "calibration_split": calib_eval, "study_protocol": study,
                 "timings_seconds": {k: round(v, 1) for k, v in timings.items()}},
        "provenance": provenance(seed=seed, activations=acts.key),
    }
    return save_bundle(out, spec, probe, render_card(spec))


class SharedFits:
    """Token-level candidates that differ only in how token logits are pooled share one fit: the
    first to ask fits it, the others get its weights under their own pooling (a lock per key, so
    two selection workers never fit the same thing twice)."""

    def __init__(self) -> None:
        self._lock, self._fits, self._busy = threading.Lock(), {}, {}

    def get(self, key: tuple, probe: Any, fit: Any) -> Any:
        with self._lock:
            busy = self._busy.setdefault(key, threading.Lock())
        with busy:
            if key not in self._fits:
                self._fits[key] = fit()
                return self._fits[key]
        done = self._fits[key]
        probe.set_state(done.state())
        probe.meta = dict(done.meta)
        return probe


# The code a selection's numbers come from (its cache key holds their fingerprint, not the git
# commit: an installed package has none, and a dirty tree's commit does not name its code).
SELECTION_CODE = ("assay.monitor", "assay.probes", "assay.metrics")


def selection_dir() -> Path:
    """Where finished and interrupted selections are kept (the test suite points it elsewhere, so
    a test run never takes a selection an earlier run computed)."""
    from assay.runtime import cache_dir

    return cache_dir() / "monitor-selection"


class SelectionCheckpoint:
    """The finished held-out collections of a selection (hours on a large benchmark), in assay's
    cache under a key of everything that decides them: a rerun of the same build takes them as they
    are and fits only the rest (an interrupted build resumes; a finished one reruns in seconds); any
    other build (data, activations, candidates, code) gets another key. Written atomically after
    each collection, and kept once the bundle is written (1.7 MB for the quick benchmark)."""

    def __init__(self, key: dict[str, Any]) -> None:
        from assay.fileio import read_json, sha256_json

        self.key = key
        self.path = selection_dir() / f"{sha256_json(key)[:20]}.json"
        self.done: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            try:
                saved = read_json(self.path)
                if saved.get("key") == json_roundtrip(key):
                    self.done = saved["folds"]
            except (ValueError, KeyError, TypeError, AttributeError):
                log.warning("ignoring an unreadable selection checkpoint %s", self.path)
        if len(self.done) == len(key["collections"]):
            log.info("leave-one-collection-out: reusing the finished selection of the same build (%s)", self.path)
        elif self.done:
            log.info("resuming leave-one-collection-out from %s: %d of %d held-out collections already done",
                     self.path, len(self.done), len(key["collections"]))

    def save(self, collection: str, record: dict[str, Any]) -> None:
        from assay.fileio import write_json

        self.done[collection] = record
        write_json(self.path, {"key": self.key, "folds": self.done})


def json_roundtrip(obj: Any) -> Any:
    import json

    return json.loads(json.dumps(obj, default=str))


def mix_pools(ds: Any, mixes: Sequence[str]) -> dict[str, np.ndarray]:
    """The rows each data mix may train on. A mix with one class, or with the same rows as an
    earlier one (a user file without `ood` rows), is dropped: it would only repeat or fail."""
    pool = trainable(ds)
    split = np.array([e.split for e in ds.examples])
    out: dict[str, np.ndarray] = {}
    for m in mixes:
        rows = pool if m == "all" else pool[np.isin(split[pool], ("train", "val"))]
        if len(np.unique(ds.labels[rows])) < 2 or any(np.array_equal(rows, r) for r in out.values()):
            log.info("data mix %r dropped: one class, or the same rows as another mix", m)
            continue
        out[m] = rows
    if not out:
        raise InputError(f"no data mix among {list(mixes)} has both harmful and benign rows to train on")
    return out


def study_protocol(ds: Any, candidates: list[Candidate], y: np.ndarray, fit, score, folds, selection) -> dict[str, Any]:
    """The study's way: each candidate trained on `train` only, the best on `val` kept; its val and
    OOD numbers at its own calibrated thresholds, and its AUROC on each held-out collection's rows
    outside `train` beside the nested LOCO monitor's on the same rows."""
    split = np.array([e.split for e in ds.examples])
    idx = {s: np.flatnonzero(split == s) for s in ("train", "val", "ood", CALIBRATION_SPLIT)}
    if not len(idx["train"]) or not len(idx["val"]):
        return {"skipped": "the dataset has no train and val splits"}
    fitted = {c.name: fit(c, idx["train"]) for c in candidates}
    val = {n: auroc(score(p, c, idx["val"]), y[idx["val"]]) for (n, p), c in zip(fitted.items(), candidates)}
    best = max(candidates, key=lambda c: (np.nan_to_num(val[c.name], nan=-1.0), -candidates.index(c)))
    probe = fitted[best.name]
    calib = idx[CALIBRATION_SPLIT]
    ths = thresholds(score(probe, best, calib[y[calib] == 0]))
    splits = {s: _at_thresholds(score(probe, best, idx[s]), y[idx[s]], ths) for s in ("val", "ood") if len(idx[s])}
    outside_train = ~np.isin(np.arange(len(y)), idx["train"])
    per_collection = {}
    for f in folds:
        rows = f.test[outside_train[f.test]]
        if len(np.unique(y[rows])) < 2:
            continue
        nested = selection["nested"][f.collection]
        mon = selection["_scores"][nested["chosen"]][f.collection][outside_train[f.test]]
        # the study's probe trained on this collection's other rows when the collection is in `train`:
        # only the collections it never saw compare like for like with the held-out monitor
        seen = bool(np.isin(f.test, idx["train"]).any())
        per_collection[f.collection] = {"n": int(len(rows)), "study_auroc": auroc(score(probe, best, rows), y[rows]),
                                        "monitor_auroc": auroc(mon, y[rows]), "in_study_train": seen}
    return {"candidate": best.to_dict(), "val_auroc_by_candidate": val, "splits": splits,
            "per_collection": per_collection}


def _at_thresholds(scores: np.ndarray, y: np.ndarray, ths: dict[str, dict]) -> dict[str, Any]:
    out = {"auroc": auroc(scores, y), "n_pos": int(y.sum()), "n_neg": int((1 - y).sum())}
    for name, t in ths.items():
        out[name] = {"recall": recall_at_fpr(scores, y, t["threshold"]), "fpr": fpr_at_threshold(scores, y, t["threshold"])}
    return out


def _selection_summary(sel: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in sel.items() if not k.startswith("_")}


def _rows_fingerprint(ds: Any, rows: np.ndarray) -> str:
    from assay.data.dataset import fingerprint

    return fingerprint(ds[int(i)] for i in rows)


MAX_SELECTION_WORKERS = 4  # a cap, not a measured optimum: the workers' Python parts share one GIL


def selection_workers(candidates: Sequence[Candidate], device: Any) -> int:
    """Held-out collections fitted at once during selection, each thread on its share of the cores
    (`runtime.threads_per_worker`: one each on a 2-core CPU). A probe fit's matrices are a few
    hundred rows and columns, too small to keep several cores busy: on 2 cores the quick
    benchmark's selection took 52 s as two single-threaded workers and 72 s as one two-threaded fit
    at a time (one run of each, back to back). Only where every candidate's fit is deterministic and
    keeps no global state (not a seeded method: the attention probe seeds torch's global generator),
    and on a CPU."""
    from assay.probes.methods import method as get_method

    if torch.device(device).type != "cpu" or any(get_method(c.method).seeded for c in candidates):
        return 1
    return max(1, min(torch.get_num_threads(), MAX_SELECTION_WORKERS))


def _bar(enabled: bool, total: int, what: str):
    @contextmanager
    def bar():
        if not enabled:
            yield lambda: None
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(TextColumn(what), BarColumn(), MofNCompleteColumn(), TextColumn("probe fits"),
                      TimeRemainingColumn()) as p:
            task = p.add_task(what, total=total)
            yield lambda: p.advance(task)
    return bar()

