"""The probe interface: `fit`, `score`, `save`, `load`, and the on-disk format.

A probe reads pooled features `X [n, d]` or per-token activations `X [n, T, d]` with a bool mask
`[n, T]`, and returns one real-valued score per example (a logit; higher = harmful). On disk a
probe is a directory: `probe.json` (kind, config, fitted metadata) and `probe.safetensors`
(tensors). No pickle, so a probe file cannot run code when loaded.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from assay import __version__
from assay.fileio import atomic_path, write_json

CONFIG_FILE = "probe.json"
WEIGHTS_FILE = "probe.safetensors"
_REGISTRY: dict[str, type["Probe"]] = {}


def as_tensor(x: Any, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    return t.to(device=device or t.device, dtype=dtype)


def as_labels(y: Any) -> np.ndarray:
    y = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    y = y.ravel().astype(np.int64)
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 (benign) or 1 (harmful)")
    return y


class Probe:
    """Base class. Subclasses set `kind` and `Config` (a dataclass), implement `fit`, `score`,
    `state` (tensors to save) and `set_state`; fitted JSON-able choices go in `self.meta`."""

    kind: ClassVar[str]
    Config: ClassVar[type]
    token_level: ClassVar[bool] = False  # True when the probe reads [n, T, d] + mask

    def __init__(self, config: Any = None, **overrides: Any) -> None:
        cfg = config if config is not None else self.Config()
        self.config = dataclasses.replace(cfg, **overrides) if overrides else cfg
        self.meta: dict[str, Any] = {}

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if "kind" in cls.__dict__:
            _REGISTRY[cls.kind] = cls

    # -- the interface --------------------------------------------------------------------
    def fit(self, X, y, X_val=None, y_val=None, *, mask=None, mask_val=None) -> Self:
        raise NotImplementedError

    def score(self, X, mask=None) -> np.ndarray:
        raise NotImplementedError

    def state(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def set_state(self, tensors: dict[str, torch.Tensor]) -> None:
        raise NotImplementedError

    # -- persistence ----------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state().items()}
        with atomic_path(path / WEIGHTS_FILE) as tmp:
            save_file(tensors, str(tmp))
        write_json(path / CONFIG_FILE, {
            "kind": self.kind, "config": dataclasses.asdict(self.config), "meta": self.meta,
            "assay_version": __version__,
        })
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Probe":
        return load_probe(path)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"


def _config_from_dict(config_cls: type, d: dict[str, Any]) -> Any:
    names = {f.name for f in dataclasses.fields(config_cls)}
    # JSON turns tuples into lists; the dataclasses here accept either
    return config_cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in names})


def load_probe(path: str | Path, device: torch.device | str | None = None) -> Probe:
    """Load any probe saved by `Probe.save`, whatever its kind."""
    from assay.probes import _register_all

    _register_all()
    from safetensors import SafetensorError

    from assay.errors import ConfigMismatchError, InputError

    path = Path(path)
    if not (path / CONFIG_FILE).is_file():
        raise InputError(f"{path} is not a saved probe (no {CONFIG_FILE})")
    try:
        spec = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
        cls = _REGISTRY.get(spec["kind"])
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigMismatchError(f"{path / CONFIG_FILE} is malformed ({err}); train the probe again") from None
    if cls is None:
        raise ConfigMismatchError(f"{path}: unknown probe kind {spec['kind']!r}; known: {sorted(_REGISTRY)}")
    try:
        probe = cls(_config_from_dict(cls.Config, spec["config"]))
        probe.meta = spec.get("meta", {})
        tensors = load_file(str(path / WEIGHTS_FILE))
        probe.set_state({k: v.to(device) if device else v for k, v in tensors.items()})
    except (OSError, SafetensorError, KeyError, TypeError, ValueError, RuntimeError) as err:
        raise ConfigMismatchError(f"{path}: the saved {spec['kind']} probe is incomplete or does not match "
                                  f"{CONFIG_FILE} ({type(err).__name__}: {err}); train it again") from None
    return probe


def probe_kinds() -> list[str]:
    from assay.probes import _register_all

    _register_all()
    return sorted(_REGISTRY)
