"""JumpReLU SAE with an L0 penalty (Rajamanoharan et al. 2024, "Jumping ahead").

f(x) = z * H(z - theta), z the pre-activation. H's derivative is zero almost everywhere, so the
threshold theta learns through a straight-through estimator with a rectangle kernel K of width
eps (the bandwidth):

    d/dtheta [z H(z - theta)] := -(theta / eps) K((z - theta) / eps)
    d/dtheta  H(z - theta)    := -(1 / eps)     K((z - theta) / eps),  K(u) = 1{|u| < 1/2}

and z gets the ordinary gradient H(z - theta) through f and none through the L0 term.
theta is a direct parameter clamped at 0 (SAELens's choice: Adam moves a parameter by ~lr a step,
so a log-parametrised small threshold barely moves), rather than the paper's log theta.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from assay.sae.base import SAE, SAEConfig, register


def rectangle(u: torch.Tensor) -> torch.Tensor:
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class JumpReLUFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, theta, eps):  # type: ignore[override]
        ctx.save_for_backward(z, theta)
        ctx.eps = eps
        return z * (z > theta)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        z, theta = ctx.saved_tensors
        g_z = g * (z > theta)
        g_theta = (-(theta / ctx.eps) * rectangle((z - theta) / ctx.eps) * g).sum(0)
        return g_z, g_theta, None


class StepFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, theta, eps):  # type: ignore[override]
        ctx.save_for_backward(z, theta)
        ctx.eps = eps
        return (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        z, theta = ctx.saved_tensors
        return None, (-(1.0 / ctx.eps) * rectangle((z - theta) / ctx.eps) * g).sum(0), None


@dataclass
class JumpReLUConfig(SAEConfig):
    # Gemma Scope's values for inputs at unit mean squared norm.
    l0_coefficient: float = 2e-3
    bandwidth: float = 1e-3
    init_threshold: float = 1e-3


@register("jumprelu")
class JumpReLUSAE(SAE):
    config_class = JumpReLUConfig
    saelens_architecture = "jumprelu"
    unit_norm_decoder = True

    def __init__(self, cfg: JumpReLUConfig):
        super().__init__(cfg)
        self.b_enc = nn.Parameter(torch.zeros_like(self.W_enc[0]))
        self.threshold = nn.Parameter(torch.full_like(self.W_enc[0], cfg.init_threshold))

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        return self.centred(x) @ self.W_enc + self.b_enc

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return JumpReLUFn.apply(self.pre_acts(x), self.threshold, self.cfg.bandwidth)

    def sparsity(self, pre: torch.Tensor) -> dict[str, torch.Tensor]:
        """The penalty terms, before the warm-up scale: here lambda * E[L0]."""
        fires = StepFn.apply(pre, self.threshold, self.cfg.bandwidth)
        return {"l0_penalty": self.cfg.l0_coefficient * fires.sum(-1).mean()}

    def loss(self, x, *, sparsity_scale=1.0, dead=None):
        pre = self.pre_acts(x)
        acts = JumpReLUFn.apply(pre, self.threshold, self.cfg.bandwidth)
        terms = {"mse": self.mse(self.decode(acts), x)}
        terms.update({k: sparsity_scale * v for k, v in self.sparsity(pre).items()})
        return self.with_total({**terms, **self.stats(acts)})

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        super().after_optimizer_step()
        self.threshold.clamp_(min=0.0)
