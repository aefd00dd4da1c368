"""`load(name)`: an HF model id, a local directory, a GGUF file, or the bundled Gemma 3 270M.

GGUF files are dequantised once by transformers (about 40 s for the bundled model and its tokenizer
on a 2-core CPU, with `gguf_reading`'s speed-ups) and saved as safetensors under
`cache_dir()/models/<sha256>/`; later loads read that copy and take a few seconds.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch
from torch import nn

from assay.errors import InputError
from assay.models.bundled import DEFAULT_MODEL
from assay.models.fingerprints import _tokenizer_hash_from_files, tokenizer_hash
from assay.models.load_errors import ModelLoadError, _gist, _load_errors
from assay.models.loaded_model import LoadedModel, _fields_of, config_file_fields, decoder_blocks
from assay.models.resolve import _resolve
from assay.runtime import default_device, dtype_name, resolve_dtype

# Re-exported: callers (assay.experiment, assay.monitor, assay.sae) import these from here.
from assay.models.background import converted_meanwhile  # noqa: F401
from assay.models.loaded_model import check_layer  # noqa: F401


def load(
    name: str = DEFAULT_MODEL,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device | None = None,
    revision: str | None = None,
    device_map: str | dict[str, Any] | None = None,
    lazy: bool = False,
) -> LoadedModel:
    """Load a causal LM and its tokenizer for extraction (eval mode, no grad).

    `device_map` (e.g. "auto") spreads a model that does not fit one device over the GPUs through
    accelerate, instead of moving it to `device`; inputs go to the embedding's device and each
    captured layer comes back there, and the forward still stops after the deepest layer needed.

    `lazy=True` reads only the config now and the weights when first used; the tokenizer too, where
    the fingerprint can be had without it: a local directory (the bundled model's included) whose
    files hold a tokenizer.json and no chat template. Elsewhere the tokenizer is read now."""
    if device_map is not None and device is not None:
        raise InputError("give a device or a device_map, not both (a device_map places every layer itself)")
    torch_dtype = resolve_dtype(dtype)
    device = torch.device(device) if device is not None else default_device()
    source, fingerprint = _resolve(name, revision)
    offline = {"local_files_only": True} if fingerprint.pop("_offline", False) else {}
    placed = {"device_map": device_map} if device_map is not None else {}

    def load_model() -> nn.Module:
        model = _model_from_pretrained(name, source, dtype=torch_dtype, model_kwargs=placed, revision=revision,
                                       **offline)
        if device_map is None:
            model.to(device)
        return model.eval().requires_grad_(False)

    def load_tokenizer(config: Any) -> Any:
        tokenizer = _tokenizer_from_pretrained(name, source, config, revision=revision, **offline)
        if tokenizer.pad_token_id is None:  # right padding needs a pad id; its value never matters
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        return tokenizer

    if not lazy or device_map is not None:
        model = load_model()  # first: its errors come quicker than a large tokenizer.json loads
        tokenizer = load_tokenizer(model.config)
        if fingerprint.get("revision") is None:
            fingerprint["revision"] = getattr(model.config, "_commit_hash", None)
        fingerprint.update(dtype=dtype_name(torch_dtype), tokenizer=tokenizer_hash(tokenizer))
        return LoadedModel(model=model, tokenizer=tokenizer, name=name, fingerprint=fingerprint)

    @functools.cache
    def load_config() -> Any:  # once, whether the fingerprint, the tokenizer or a caller asks first
        return _config_from_pretrained(name, source, revision=revision, **offline)

    from_files = _tokenizer_hash_from_files(Path(source))
    fields = config_file_fields(Path(source)) if from_files is not None else None
    if fields is None:  # transformers' config now: the revision, the tokenizer or the fields need it
        if fingerprint.get("revision") is None:
            fingerprint["revision"] = getattr(load_config(), "_commit_hash", None)
        fields = _fields_of(load_config())
    tokenizer = load_tokenizer(load_config()) if from_files is None else None  # the fingerprint needs it now
    fingerprint.update(dtype=dtype_name(torch_dtype), tokenizer=from_files or tokenizer_hash(tokenizer))
    return LoadedModel(name=name, fingerprint=fingerprint, load_model=load_model, tokenizer=tokenizer,
                       load_tokenizer=None if tokenizer is not None else lambda: load_tokenizer(load_config()),
                       load_config=load_config, config_fields=fields,
                       device=device, dtype=torch_dtype,
                       no_chat_template=from_files is not None)


def _refused(name: str, err: BaseException) -> ModelLoadError:
    return ModelLoadError(
        f"could not load model {name!r}: {_gist(err)}. Pass a local directory with config.json, "
        f"tokenizer and weights of a causal LM, a .gguf file, an HF model id reachable from this "
        f"machine, or {DEFAULT_MODEL!r} for the bundled default.")


def _model_from_pretrained(name: str, source: str, **kwargs: Any) -> nn.Module:
    """The model, or a ModelLoadError that names the model and what to pass instead."""
    from transformers import AutoModelForCausalLM

    dtype, model_kwargs = kwargs.pop("dtype"), kwargs.pop("model_kwargs", {})
    try:
        model, info = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, output_loading_info=True,
                                                           **model_kwargs, **kwargs)
    except _load_errors() as err:
        raise _refused(name, err) from err
    missing = sorted(info.get("missing_keys") or [])
    if missing:  # transformers fills them with random numbers and only warns
        raise ModelLoadError(
            f"model {name!r}: {len(missing)} weights are missing from its checkpoint (e.g. {missing[0]}) and would "
            f"be random; the weights file is incomplete or belongs to another architecture than config.json says")
    decoder_blocks(model)  # a model assay cannot hook is refused now, not after a long extraction starts
    return model


def _tokenizer_from_pretrained(name: str, source: str, config: Any, **kwargs: Any) -> Any:
    """The tokenizer, checked against the model's vocabulary (`config`)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    except _load_errors() as err:
        raise _refused(name, err) from err
    vocab = getattr(config.get_text_config(), "vocab_size", None)
    if vocab and len(tokenizer) < vocab // 2:
        # transformers builds a stub of a few special tokens when the tokenizer files are missing
        raise ModelLoadError(
            f"model {name!r}: the tokenizer has {len(tokenizer)} tokens but the model's vocabulary has {vocab}; "
            "its tokenizer files (tokenizer.json / tokenizer.model) are missing or belong to another model")
    return tokenizer


def _config_from_pretrained(name: str, source: str, **kwargs: Any) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(source, **kwargs)
    except _load_errors() as err:
        raise _refused(name, err) from err
