"""What a probe reads, fetched from the activation cache: the glue between probes and the
`assay.activations` contract. A `ProbeInputs` spec (model, layer, feature, SAE) is stored with
every trained probe so evaluation reads exactly the same thing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
import torch

from assay.probes.aggregation import Aggregation
from assay.probes.sae_encode import sae_features

TEXT_KINDS = ("tfidf", "embedding")


@dataclass(frozen=True)
class ProbeInputs:
    kind: str
    feature: str  # aggregation name for pooled probes; token mask ("all"/"user") for attention probes
    model: str | None = None
    layer: int | None = None
    sae: str | None = None  # path of an SAE: probe its latents (or reconstruction)
    sae_output: str = "latents"  # "latents" | "reconstruction"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def features_label(self) -> str:
        if self.kind in TEXT_KINDS:
            return "text"
        base = f"tokens:{self.feature}" if self.token_level else self.feature
        return f"{base}->recon" if self.sae and self.sae_output == "reconstruction" else base

    @property
    def token_level(self) -> bool:
        return self.kind in ("attention", "rolling_attention")


def load_sae(path: str):
    """An SAE through the sae package (its loader's name is not in CONTRACTS.md yet)."""
    import assay.sae as sae_pkg

    for name in ("load_sae", "load"):
        if hasattr(sae_pkg, name):
            return getattr(sae_pkg, name)(path)
    raise RuntimeError("assay.sae exposes no load_sae/load function yet")


def fetch(acts, spec: ProbeInputs, indices: Sequence[int], sae=None, chunk: int = 256) -> tuple[Any, Any]:
    """(X, mask) for `indices` of an `ActivationSet`: pooled `[n, d]` (mask None), per-token
    `[n, T, d]` + mask for attention probes, or SAE latents / reconstructions pooled like `feature`."""
    idx = np.asarray(indices, dtype=np.int64)
    if spec.token_level:
        return acts.token_batch(spec.layer, idx.tolist(), mask=spec.feature)
    if sae is None:
        return acts.pooled(spec.layer, spec.feature)[torch.as_tensor(idx)], None
    agg = Aggregation.parse(spec.feature)
    if agg.pools_single_token:  # one token: encoding the pooled vector is exact
        return sae_features(sae, acts.pooled(spec.layer, spec.feature)[torch.as_tensor(idx)], what=spec.sae_output), None
    if agg.mask not in ("all", "user"):
        raise ValueError(f"SAE features for {spec.feature!r} need per-token masks the cache serves (all, user)")
    out = []
    for i in range(0, len(idx), chunk):  # encode per token, then pool, a chunk of prompts at a time
        x, m = acts.token_batch(spec.layer, idx[i : i + chunk].tolist(), mask=agg.mask)
        out.append(sae_features(sae, x, m, agg, what=spec.sae_output))
    return torch.cat(out), None
