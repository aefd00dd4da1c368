"""Does a saved SAE fit the activations it is about to read? Checked before any are encoded."""

from __future__ import annotations

from typing import Any

from assay.errors import ConfigMismatchError


def sae_layer(sae: Any) -> int | None:
    """The residual-stream layer an SAE was trained on, from its metadata (assay or SAELens)."""
    meta = getattr(sae, "metadata", {}) or {}
    if meta.get("assay_layer") is not None:
        return int(meta["assay_layer"])
    parts = str(meta.get("hook_name") or "").split(".")
    return int(parts[1]) if len(parts) > 2 and parts[0] == "blocks" and parts[1].isdigit() else None


def check_sae_fits(sae: Any, d_model: int, layer: int, where: str) -> None:
    """Refuse an SAE whose input width is not the model's, or that was trained on another layer
    (its latents would be computed, and mean nothing)."""
    if sae.cfg.d_in != d_model:
        raise ConfigMismatchError(f"SAE {where} reads {sae.cfg.d_in}-dimensional activations but this model's "
                                  f"residual stream has {d_model}: it was trained on another model")
    trained = sae_layer(sae)
    if trained is not None and trained != layer:
        raise ConfigMismatchError(f"SAE {where} was trained on layer {trained}, not {layer}: pass --layer {trained} "
                                  "or an SAE of this layer")
