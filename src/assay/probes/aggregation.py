"""Aggregations: how a prompt's per-token activations become one vector before a pooled probe.

A name is `"{mask}.{pool}"` (mask: `all` every non-special token, `user` user content, `lastN` the
last N tokens; pool: `mean`, `max` (per dimension, before the probe), `last`) or `"resp-K"`, the
single position K tokens before the first response token (GDM: resp-5). These are the feature
names of the activation cache, so for a pooled probe the aggregation is simply which precomputed
matrix it is given; `pool_tokens` computes the same thing from per-token tensors (e.g. SAE latents
encoded per token, then pooled).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

MASKS = ("all", "user", "lastN")
POOLS = ("mean", "max", "last")
_MASK = re.compile(r"^(all|user|last\d+)$")
_RESP = re.compile(r"^resp-(\d+)$")


@dataclass(frozen=True)
class Aggregation:
    mask: str
    pool: str  # mean | max | last | offset
    offset: int = 0  # only for pool == "offset": position relative to the first response token

    @classmethod
    def parse(cls, name: str) -> "Aggregation":
        if m := _RESP.match(name):
            if int(m.group(1)) < 1:
                raise ValueError(f"aggregation {name!r}: the offset must be at least 1")
            return cls(mask="all", pool="offset", offset=-int(m.group(1)))
        mask, _, pool = name.partition(".")
        if not _MASK.match(mask) or pool not in POOLS:
            raise ValueError(
                f"unknown aggregation {name!r}: use '<mask>.<pool>' with mask in {MASKS} and pool in "
                f"{POOLS}, or 'resp-K' (K tokens before the response)"
            )
        return cls(mask=mask, pool=pool)

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
    count = m.sum(1)
    if agg.pool == "mean":
        return (x * m.unsqueeze(-1)).sum(1) / count.clamp(min=1).unsqueeze(-1).to(x.dtype)
    if agg.pool == "max":
        out = x.masked_fill(~m.unsqueeze(-1), float("-inf")).amax(1)
        return torch.where(count.unsqueeze(-1) > 0, out, torch.zeros_like(out))
    # positions counted within the selected tokens, so right padding and a dropped BOS don't matter
    rank = m.cumsum(1) - 1
    target = count - 1 if agg.pool == "last" else (count + agg.offset).clamp(min=0)
    hit = m & (rank == target.unsqueeze(1))
    return (x * hit.unsqueeze(-1)).sum(1)
