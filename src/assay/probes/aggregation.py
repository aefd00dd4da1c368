"""Aggregations: how a prompt's per-token activations become one vector before a pooled probe.

A name is `"{mask}.{pool}"` (mask: `all` every non-special token, `user` user content, `lastN` the
last N tokens; pool: `mean`, `max` (per dimension, before the probe), `last`) or `"resp-K"`, the
single position K tokens before the first response token (GDM: resp-5). These are the feature
names of the activation cache, so for a pooled probe the aggregation is simply which precomputed
matrix it is given; `pool_tokens` computes the same thing from per-token tensors (e.g. SAE latents
encoded per token, then pooled).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from assay.activations.features import Feature, pool

MASKS = ("all", "user", "lastN")
POOLS = ("mean", "max", "last")


@dataclass(frozen=True)
class Aggregation:
    mask: str
    pool: str  # mean | max | last | offset
    offset: int = 0  # only for pool == "offset": position relative to the first response token

    @classmethod
    def parse(cls, name: str) -> "Aggregation":
        """One grammar for the cache's feature names and the probes' aggregations."""
        f = Feature.parse(name)
        if f.pool is None:  # resp-K
            return cls(mask="all", pool="offset", offset=-int(name.removeprefix("resp-")))
        return cls(mask=f.mask, pool=f.pool)

    @property
    def pools_single_token(self) -> bool:
        """True when one token is selected (last, resp-K): then pooling commutes with any per-token
        map, e.g. an SAE, so encoding the pooled vector is exact."""
        return self.pool in ("last", "offset")

    @property
    def name(self) -> str:
        return f"resp{self.offset:d}" if self.pool == "offset" else f"{self.mask}.{self.pool}"

    def __str__(self) -> str:
        return self.name


def pool_tokens(x: torch.Tensor, mask: torch.Tensor, agg: Aggregation | str) -> torch.Tensor:
    """Pool `x [n, T, d]` over the positions where `mask [n, T]` is true -> `[n, d]`.

    `mask` must already select `agg.mask`'s tokens (the cache's `token_batch(mask=...)` does).
    For `offset`, the selected tokens must be the prompt's contiguous run ending right before the
    response (mask `all`), so position `count + offset` is `-offset` tokens before the response.
    Rows with no selected token pool to zeros.
    """
    agg = Aggregation.parse(agg) if isinstance(agg, str) else agg
    m = mask.to(torch.bool)
    if agg.pool != "offset":
        return pool(x, m, agg.pool)
    # positions counted within the selected tokens, so right padding and a dropped BOS don't matter
    rank = m.cumsum(1) - 1
    target = (m.sum(1) + agg.offset).clamp(min=0)
    return pool(x, m & (rank == target.unsqueeze(1)), "last")
