"""Features for SAE probes: latents `Z` or the reconstruction `x_hat`, pooled like activations.

Any object with `encode(x [m, d]) -> z [m, d_sae]` and `decode(z) -> x_hat [m, d]` works. For
per-token input the SAE sees each token (as it was trained to), and the pooling comes after, so
`all.max` latents are the max over tokens of each latent. A "probe on the SAE reconstruction" is a
dense probe (e.g. `LogisticProbe`) fitted on `sae_features(..., what="reconstruction")`.
"""

from __future__ import annotations

from typing import Literal, Protocol, Sequence

import torch

from assay.probes.aggregation import Aggregation, pool_tokens


class SAELike(Protocol):
    def encode(self, x: torch.Tensor) -> torch.Tensor: ...
    def decode(self, z: torch.Tensor) -> torch.Tensor: ...


def _device(sae: SAELike, fallback: torch.Tensor) -> torch.device:
    params = getattr(sae, "parameters", None)
    return next(iter(params()), fallback).device if callable(params) else fallback.device


@torch.no_grad()
def encode_pooled(
    sae: SAELike, x: torch.Tensor, mask: torch.Tensor, aggregations: Sequence[Aggregation | str],
    *, reconstruction: bool = False,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    """Encode the real tokens of `x [n, T, d]` (where `mask`), then pool the latents by every
    aggregation -> `{name: [n, d_sae]}`; with `reconstruction`, the decoded tokens pooled too.
    Padding is never encoded: at prompts of mixed length it would be most of the work."""
    m = mask.to(torch.bool)
    z_real = sae.encode(x[m].to(_device(sae, x)))
    z = torch.zeros(*m.shape, z_real.shape[-1])
    z[m] = z_real.float().cpu()
    names = [str(a) if isinstance(a, Aggregation) else a for a in aggregations]
    latents = {name: pool_tokens(z, m, name) for name in names}
    if not reconstruction:
        return latents, None
    r = torch.zeros(x.shape, dtype=torch.float32)
    r[m] = sae.decode(z_real).float().cpu()
    return latents, {name: pool_tokens(r, m, name) for name in names}


@torch.no_grad()
def sae_features(
    sae: SAELike,
    x: torch.Tensor,
    mask: torch.Tensor | None = None,
    aggregation: Aggregation | str | None = None,
    *,
    what: Literal["latents", "reconstruction"] = "latents",
    batch: int = 64,
) -> torch.Tensor:
    """`x [n, d]` (already pooled) -> `[n, d_sae | d]`; or `x [n, T, d]` + `mask` + `aggregation`
    -> encoded per token, then pooled. Batched over examples to bound memory."""
    if x.ndim == 2:
        device = _device(sae, x)
        out = []
        for i in range(0, len(x), batch):
            z = sae.encode(x[i : i + batch].to(device))
            out.append((z if what == "latents" else sae.decode(z)).float().to(x.device))
        return torch.cat(out)
    if mask is None or aggregation is None:
        raise ValueError("per-token input needs a mask and an aggregation")
    name = str(aggregation)
    out = []
    for i in range(0, len(x), batch):
        latents, recon = encode_pooled(sae, x[i : i + batch], mask[i : i + batch], [name],
                                       reconstruction=what == "reconstruction")
        out.append((recon if what == "reconstruction" else latents)[name])
    return torch.cat(out)
