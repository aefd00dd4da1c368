"""Token masks and per-example pooling, computed on a padded batch in the extraction pass.

A feature is named `"{mask}.{pool}"`: mask `all` (every token but BOS), `user` (the user's
words), `lastN` (the last N prompt tokens), pooled by `mean`, `max` (per dimension, over tokens,
before any probe) or `last`; or `"resp-K"`, the single token K positions before the first response
token (GDM found -5, Gemma's `<end_of_turn>` after the user's text, about as good as max-pooling).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from assay.errors import InputError
from assay.models.chat import Role

POOLS = ("mean", "max", "last")
DEFAULT_FEATURES = (
    "all.mean", "all.max", "all.last",
    "user.mean", "user.max", "user.last",
    "last8.mean", "resp-5",
)
_MASK = re.compile(r"^(all|user|last(\d+))$")
_RESP = re.compile(r"^resp-(\d+)$")


@dataclass(frozen=True)
class Feature:
    name: str
    mask: str
    pool: str | None  # None for a single position

    @classmethod
    def parse(cls, name: str) -> "Feature":
        if m := _RESP.match(name):
            if int(m.group(1)) < 1:
                raise InputError(f"feature {name!r}: the offset must be at least 1")
            return cls(name, name, None)
        mask, _, pool = name.partition(".")
        if not _MASK.match(mask) or pool not in POOLS:
            raise InputError(
                f"unknown feature {name!r}: use '<mask>.<pool>' with mask all|user|lastN and pool "
                f"{'|'.join(POOLS)}, or 'resp-K' (K tokens before the response)"
            )
        return cls(name, mask, pool)


def token_mask(mask: str, roles: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Boolean [b, T] mask over a right-padded batch; `roles` is -1 on padding."""
    pos = torch.arange(roles.shape[1], device=roles.device)[None, :]
    real = roles > Role.SPECIAL
    if mask == "all":
        return real
    if mask == "user":
        return roles == Role.USER
    if m := _MASK.match(mask):
        if m.group(2):
            return real & (pos >= (lengths[:, None] - int(m.group(2))))
    if m := _RESP.match(mask):
        at = (lengths - int(m.group(1))).clamp(min=0)
        return pos == at[:, None]
    raise ValueError(f"unknown mask {mask!r}")


def pool(h: torch.Tensor, m: torch.Tensor, how: str | None) -> torch.Tensor:
    """Pool [b, T, d] over the tokens in mask [b, T]; an example with an empty mask gets zeros."""
    if how in (None, "last"):
        idx = (m * torch.arange(1, m.shape[1] + 1, device=m.device)).argmax(1)
        out = h[torch.arange(h.shape[0], device=h.device), idx]
    elif how == "mean":
        out = (h * m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp(min=1)
    elif how == "max":
        out = h.masked_fill(~m[..., None], float("-inf")).amax(1)
    else:
        raise ValueError(f"unknown pooling {how!r}")
    return torch.where(m.any(1, keepdim=True), out, torch.zeros_like(out))


def pool_features(
    h: torch.Tensor, roles: torch.Tensor, lengths: torch.Tensor, features: list[Feature]
) -> dict[str, torch.Tensor]:
    """All requested features of one batch, in float32."""
    h = h.float()
    masks: dict[str, torch.Tensor] = {}
    out = {}
    for f in features:
        if f.mask not in masks:
            masks[f.mask] = token_mask(f.mask, roles, lengths)
        out[f.name] = pool(h, masks[f.mask], f.pool)
    return out
