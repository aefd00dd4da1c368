"""Re-initialise a fraction of an SAE's latents before finetuning it on new data (e.g. chat).

The chosen latents get a fresh random decoder row (at the mean norm of the others), the matching
encoder column (scaled like the others), zero encoder biases and, for JumpReLU, the initial
threshold. "least_used" picks the latents that fire least on a sample of the new data, so the
finetune keeps what transfers and spends the freed capacity on what the new data needs.
"""

from __future__ import annotations

import torch

from assay.sae.base import SAE


@torch.no_grad()
def resample_latents_(sae: SAE, fraction: float, how: str = "random", freq: torch.Tensor | None = None,
                      seed: int = 0) -> torch.Tensor:
    """Re-init `fraction` of latents in place; returns their indices."""
    n = int(round(fraction * sae.cfg.d_sae))
    if n <= 0:
        return torch.empty(0, dtype=torch.long)
    gen = torch.Generator().manual_seed(seed)
    if how == "random":
        idx = torch.randperm(sae.cfg.d_sae, generator=gen)[:n]
    elif how == "least_used":
        if freq is None:
            raise ValueError("how='least_used' needs the latents' firing frequencies")
        noise = torch.rand(sae.cfg.d_sae, generator=gen) * 1e-9  # break ties among dead latents at random
        idx = torch.argsort(freq.float().cpu() + noise)[:n]
    else:
        raise ValueError(f"how must be 'random' or 'least_used', not {how!r}")
    dev = sae.W_dec.device
    idx_d = idx.to(dev)
    dec_norm = sae.W_dec.norm(dim=1).mean()
    enc_norm = sae.W_enc.norm(dim=0).mean()
    rows = torch.nn.functional.normalize(torch.randn(n, sae.cfg.d_in, generator=gen), dim=1).to(dev, sae.W_dec.dtype)
    sae.W_dec[idx_d] = rows * dec_norm
    sae.W_enc[:, idx_d] = rows.T * enc_norm
    for name in ("b_enc", "b_gate", "b_mag", "r_mag"):
        if hasattr(sae, name):
            getattr(sae, name)[idx_d] = 0.0
    if isinstance(getattr(sae, "threshold", None), torch.nn.Parameter) and sae.threshold.ndim == 1:
        sae.threshold[idx_d] = getattr(sae.cfg, "init_threshold", 0.0)
    return idx
