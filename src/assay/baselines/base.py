"""What a user would pick instead of a probe: classifiers on the raw prompt text.

Same shape as a probe (`fit`, `score`, `save`, `load`) but over `list[str]`; same on-disk rules:
`baseline.json` + `baseline.safetensors`, no pickle.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Self, Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from assay import __version__
from assay.fileio import atomic_path, write_json

CONFIG_FILE = "baseline.json"
WEIGHTS_FILE = "baseline.safetensors"
_REGISTRY: dict[str, type["TextBaseline"]] = {}


class TextBaseline:
    kind: ClassVar[str]

    def __init__(self, **config: Any) -> None:
        self.config: dict[str, Any] = config
        self.meta: dict[str, Any] = {}

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if "kind" in cls.__dict__:
            _REGISTRY[cls.kind] = cls

    def fit(self, texts: Sequence[str], y, texts_val: Sequence[str] | None = None, y_val=None) -> Self:
        raise NotImplementedError

    def score(self, texts: Sequence[str]) -> np.ndarray:
        raise NotImplementedError

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """(tensors, JSON-able extras such as a vocabulary)."""
        raise NotImplementedError

    def set_state(self, tensors: dict[str, torch.Tensor], extra: dict[str, Any]) -> None:
        raise NotImplementedError

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors, extra = self.state()
        with atomic_path(path / WEIGHTS_FILE) as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
        write_json(path / CONFIG_FILE, {"kind": self.kind, "config": self.config, "meta": self.meta,
                                        "extra": extra, "assay_version": __version__})
        return path

    @classmethod
    def load(cls, path: str | Path) -> "TextBaseline":
        return load_baseline(path)


def load_baseline(path: str | Path) -> TextBaseline:
    import assay.baselines.embedding  # noqa: F401  (register every kind)
    import assay.baselines.tfidf  # noqa: F401

    path = Path(path)
    spec = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
    obj = _REGISTRY[spec["kind"]](**spec["config"])
    obj.meta = spec.get("meta", {})
    obj.set_state(load_file(str(path / WEIGHTS_FILE)), spec.get("extra", {}))
    return obj


def select_C(fit_score, Cs: Sequence[float], y_val) -> tuple[float, list[dict]]:
    """Pick the C whose validation AUROC is best (ties: the smaller C, i.e. more regularised).
    `fit_score(C)` fits at C and returns validation scores."""
    from assay.eval.metrics import auroc

    table = [{"C": float(C), "val_auroc": auroc(fit_score(C), y_val)} for C in sorted(Cs)]
    best = max(table, key=lambda r: (round(r["val_auroc"], 6), -r["C"]))
    return best["C"], table
