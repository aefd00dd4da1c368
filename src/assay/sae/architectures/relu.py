"""ReLU SAE with a decoder-norm-weighted L1 penalty (Anthropic's April-2024 update; SAELens "standard")."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from assay.sae.base import SAE, SAEConfig, register


@dataclass
class ReLUConfig(SAEConfig):
    # Inputs are scaled to unit mean squared norm, so this is ~ 5/sqrt(d_in) in Anthropic's units.
    l1_coefficient: float = 0.1


@register("relu")
class ReLUSAE(SAE):
    config_class = ReLUConfig
    saelens_architecture = "standard"

    def __init__(self, cfg: ReLUConfig):
        super().__init__(cfg)
        self.b_enc = nn.Parameter(torch.zeros_like(self.W_enc[0]))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.centred(x) @ self.W_enc + self.b_enc)

    def loss(self, x, *, sparsity_scale=1.0, dead=None):
        acts = self.encode(x)
        l1 = (acts * self.W_dec.norm(dim=1)).sum(-1).mean()
        terms = {"mse": self.mse(self.decode(acts), x), "l1": self.cfg.l1_coefficient * sparsity_scale * l1}
        return self.with_total({**terms, **self.stats(acts)})
