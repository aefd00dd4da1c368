"""Features for SAE probes: latents `Z` or the reconstruction `x_hat`, pooled like activations.

Any object with `encode(x [m, d]) -> z [m, d_sae]` and `decode(z) -> x_hat [m, d]` works. For
per-token input the SAE sees each token (as it was trained to), and the pooling comes after, so
`all.max` latents are the max over tokens of each latent. A "probe on the SAE reconstruction" is a
dense probe (e.g. `LogisticProbe`) fitted on `sae_features(..., what="reconstruction")`.
"""

from __future__ import annotations

from typing import Literal, Protocol

import torch

from assay.probes.aggregation import Aggregation, pool_tokens


class SAELike(Protocol):
    def encode(self, x: torch.Tensor) -> torch.Tensor: ...
    def decode(self, z: torch.Tensor) -> torch.Tensor: ...


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

    params = getattr(sae, "parameters", None)
    device = next(iter(params()), x).device if callable(params) else x.device

    def transform(v: torch.Tensor) -> torch.Tensor:  # on the SAE's device, back on x's
        z = sae.encode(v.to(device))
        return (z if what == "latents" else sae.decode(z)).to(x.device)

    if x.ndim == 2:
        return torch.cat([transform(x[i : i + batch]).float() for i in range(0, len(x), batch)])
    if mask is None or aggregation is None:
        raise ValueError("per-token input needs a mask and an aggregation")
    out = []
    for i in range(0, len(x), batch):
        xb, mb = x[i : i + batch], mask[i : i + batch].bool()
        n, T, d = xb.shape
        flat = transform(xb.reshape(n * T, d)).float()
        out.append(pool_tokens(flat.reshape(n, T, -1), mb, aggregation))
    return torch.cat(out)
