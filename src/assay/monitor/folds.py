"""Leave-one-collection-out: hold out a whole source, jailbreak family or transformation at a time.

A monitor meets prompts from collections nobody trained it on. Splitting rows at random scores it
on collections it has already seen (the same templates, the same request lists), which is how a
probe at 0.98 in distribution falls to 0.7 on a new collection. So the monitor is validated the
way it will be used: each fold holds out every row of one collection, and

- every row sharing a near-duplicate cluster with a held-out row leaves training too (the same
  request, reworded or wrapped, would otherwise be seen under another collection's name);
- the calibration rows (the `calib` split) are never trained on, in any fold or in the final
  monitor: they set the thresholds. A collection with only one class (ShareGPT is all benign) is
  scored against the calibration rows of the other class, so every fold has an AUROC.

Collections are read from the rows: `source:<name>` for every row by where its request came
from, `family:<name>` for rows wrapped in a jailbreak, `transformation:<name>` for rows under a
transformation. A user dataset (source `user`) is split by its `group` column instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

CALIBRATION_SPLIT = "calib"


def collections_of(example: Any) -> list[str]:
    """Every collection a row belongs to (a wrapped HarmBench row is in `source:harmbench` and in
    its family's collection)."""
    if example.source == "user":
        return [f"group:{example.group}"] if example.group not in ("", "none") else []
    out = [f"source:{example.source}"]
    if example.family != "none":
        out.append(f"family:{example.family}")
    if example.transformation != "none":
        out.append(f"transformation:{example.transformation}")
    return out


@dataclass(frozen=True)
class Fold:
    """One held-out collection: the rows a model may train on and the rows it is scored on."""

    collection: str
    train: np.ndarray  # row indices
    test: np.ndarray  # the collection's rows, plus calibration rows of a class it lacks
    calib_benign: np.ndarray  # benign calibration rows outside `test`: where this fold's thresholds are set
    n_dropped_by_cluster: int  # rows of other collections left out because they share a held-out cluster

    def summary(self) -> dict[str, Any]:
        return {"collection": self.collection, "n_train": int(len(self.train)), "n_test": int(len(self.test)),
                "n_calib_benign": int(len(self.calib_benign)), "n_dropped_by_cluster": self.n_dropped_by_cluster}


def list_collections(ds: Any, min_rows: int = 20) -> list[str]:
    """Collections with at least `min_rows` rows outside calibration, in a stable order."""
    counts: dict[str, int] = {}
    for e in ds.examples:
        if e.split != CALIBRATION_SPLIT:
            for c in collections_of(e):
                counts[c] = counts.get(c, 0) + 1
    return sorted(c for c, n in counts.items() if n >= min_rows)


def trainable(ds: Any) -> np.ndarray:
    """Rows any monitor may train on: all but the calibration split."""
    return np.array([i for i, e in enumerate(ds.examples) if e.split != CALIBRATION_SPLIT], dtype=np.int64)


def calibration_rows(ds: Any) -> np.ndarray:
    return np.array([i for i, e in enumerate(ds.examples) if e.split == CALIBRATION_SPLIT], dtype=np.int64)


def fold(ds: Any, collection: str, pool: np.ndarray | None = None) -> Fold:
    """Hold out `collection`: train on `pool` (default: every trainable row) minus the
    collection's rows and their clusters; test on the collection's rows wherever they are."""
    from assay.errors import InputError

    ex = ds.examples
    pool = trainable(ds) if pool is None else np.asarray(pool, dtype=np.int64)
    held = np.array([i for i, e in enumerate(ex) if collection in collections_of(e)], dtype=np.int64)
    if not len(held):
        raise InputError(f"no rows in collection {collection!r}; collections: {', '.join(list_collections(ds))}")
    train, n_dropped = _train_without(ds, pool, held)
    y = ds.labels
    calib = calibration_rows(ds)
    test = held
    for cls in (0, 1):  # a one-class collection is scored against the other class's calibration rows
        if not (y[held] == cls).any():
            test = np.union1d(test, calib[y[calib] == cls])
    calib_benign = np.setdiff1d(calib[y[calib] == 0], test)
    return Fold(collection, train, np.sort(test), calib_benign, n_dropped)


def _train_without(ds: Any, pool: np.ndarray, held: np.ndarray) -> tuple[np.ndarray, int]:
    """`pool` minus the `held` rows and every row sharing a near-duplicate cluster with one of them;
    and how many rows the cluster rule alone removed."""
    clusters = ds.clusters
    rest = pool[np.isin(pool, held, invert=True)]
    shares = np.isin(clusters[rest], list(set(clusters[held])))
    return rest[~shares], int(shares.sum())


def group_folds(collections: list[str], k: int) -> list[list[str]]:
    """`collections` dealt round-robin into at most `k` groups (the inner folds of nested
    selection: k fits per candidate instead of one per collection)."""
    k = max(1, min(k, len(collections)))
    return [collections[i::k] for i in range(k)]


def fold_out(ds: Any, held: list[str], pool: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Train and test rows within `pool` when every collection in `held` is held out together
    (clusters included); the test rows are `pool`'s rows of those collections."""
    ex = ds.examples
    in_held = np.array([any(c in held for c in collections_of(ex[i])) for i in pool], dtype=bool)
    test = pool[in_held]
    return _train_without(ds, pool, test)[0], test
