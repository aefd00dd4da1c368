"""Aggregations: which of a prompt's tokens a probe reads, and how they become one vector.

An aggregation is named `"{mask}.{pool}"`: mask `all` (every real token: the template and the
user's words, never BOS), `user` (the user's words), `lastN` (the last N real tokens), pooled by
`mean`, `max` (per dimension, over tokens, before any probe) or `last`; or `"resp-K"`, the single
real token K positions before the first response token (GDM found -5, Gemma's `<end_of_turn>`
after the user's text, about as good as max-pooling). The same names key the activation cache's
pooled matrices, and `pool_tokens` computes the same thing from per-token tensors (SAE latents
encoded per token, then pooled), so a pooled probe and an SAE probe on one aggregation read the
same tokens.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from assay.errors import InputError
from assay.models.chat import Role

POOLS = ("mean", "max", "last")
DEFAULT_AGGREGATIONS = (
    "all.mean", "all.max", "all.last",
    "user.mean", "user.max", "user.last",
    "last8.mean", "resp-5",
)
_MASK = re.compile(r"^(all|user|last(\d+))$")
_RESP = re.compile(r"^resp-(\d+)$")


@dataclass(frozen=True)
class Aggregation:
    name: str
    mask: str  # all | user | lastN: the tokens pooled over
    pool: str  # mean | max | last | offset (one position relative to the first response token)
    offset: int = 0  # only for pool == "offset"

    @classmethod
    def parse(cls, name: "str | Aggregation") -> "Aggregation":
        if isinstance(name, Aggregation):
            return name
        if m := _RESP.match(name):
            if int(m.group(1)) < 1:
                raise InputError(f"aggregation {name!r}: the offset must be at least 1")
            return cls(name, "all", "offset", -int(m.group(1)))
        mask, _, pool = name.partition(".")
        if not _MASK.match(mask) or pool not in POOLS:
            raise InputError(
                f"unknown aggregation {name!r}: use '<mask>.<pool>' with mask all|user|lastN and pool "
                f"{'|'.join(POOLS)}, or 'resp-K' (K tokens before the response)"
            )
        return cls(name, mask, pool)

    @property
    def pools_single_token(self) -> bool:
        """True when one token is selected (last, resp-K): then pooling commutes with any per-token
        map, e.g. an SAE, so encoding the pooled vector is exact."""
        return self.pool in ("last", "offset")

    def __str__(self) -> str:
        return self.name


def real_tokens(roles: torch.Tensor) -> torch.Tensor:
    """The tokens every mask draws from: all but BOS (an attention sink with a huge norm) and
    padding (role -1). The one definition, for extraction, the cache and SAE pooling alike."""
    return roles > Role.SPECIAL


def token_mask(mask: str, roles: torch.Tensor) -> torch.Tensor:
    """Boolean [b, T] mask of `mask`'s tokens in a right-padded batch of roles."""
    real = real_tokens(roles)
    if mask == "all":
        return real
    if mask == "user":
        return roles == Role.USER
    if (m := _MASK.match(mask)) and m.group(2):
        return real & (real.cumsum(1) > real.sum(1, keepdim=True) - int(m.group(2)))
    raise ValueError(f"unknown mask {mask!r}")


def pool(h: torch.Tensor, m: torch.Tensor, how: str) -> torch.Tensor:
    """Pool [b, T, d] over the tokens in mask [b, T]; an example with an empty mask gets zeros."""
    if how == "last":
        idx = (m * torch.arange(1, m.shape[1] + 1, device=m.device)).argmax(1)
        out = h[torch.arange(h.shape[0], device=h.device), idx]
    elif how == "mean":
        out = (h * m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp(min=1)
    elif how == "max":
        out = h.masked_fill(~m[..., None], float("-inf")).amax(1)
    else:
        raise ValueError(f"unknown pooling {how!r}")
    return torch.where(m.any(1, keepdim=True), out, torch.zeros_like(out))


def pool_tokens(x: torch.Tensor, mask: torch.Tensor, agg: "Aggregation | str") -> torch.Tensor:
    """Pool `x [n, T, d]` over the positions where `mask [n, T]` (already `agg.mask`'s tokens) is
    true -> `[n, d]`. For `offset` the selected tokens are the prompt's real tokens, so the token
    `-offset` before the response is the one of rank `count + offset` among them (clamped to the
    first). Rows with no selected token pool to zeros."""
    agg = Aggregation.parse(agg)
    m = mask.to(torch.bool)
    if agg.pool != "offset":
        return pool(x, m, agg.pool)
    rank = m.cumsum(1) - 1
    target = (m.sum(1) + agg.offset).clamp(min=0)
    return pool(x, m & (rank == target.unsqueeze(1)), "last")


def pool_roles(h: torch.Tensor, roles: torch.Tensor, aggregations: list[Aggregation]) -> dict[str, torch.Tensor]:
    """Every aggregation of one batch `h [b, T, d]` with its `roles [b, T]`, in float32."""
    h = h.float()
    masks: dict[str, torch.Tensor] = {}
    out = {}
    for a in aggregations:
        if a.mask not in masks:
            masks[a.mask] = token_mask(a.mask, roles)
        out[a.name] = pool_tokens(h, masks[a.mask], a)
    return out
