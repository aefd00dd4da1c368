"""What a model is, read from its config alone: lets commands check a layer before loading weights."""

from __future__ import annotations

from pathlib import Path

from assay.errors import InputError


def n_layers(name: str, revision: str | None = None) -> int | None:
    """Decoder blocks of model `name` from its config.json, or None where that is not cheap to read
    (a GGUF file not yet converted, a Hub id not in the local cache): `load` then checks."""
    from assay.models.bundled import _BUNDLED
    from assay.models.load_errors import _load_errors
    from assay.models.loaded_model import config_file_fields
    from assay.models.resolve import _resolve

    path = Path(name).expanduser()
    if name in _BUNDLED:
        source = _resolve(name, revision)[0]  # converted once; later calls only look it up
    elif path.is_dir() and (path / "config.json").is_file():
        source = str(path)
    else:
        return None
    if (fields := config_file_fields(Path(source))) is not None:
        return fields["n_layers"]  # without importing transformers' model registry (seconds)
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(source)
    except _load_errors():  # `load` reports these with the model's name
        return None
    return getattr(config.get_text_config(), "num_hidden_layers", None)


def check_layers(name: str, layers: list[int]) -> None:
    """Refuse layers outside the model before anything expensive runs."""
    bad = [layer for layer in layers if layer < 0]
    n = n_layers(name) if not bad else None
    bad += [layer for layer in layers if n is not None and layer >= n]
    if bad:
        span = f": this model has {n} blocks, so layers run 0..{n - 1}" if n else " (layers count from 0)"
        raise InputError(f"layer {bad[0]} is out of range{span}; layer L is the residual stream after block L")
