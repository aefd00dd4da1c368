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
from assay.errors import ConfigMismatchError, InputError
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
    """Load an SAE written by assay or by SAELens (standard, topk, jumprelu, gated). What cfg.json
    claims is checked against the weights: an edited or mixed-up file is refused, not loaded as
    something it is not."""
    path = Path(path)
    cfg, tensors = _read_files(path)
    meta = _metadata(path, cfg)
    if cfg.get("normalize_activations", "none") not in ("none", "expected_average_only_in", False, None):
        raise InputError(f"{path}: normalize_activations={cfg['normalize_activations']!r} is not supported")
    sae, tensors = _build(path, cfg, meta, tensors)
    _check_claims(path, cfg, meta, sae, tensors)
    target = resolve_dtype(dtype or cfg.get("dtype", "float32"))
    tensors = {k: v.to(sae.W_enc.dtype) for k, v in tensors.items()}
    try:
        sae.load_inference_state(tensors, cfg)
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise ConfigMismatchError(f"{path / CFG_FILE} does not fit {WEIGHTS_FILE} ({type(err).__name__}: {err}); "
                                  "restore it or train the SAE again") from None
    sae.metadata = meta
    sae.raw_space = True
    sae.cfg.dtype = dtype_name(target)
    return sae.to(device=device or "cpu", dtype=target).eval()


def _metadata(path: Path, cfg: dict[str, Any]) -> dict[str, Any]:
    meta = cfg.get("metadata") or {}
    if not isinstance(meta, dict):
        raise ConfigMismatchError(f"{path / CFG_FILE}: metadata is not a JSON object; restore it or train the SAE again")
    meta = dict(meta)
    for key in ("hook_name", "model_name"):  # pre-6.0 files keep these at the top level
        if meta.get(key) is None and cfg.get(key) is not None:
            meta[key] = cfg[key]
    return meta


def _build(path: Path, cfg: dict[str, Any], meta: dict[str, Any],
           tensors: dict[str, torch.Tensor]) -> tuple[SAE, dict[str, torch.Tensor]]:
    """An empty SAE of the architecture and sizes the config names (assay's own metadata first,
    else SAELens's fields), and the weights in the form it loads."""
    arch = cfg.get("architecture", "standard")
    own = meta.get("assay")
    mine = isinstance(own, dict) and isinstance(own.get("architecture"), str) and _registered(own["architecture"])
    if not mine and arch not in _FROM_SAELENS:
        raise InputError(f"{path}: SAELens architecture {arch!r} is not supported; "
                         f"supported: {', '.join(sorted(_FROM_SAELENS))}")
    try:
        if mine:
            sae = build_sae(own["architecture"], **{**own["config"], "device": "cpu"})
        else:
            kw = {"d_in": cfg["d_in"], "d_sae": cfg["d_sae"], "apply_b_dec_to_input": cfg.get("apply_b_dec_to_input", True)}
            if arch == "topk":
                kw["k"] = int(cfg.get("k") or cfg.get("activation_fn_kwargs", {}).get("k"))
            sae = build_sae(_FROM_SAELENS[arch], **kw)
            tensors = _from_saelens_tensors(arch, cfg, tensors)
    except (KeyError, TypeError, ValueError, AttributeError) as err:  # InputError included: settings no SAE can have
        raise ConfigMismatchError(f"{path / CFG_FILE}: malformed SAE config ({err}); restore it or train the SAE "
                                  "again") from None
    if mine and arch != sae.saelens_architecture:
        raise ConfigMismatchError(f"{path / CFG_FILE}: architecture {arch!r} disagrees with its assay "
                                  f"metadata ({sae.architecture}, saved as {sae.saelens_architecture!r})")
    return sae, tensors


def _read_files(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    from safetensors import SafetensorError

    if not (path / CFG_FILE).is_file():
        raise InputError(f"{path} is not a saved SAE (no {CFG_FILE}); pass a directory written by `assay sae train` "
                         "or SAELens")
    try:
        cfg = read_json(path / CFG_FILE)
    except (ValueError, UnicodeDecodeError) as err:
        raise ConfigMismatchError(f"{path / CFG_FILE} is not valid JSON ({err}); restore it or train the SAE again") from None
    if not isinstance(cfg, dict):
        raise ConfigMismatchError(f"{path / CFG_FILE} is not a JSON object; restore it or train the SAE again")
    if not (path / WEIGHTS_FILE).is_file():
        raise InputError(f"{path} has no {WEIGHTS_FILE}; the SAE was not saved completely")
    try:
        tensors = load_file(str(path / WEIGHTS_FILE))
    except SafetensorError as err:
        raise ConfigMismatchError(f"{path / WEIGHTS_FILE} is damaged ({err}); train the SAE again") from None
    return cfg, tensors


def _check_claims(path: Path, cfg: dict[str, Any], meta: dict[str, Any], sae: SAE, tensors: dict[str, torch.Tensor]) -> None:
    """What cfg.json claims (sizes, architecture, layer) against what the weights hold: an edited or
    mixed-up file must not load as something it is not."""
    where = path / CFG_FILE
    for key in ("d_in", "d_sae"):
        if key in cfg and cfg[key] != getattr(sae.cfg, key):
            raise ConfigMismatchError(f"{where}: {key} {cfg[key]!r} disagrees with its assay metadata "
                                      f"({getattr(sae.cfg, key)})")
    _, _, expected = sae.inference_state()
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise ConfigMismatchError(f"{where}: a {sae.architecture} SAE has tensors {sorted(expected)}, but "
                                  f"{WEIGHTS_FILE} holds {sorted(tensors)}: cfg.json does not describe these weights")
    for name, t in expected.items():
        if tuple(tensors[name].shape) != tuple(t.shape):
            raise ConfigMismatchError(f"{where}: {name} should be {tuple(t.shape)} for d_in {sae.cfg.d_in}, d_sae "
                                      f"{sae.cfg.d_sae}, but {WEIGHTS_FILE} holds {tuple(tensors[name].shape)}")
    bad = [name for name, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:  # NaN weights give NaN latents, and every score from them is meaningless
        raise ConfigMismatchError(f"{path / WEIGHTS_FILE}: {', '.join(sorted(bad))} hold NaN or infinite values; "
                                  "the SAE diverged or the file is damaged: train it again")
    layer = meta.get("assay_layer")
    if layer is not None and (isinstance(layer, bool) or not isinstance(layer, int) or layer < 0):
        raise ConfigMismatchError(f"{where}: metadata assay_layer {layer!r} is not a layer number; fix it")
    hook = str(meta.get("hook_name") or "").split(".")
    if layer is not None and len(hook) > 2 and hook[0] == "blocks" and hook[1].isdigit() and int(hook[1]) != layer:
        raise ConfigMismatchError(f"{where}: metadata names layer {meta['assay_layer']} (assay_layer) and "
                                  f"{meta['hook_name']} (hook_name); fix the one that is wrong")


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
