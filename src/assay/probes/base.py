"""The probe interface: `fit`, `score`, `save`, `load`, and the one on-disk format.

A probe reads what its method's input spec names (see `assay.probes.inputs`): pooled activations
`X [n, d]`, per-token activations `X [n, T, d]` with a bool mask `[n, T]`, SAE outputs, sentence
embeddings or raw texts; it returns one real-valued score per example (a logit; higher =
harmful). On disk a probe is a directory: `probe.json` (method, input spec, config, fitted
metadata, JSON state such as a vocabulary) and `probe.safetensors` (tensors). No pickle, so a
probe file cannot run code when loaded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import torch
from safetensors.torch import save_file

from assay import __version__
from assay.fileio import atomic_path, write_json

CONFIG_FILE = "probe.json"
WEIGHTS_FILE = "probe.safetensors"
FORMAT_VERSION = 2  # 1: a class `kind` per file and a separate baseline format (assay < 0.2)


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
    """Base class. Subclasses set `Config` (a dataclass), implement `fit`, `score`, `state`
    (tensors to save) and `set_state`, and `json_state` / `set_json_state` when they keep
    something that is not a tensor; fitted JSON-able choices go in `self.meta`. `method` and
    `inputs` are set by the registry (`assay.probes.methods.make_probe`)."""

    Config: ClassVar[type]

    def __init__(self, config: Any = None, **overrides: Any) -> None:
        cfg = config if config is not None else self.Config()
        self.config = dataclasses.replace(cfg, **overrides) if overrides else cfg
        self.meta: dict[str, Any] = {}
        self.method: str | None = None
        self.inputs: dict[str, Any] | None = None

    # -- the interface --------------------------------------------------------------------
    def fit(self, X, y, X_val=None, y_val=None, *, mask=None, mask_val=None) -> Self:
        raise NotImplementedError

    def score(self, X, mask=None) -> np.ndarray:
        raise NotImplementedError

    def state(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def set_state(self, tensors: dict[str, torch.Tensor]) -> None:
        raise NotImplementedError

    def json_state(self) -> dict[str, Any]:
        return {}

    def set_json_state(self, state: dict[str, Any]) -> None:
        pass

    # -- persistence ----------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        if self.method is None:
            raise ValueError("only a probe made by assay.probes.make_probe can be saved (it names its method)")
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state().items()}
        with atomic_path(path / WEIGHTS_FILE) as tmp:
            save_file(tensors, str(tmp))
        write_json(path / CONFIG_FILE, {
            "format": FORMAT_VERSION, "method": self.method, "inputs": self.inputs,
            "config": dataclasses.asdict(self.config), "meta": self.meta, "state": self.json_state(),
            "assay_version": __version__,
        })
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Probe":
        return load_probe(path)

    def __repr__(self) -> str:
        return f"{type(self).__name__}[{self.method}]({self.config})"


def config_from_dict(config_cls: type, d: dict[str, Any]) -> Any:
    names = {f.name for f in dataclasses.fields(config_cls)}
    # JSON turns tuples into lists; the dataclasses here accept either
    return config_cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in names})


def load_probe(path: str | Path, device: torch.device | str | None = None,
               sha256: dict[str, str] | None = None) -> Probe:
    """Load any probe saved by `Probe.save`, whatever its method. Its files are read into memory
    (not memory-mapped: a file copied over the saved one must not change a loaded probe, nor a
    truncated one crash its reader), and with `sha256` ({file name: hex digest}) the bytes read are
    the bytes checked. A tensor that is not finite is refused: such a probe scores NaN, which no
    threshold flags."""
    from safetensors import SafetensorError
    from safetensors.torch import load as load_bytes

    from assay.errors import ConfigMismatchError, InputError
    from assay.probes.methods import METHODS

    path = Path(path)
    if not (path / CONFIG_FILE).is_file():
        raise InputError(f"{path} is not a saved probe (no {CONFIG_FILE})")
    try:
        raw = {name: (path / name).read_bytes() for name in (CONFIG_FILE, WEIGHTS_FILE)}
    except OSError as err:
        raise ConfigMismatchError(f"{path}: the saved probe cannot be read ({err}); train it again") from None
    for name, want in (sha256 or {}).items():
        got = hashlib.sha256(raw.get(name, b"")).hexdigest()
        if got != want:
            raise ConfigMismatchError(f"{path / name} has sha256 {got[:16]}..., not the {str(want)[:16]}... recorded "
                                      "for it: the probe changed after it was saved; restore it or build again")
    try:
        spec = json.loads(raw[CONFIG_FILE].decode("utf-8"))
        method = METHODS.get(spec.get("method")) if isinstance(spec, dict) else None
    except (ValueError, TypeError) as err:
        raise ConfigMismatchError(f"{path / CONFIG_FILE} is malformed ({err}); train the probe again") from None
    if method is None:
        found = spec.get("method", spec.get("kind")) if isinstance(spec, dict) else None
        raise ConfigMismatchError(f"{path}: unknown probe method {found!r} (a probe saved by an older assay names a "
                                  f"class kind instead); known: {', '.join(METHODS)}. Train the probe again")
    try:
        probe = method.probe(config_from_dict(method.probe.Config, spec["config"]))
        probe.method, probe.inputs = method.name, spec.get("inputs")
        probe.meta = spec.get("meta", {})
        probe.set_json_state(spec.get("state") or {})
        tensors = load_bytes(raw[WEIGHTS_FILE])
        bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if bad:
            raise ValueError(f"tensors {bad} hold NaN or infinite values")
        probe.set_state({k: v.to(device) if device else v for k, v in tensors.items()})
    except (OSError, SafetensorError, KeyError, TypeError, ValueError, RuntimeError) as err:
        raise ConfigMismatchError(f"{path}: the saved {method.name} probe is incomplete or does not match "
                                  f"{CONFIG_FILE} ({type(err).__name__}: {err}); train it again") from None
    return probe


def probe_sha256(path: str | Path) -> dict[str, str]:
    """{file name: sha256} of a saved probe's two files, for `load_probe(sha256=...)`."""
    path = Path(path)
    return {name: hashlib.sha256((path / name).read_bytes()).hexdigest() for name in (CONFIG_FILE, WEIGHTS_FILE)}
