"""The per-example scores a study's report is computed from, and the file that carries the
headline rows' scores beside a committed report.

`ScoreTable` is what every interval of the report reads: each run's score on every row, the
labels, the resampling units (clusters), the benign and harmful groups, and which rows make each
split, in the study's row order (the cluster bootstrap draws units in first-seen order, so order
matters). `save_scores` writes the runs the headline tables and findings cite to a compressed
`scores.npz`; `load_scores` reads it back, so `assay experiment recompute` can recompute every
interval of those rows from the committed file alone, without the model or the caches.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SCORES_FILE = "scores.npz"
# The groupings the report breaks results down by.
GROUP_FIELDS = ("family", "transformation", "source", "group")
_FORMAT = 1


@dataclass
class ScoreTable:
    """Scores [n] per run over the same n rows; `idx[split]` the rows of a split, in study order."""

    scores: dict[Any, np.ndarray]
    idx: dict[str, np.ndarray]
    y: np.ndarray
    units: np.ndarray
    groups: dict[str, np.ndarray]
    splits: list[str]
    text_sha256: np.ndarray = field(default_factory=lambda: np.array([], dtype=str))

    def split_scores(self, scores: np.ndarray) -> dict[str, Any]:
        """One run's scores as `SplitScores` per split, what `evaluate_method` takes."""
        from assay.report.evaluate import SplitScores

        return {s: SplitScores(scores=scores[i], y=self.y[i], groups={f: g[i].tolist() for f, g in self.groups.items()},
                               units=self.units[i].tolist()) for s, i in self.idx.items()}


def score_table(data: Any, scores: dict[Any, np.ndarray]) -> ScoreTable:
    """The study's runs' `scores` over its rows (`data`: a `StudyData`)."""
    ex = data.ds.examples
    return ScoreTable(scores=scores, idx=data.idx, y=np.asarray(data.y), units=np.asarray(data.units),
                      groups={f: np.array([getattr(e, f) for e in ex], dtype=object) for f in GROUP_FIELDS},
                      splits=list(data.splits),
                      text_sha256=np.array([hashlib.sha256(e.text.encode()).hexdigest()[:16] for e in ex]))


def headline_runs(table: ScoreTable, results: list[Any], cfg: Any) -> list[Any]:
    """The runs behind the headline tables and the findings: each family's configuration chosen on
    validation (every seed), the dense probe at every aggregation (the same-aggregation comparisons
    the findings cite), and the pretraining SAE's k-sparse configuration on every other SAE (the
    gap-closed rule that fixes it)."""
    from assay.experiment.families import family_best, family_key, run_of
    from assay.experiment.config import SAE_NAMES
    from assay.probes.names import REFERENCE

    best = family_best(results, cfg)
    refs = [run_of(ref) for ref in best.values()]
    pre = best.get(family_key("k-sparse", "pretrain", cfg.headline_k))
    if pre is not None:
        refs += [run_of(pre, sae=s) for s in SAE_NAMES if s != "pretrain"]
    refs += [run_of({"method": REFERENCE, "features": a}) for a in cfg.aggregations]
    out: list[Any] = []
    for run in refs:
        for r in ([run] if run.seed is None else [run_of(run.__dict__, seed=s) for s in cfg.seeds]):
            if r in table.scores and r not in out:
                out.append(r)
    return out


def save_scores(path: Path, table: ScoreTable, runs: list[Any]) -> Path:
    """`runs`' scores on every row of `table`'s splits, with labels, clusters, groups and a hash of each
    prompt's text (to join with the benchmark; the prompts themselves are not copied), compressed.
    Written atomically."""
    from assay.fileio import atomic_path

    order = np.concatenate([np.asarray(table.idx[s]) for s in table.splits])
    split = np.concatenate([np.full(len(table.idx[s]), s) for s in table.splits])
    arrays: dict[str, np.ndarray] = {
        "split": split.astype(str), "y": np.asarray(table.y)[order].astype(np.int8),
        "units": np.asarray(table.units)[order].astype(str),
        **{f"group_{f}": np.asarray(g)[order].astype(str) for f, g in table.groups.items()},
        "runs": np.array(json.dumps({"format": _FORMAT, "splits": table.splits,
                                     "runs": [r.__dict__ for r in runs]}))}
    if len(table.text_sha256):
        arrays["text_sha256"] = np.asarray(table.text_sha256)[order].astype(str)
    for i, r in enumerate(runs):
        arrays[f"scores_{i:03d}"] = np.asarray(table.scores[r], np.float64)[order]
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)
    return path


def load_scores(path: Path) -> ScoreTable:
    """The `ScoreTable` `save_scores` wrote (rows in split order); a clear error on any other file."""
    from assay.errors import InputError
    from assay.experiment.parts import Run

    import zipfile

    if not zipfile.is_zipfile(path):  # np.load would guess a pickle and suggest loading it unsafely
        raise InputError(f"{path}: not a scores file written by a study (not an .npz archive); rerun "
                         "`assay experiment harmful-intent` to write one")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
        meta = json.loads(str(data["runs"]))
        runs = [Run(**r) for r in meta["runs"]]
        splits = list(meta["splits"])
        split = data["split"]
        table = ScoreTable(
            scores={r: data[f"scores_{i:03d}"] for i, r in enumerate(runs)},
            idx={s: np.flatnonzero(split == s) for s in splits}, y=data["y"].astype(int),
            units=data["units"].astype(object),
            groups={f: data[f"group_{f}"].astype(object) for f in GROUP_FIELDS if f"group_{f}" in data},
            splits=splits, text_sha256=data.get("text_sha256", np.array([], dtype=str)))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InputError(f"{path}: not a scores file written by a study ({type(err).__name__}: {err}); rerun "
                         "`assay experiment harmful-intent` to write one") from None
    if meta.get("format") != _FORMAT:
        raise InputError(f"{path}: scores file format {meta.get('format')!r}, this assay reads {_FORMAT}")
    return table
