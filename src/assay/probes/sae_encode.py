"""Features for SAE probes: latents `Z` or the reconstruction `x_hat`, pooled like activations.

Any object with `encode(x [m, d]) -> z [m, d_sae]` and `decode(z) -> x_hat [m, d]` works. For
per-token input the SAE sees each token (as it was trained to), and the pooling comes after, so
`all.max` latents are the max over tokens of each latent. A "probe on the SAE reconstruction" is a
dense probe (e.g. `LogisticProbe`) fitted on `sae_features(..., what="reconstruction")`.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol, Sequence

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


SAE_OUTPUTS = ("latents", "reconstruction", "error")


@torch.no_grad()
def pooled_sae_outputs(
    acts: Any, sae: Any, layer: int, aggregations: Sequence[str], indices: Sequence[int] | None = None,
    *, token_budget: int = 8192, search_dtype: torch.dtype | None = None, progress: bool = False,
) -> dict[str, dict[str, torch.Tensor]]:
    """SAE latents, reconstruction and error (x - x_hat) of every stored token of the examples
    `indices` of an activation cache entry, each pooled by every aggregation (its own mask: `user.*`
    pools the user's tokens, everything else all tokens but BOS): `{output: {agg: [n, *]}}`.

    One read and one encoding per token serves every aggregation and output. Examples are batched
    by length to a token budget so padding costs little. A TopK SAE is encoded without its dense
    code (`encode_topk`, optionally shortlisting in `search_dtype`).
    """
    from assay.models.chat import Role
    from assay.sae.architectures.topk import TopKSAE

    indices = list(range(acts.n)) if indices is None else [int(i) for i in indices]
    counts = acts.token_counts("all")[indices]
    order = sorted(range(len(indices)), key=lambda j: int(counts[j]))
    aggs = [Aggregation.parse(a) for a in aggregations]
    device = _device(sae, torch.zeros(()))
    d_sae, d_in = int(sae.W_dec.shape[0]), int(sae.W_dec.shape[1])
    out = {o: {str(a): torch.zeros(len(indices), d_sae if o == "latents" else d_in) for a in aggs} for o in SAE_OUTPUTS}
    batches, cur, longest = [], [], 0
    for j in order:  # length-sorted, so a batch's padded size is about its real size
        n = max(1, int(counts[j]))
        if cur and max(longest, n) * (len(cur) + 1) > token_budget:
            batches.append(cur)
            cur, longest = [], 0
        cur.append(j)
        longest = max(longest, n)
    if cur:
        batches.append(cur)
    it = batches
    if progress:
        from rich.progress import track

        it = track(batches, description="encoding tokens with the SAE")
    for batch in it:
        x, roles = acts.token_batch_roles(layer, [indices[j] for j in batch])
        real = roles > Role.SPECIAL
        flat = x[real].to(device)
        if isinstance(sae, TopKSAE):
            vals, idx = sae.encode_topk(flat, search_dtype)
            z_real = torch.zeros(len(flat), d_sae, device=device, dtype=vals.dtype).scatter_(1, idx, vals)
            x_hat = sae.decode_topk(vals, idx)
        else:
            z_real = sae.encode(flat)
            x_hat = sae.decode(z_real)
        per_token = {"latents": z_real, "reconstruction": x_hat, "error": flat - x_hat.to(flat.dtype)}
        masks = {"all": real, "user": roles == Role.USER}
        rows = torch.as_tensor(batch)
        for o, values in per_token.items():
            full = torch.zeros(*real.shape, values.shape[-1])
            full[real] = values.float().cpu()
            for a in aggs:
                m = masks["user" if a.mask == "user" else "all"] if not a.mask.startswith("last") else real
                if a.mask.startswith("last"):  # lastN: the last N of the prompt's tokens
                    m = real & (real.cumsum(1) > real.sum(1, keepdim=True) - int(a.mask[4:]))
                out[o][str(a)][rows] = pool_tokens(full, m, a)
    return out
