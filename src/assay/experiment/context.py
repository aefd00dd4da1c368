"""`StudyData`: what every stage of a study reads (its config, output folder, the data and its
splits, the model), as one typed object the stages take instead of the whole study.

Splits: `train` fits every probe; `val` chooses hyperparameters (C, early stopping) and, in the
headline, each family's configuration; `calib` (carved from validation behaviours when the data
has none) only sets the threshold, so it is also the held-out in-distribution split; `ood` is
never used for any choice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from assay.errors import InputError
from assay.experiment.config import StudyConfig

log = logging.getLogger(__name__)


@dataclass
class StudyData:
    cfg: StudyConfig
    out: Path
    ds: Any  # assay.data.Dataset
    lm: Any  # assay.models.LoadedModel
    progress: bool = True
    y: np.ndarray = field(init=False)
    units: np.ndarray = field(init=False)  # the resampling unit of each row: its cluster
    idx: dict[str, np.ndarray] = field(init=False)  # row indices of train, val, the calibration split, ood

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        ex = self.ds.examples
        self.y = np.array([e.label for e in ex])
        self.units = self.ds.clusters
        split = np.array([e.split for e in ex])
        self.idx = {s: np.flatnonzero(split == s) for s in self.splits}

    @property
    def splits(self) -> list[str]:
        return ["train", "val", self.cfg.calibrate_on, "ood"]


def study_dataset(cfg: StudyConfig) -> Any:
    """The study's rows: the preset's benchmark or `cfg.data`, subsampled, with a calibration
    split; an error naming the missing splits when it lacks one the study needs."""
    from assay.data import load_or_build

    ds = with_calibration_split(subsample(load_or_build(cfg.data or cfg.preset, cfg.seed), cfg.subsample, cfg.seed),
                                cfg.calibrate_on, cfg.seed)
    missing = [s for s in ("train", "val", cfg.calibrate_on, "ood") if s not in ds.splits]
    if missing:
        raise InputError(f"the study needs splits train, val, {cfg.calibrate_on} and ood; the dataset has "
                         f"{ds.splits} and lacks {missing}: add a `split` column with those values")
    return ds


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
