"""Gated SAE (Rajamanoharan et al. 2024, "Improving dictionary learning with gated SAEs").

A gate path decides which latents fire, a magnitude path (sharing W_enc up to a per-latent
rescale exp(r_mag)) sets how strongly. The L1 penalty acts on the gate path only, and an
auxiliary reconstruction through a frozen decoder keeps the gate's pre-activations meaningful.
Parameter names follow SAELens's "gated" files: W_enc, b_gate, r_mag, b_mag, W_dec, b_dec.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from assay.sae.base import SAE, SAEConfig, register


@dataclass
class GatedConfig(SAEConfig):
    l1_coefficient: float = 0.1


@register("gated")
class GatedSAE(SAE):
    config_class = GatedConfig
    saelens_architecture = "gated"
    unit_norm_decoder = True  # as in the paper; the L1 weight by decoder norm is then a no-op

    def __init__(self, cfg: GatedConfig):
        super().__init__(cfg)
        zeros = torch.zeros_like(self.W_enc[0])
        self.b_gate = nn.Parameter(zeros.clone())
        self.r_mag = nn.Parameter(zeros.clone())
        self.b_mag = nn.Parameter(zeros.clone())

    def paths(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xc = self.centred(x)
        return xc @ self.W_enc + self.b_gate, xc @ (self.W_enc * self.r_mag.exp()) + self.b_mag

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        gate, mag = self.paths(x)
        return (gate > 0).to(mag.dtype) * torch.relu(mag)

    def loss(self, x, *, sparsity_scale=1.0, dead=None):
        gate, mag = self.paths(x)
        acts = (gate > 0).to(mag.dtype) * torch.relu(mag)
        gate_acts = torch.relu(gate)
        l1 = (gate_acts * self.W_dec.norm(dim=1)).sum(-1).mean()
        via_gate = gate_acts @ self.W_dec.detach() + self.b_dec.detach()
        terms = {
            "mse": self.mse(self.decode(acts), x),
            "l1": self.cfg.l1_coefficient * sparsity_scale * l1,
            "aux_gate": self.mse(via_gate, x),
        }
        return self.with_total({**terms, **self.stats(acts)})
