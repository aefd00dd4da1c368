"""SAELens-compatible files: `cfg.json` + `sae_weights.safetensors`.

Written in SAELens's v6 layout: the inference architecture (`standard`, `topk`, `jumprelu`,
`gated`; BatchTopK and Matryoshka become `jumprelu` with their global threshold), SAELens's
config fields, and a `metadata` block with `hook_name`, `model_name`, ... . `metadata.assay` keeps
our training architecture and config, so assay reloads e.g. a BatchTopK SAE as BatchTopK for
finetuning while SAELens sees a JumpReLU. Weights are stored in raw activation space (the
trainer folds its input scale in first), so `normalize_activations` is "none".
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from assay import __version__
from assay.fileio import atomic_path, read_json, write_json
from assay.runtime import dtype_name, resolve_dtype
from assay.sae.base import ARCHITECTURES, SAE, build_sae

log = logging.getLogger(__name__)

CFG_FILE, WEIGHTS_FILE = "cfg.json", "sae_weights.safetensors"
# The SAELens cfg layout these files follow (>= 6.0 puts hook/model names under `metadata`).
SAELENS_FORMAT_VERSION = "6.0.0"
_FROM_SAELENS = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu", "gated": "gated"}


def save_sae(sae: SAE, path: str | Path, metadata: dict[str, Any] | None = None) -> Path:
    """Write `sae` (weights acting on raw activations) where SAELens's `SAE.load_from_disk` reads it."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    arch, extra, tensors = sae.inference_state()
    meta = {**getattr(sae, "metadata", {}), **(metadata or {})}
    meta.setdefault("hook_name", None)
    meta.setdefault("model_name", None)
    meta.setdefault("hook_head_index", None)
    meta.setdefault("prepend_bos", True)
    meta.update({
        "sae_lens_version": SAELENS_FORMAT_VERSION,
        "sae_lens_training_version": None,
        "training_architecture": sae.architecture,
        "assay": {"version": __version__, "architecture": sae.architecture, "config": sae.cfg.to_dict()},
    })
    cfg = {
        "architecture": arch,
        "d_in": sae.cfg.d_in,
        "d_sae": sae.cfg.d_sae,
        "dtype": dtype_name(sae.W_enc.dtype),
        "device": "cpu",
        "apply_b_dec_to_input": sae.cfg.apply_b_dec_to_input,
        "normalize_activations": "none",
        "reshape_activations": "none",
        **extra,
        "metadata": meta,
        # Flat copies for readers of the pre-6.0 layout; SAELens >= 6 ignores unknown top-level keys.
        "hook_name": meta["hook_name"],
        "model_name": meta["model_name"],
    }
    with atomic_path(path / WEIGHTS_FILE) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
    write_json(path / CFG_FILE, cfg)
    return path


def load_sae(path: str | Path, device: str | torch.device | None = None, dtype: str | None = None) -> SAE:
    """Load an SAE written by assay or by SAELens (standard, topk, jumprelu, gated)."""
    path = Path(path)
    cfg = read_json(path / CFG_FILE)
    tensors = load_file(str(path / WEIGHTS_FILE))
    meta = dict(cfg.get("metadata") or {})
    for key in ("hook_name", "model_name"):  # pre-6.0 files keep these at the top level
        if meta.get(key) is None and cfg.get(key) is not None:
            meta[key] = cfg[key]
    if cfg.get("normalize_activations", "none") not in ("none", "expected_average_only_in", False, None):
        raise NotImplementedError(f"normalize_activations={cfg['normalize_activations']!r} is not supported")
    arch = cfg.get("architecture", "standard")
    own = meta.get("assay")
    if own and _registered(own["architecture"]):
        sae = build_sae(own["architecture"], **{**own["config"], "device": "cpu"})
    else:
        if arch not in _FROM_SAELENS:
            raise NotImplementedError(f"SAELens architecture {arch!r} is not supported")
        kw = {"d_in": cfg["d_in"], "d_sae": cfg["d_sae"], "apply_b_dec_to_input": cfg.get("apply_b_dec_to_input", True)}
        if arch == "topk":
            kw["k"] = int(cfg.get("k") or cfg.get("activation_fn_kwargs", {}).get("k"))
        sae = build_sae(_FROM_SAELENS[arch], **kw)
        tensors = _from_saelens_tensors(arch, cfg, tensors)
    target = dtype or cfg.get("dtype", "float32")
    tensors = {k: v.to(sae.W_enc.dtype) for k, v in tensors.items()}
    sae.load_inference_state(tensors, cfg)
    sae.metadata = meta
    sae.raw_space = True
    sae.cfg.dtype = dtype_name(resolve_dtype(target))
    return sae.to(device=device or "cpu", dtype=resolve_dtype(target)).eval()


def _registered(name: str) -> bool:
    import assay.sae.architectures  # noqa: F401

    return name in ARCHITECTURES


def _from_saelens_tensors(arch: str, cfg: dict[str, Any], t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    t = dict(t)
    if "log_threshold" in t:  # older JumpReLU checkpoints
        t["threshold"] = t.pop("log_threshold").exp()
    t.pop("scaling_factor", None)  # always 1 in files SAELens still loads without finetuning
    if arch == "topk" and cfg.get("rescale_acts_by_decoder_norm"):
        # Fold the decoder norms in, as SAELens does on saving: the top-k choice is unchanged.
        norm = t["W_dec"].norm(dim=1)
        t["W_dec"] = t["W_dec"] / norm[:, None]
        t["W_enc"] = t["W_enc"] * norm[None, :]
        t["b_enc"] = t["b_enc"] * norm
    return t
