"""TopK SAE (Gao et al. 2024) with the AuxK dead-latent loss, trained through sparse kernels."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from assay.sae.base import SAE, SAEConfig, register
from assay.sae.sparse import densify, gather_encode, sparse_decode, subset_encode, topk_encode


@dataclass
class TopKConfig(SAEConfig):
    k: int = 32
    aux_k_coefficient: float = 1 / 32  # Gao et al.'s alpha
    aux_k: int | None = None  # dead latents used by AuxK; None = d_in // 2 (their heuristic)


# AuxK picks k_aux of the n_dead dead latents per token. Its sparse kernels are bound by memory
# bandwidth; dense products over the dead columns run at matmul speed. Measured on a 2-core AVX-512
# CPU (4,096 tokens, d_in 640, k_aux 320), the dense form is cheaper up to n_dead of about 8 x k_aux.
DENSE_AUX_RATIO = 8


def auxk_loss(sae: SAE, x: torch.Tensor, x_hat: torch.Tensor, pre: torch.Tensor, dead: torch.Tensor | None,
              aux_k: int | None, coefficient: float) -> torch.Tensor | None:
    """Dead latents (top `aux_k` of them by pre-activation) reconstruct the live latents' residual.

    `pre` is detached; the selected pre-activations are recomputed differentiably (through the
    sparse kernels, or dense products over the dead columns while those are few), so the dead
    latents' encoder columns learn too (not only their decoder rows).
    """
    if dead is None or coefficient == 0:
        return None
    n_dead = int(dead.sum())
    if n_dead == 0:
        return None
    k_aux = aux_k or x.shape[-1] // 2
    scale = min(n_dead / k_aux, 1.0)  # smaller push when only a few latents are dead
    b_dec = sae.b_dec if sae.cfg.apply_b_dec_to_input else None
    x_in = x.to(sae.W_enc.dtype)
    residual = (x - x_hat).detach()
    with torch.no_grad():  # top-k among the dead columns only: cheap while few latents are dead
        dead_idx = dead.nonzero().squeeze(1)
        _, j = pre[:, dead_idx].topk(min(k_aux, n_dead), dim=-1, sorted=False)
    if n_dead <= DENSE_AUX_RATIO * k_aux:
        at = subset_encode(x_in, b_dec, sae.W_enc, sae.b_enc, dead_idx, pre)
        chosen = torch.zeros_like(at, dtype=torch.bool).scatter_(1, j, True)
        vals = (at * chosen).relu()
        recon = vals.to(sae.W_dec.dtype) @ sae.W_dec[dead_idx]
    else:
        idx = dead_idx[j]
        vals = gather_encode(x_in, b_dec, sae.W_enc, sae.b_enc, idx, pre).relu()
        recon = sparse_decode(vals, idx, sae.W_dec)
    return coefficient * scale * SAE.mse(recon, residual)


@register("topk")
class TopKSAE(SAE):
    config_class = TopKConfig
    saelens_architecture = "topk"
    unit_norm_decoder = True

    def __init__(self, cfg: TopKConfig):
        super().__init__(cfg)
        self.b_enc = nn.Parameter(torch.zeros_like(self.W_enc[0]))

    # Set by the trainer (not saved): dtype in which to shortlist the top k (see `topk_encode`).
    search_dtype: torch.dtype | None = None

    def encode_sparse(self, x: torch.Tensor):
        """`(vals [n, k], idx [n, k], pre [n, d_sae] detached)`; differentiable in vals."""
        b_dec = self.b_dec if self.cfg.apply_b_dec_to_input else None
        return topk_encode(x.to(self.W_enc.dtype), b_dec, self.W_enc, self.b_enc, self.cfg.k, self.search_dtype)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        vals, idx = self.encode_topk(x)
        return densify(vals, idx, self.cfg.d_sae)

    @torch.no_grad()
    def encode_topk(self, x: torch.Tensor, search_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The code as `(relu(vals) [n, k], idx [n, k])`, without the dense [n, d_sae] code; with
        `search_dtype`, shortlisted in that dtype and computed exactly (see `topk_encode`)."""
        b_dec = self.b_dec if self.cfg.apply_b_dec_to_input else None
        vals, idx, _ = topk_encode(x.to(self.W_enc.dtype), b_dec, self.W_enc, self.b_enc, self.cfg.k, search_dtype)
        return vals, idx

    def decode_topk(self, vals: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """`decode` of a code given as `(vals, idx)`: k decoder rows per token, not d_sae."""
        return torch.nn.functional.embedding_bag(idx, self.W_dec, per_sample_weights=vals.to(self.W_dec.dtype),
                                                 mode="sum") + self.b_dec

    def loss(self, x, *, sparsity_scale=1.0, dead=None):
        vals, idx, pre = self.encode_sparse(x)
        x_hat = sparse_decode(vals, idx, self.W_dec) + self.b_dec
        terms = {"mse": self.mse(x_hat, x)}
        aux = auxk_loss(self, x, x_hat, pre, dead, self.cfg.aux_k, self.cfg.aux_k_coefficient)
        if aux is not None:
            terms["auxk"] = aux
        active = (vals > 0).detach()
        fired = torch.zeros(self.cfg.d_sae, device=x.device, dtype=torch.long)
        fired.index_add_(0, idx.reshape(-1), active.reshape(-1).long())
        return self.with_total({**terms, "l0": active.sum(-1).float().mean(), "fired": fired})

    def inference_state(self):
        arch, _, tensors = super().inference_state()
        return arch, {"k": self.cfg.k, "rescale_acts_by_decoder_norm": False}, tensors
