"""JumpReLU with GDM's quadratic-frequency sparsity penalty (the negative-results study).

    penalty = lambda * sum_i f_i (1 + f_i / omega_0)

f_i is latent i's firing frequency in the batch, computed from the straight-through step
function, so the penalty's gradient reaches the thresholds: d penalty / d theta_i =
lambda (1 + 2 f_i / omega_0) * mean_b[-(1/eps) K((z_bi - theta_i)/eps)]. The linear term is the
plain L0 penalty (sum_i f_i = E[L0]); the quadratic term grows fast for latents firing on more
than ~omega_0 of tokens, which removes the very-high-frequency latents.

Under DDP, f is the frequency over the *global* batch (the ranks' local frequencies averaged), and
each rank's term is written so that its gradient is lambda (1 + 2 f / omega_0) d f_local: averaged
over ranks, exactly the gradient of the penalty on the whole batch. (Penalising each rank's local
frequency instead would add the quadratic's variance term, a stronger penalty on fewer tokens.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from assay.distributed import batch_mean, world_size
from assay.sae.architectures.jumprelu import JumpReLUConfig, JumpReLUSAE, StepFn
from assay.sae.base import register


@dataclass
class QFJumpReLUConfig(JumpReLUConfig):
    omega_0: float = 0.1  # the study used 0.1 and 0.01


@register("qf_jumprelu")
class QFJumpReLUSAE(JumpReLUSAE):
    config_class = QFJumpReLUConfig

    def sparsity(self, pre: torch.Tensor) -> dict[str, torch.Tensor]:
        freq = StepFn.apply(pre, self.threshold, self.cfg.bandwidth).mean(0)
        if world_size() == 1:
            penalty = freq * (1 + freq / self.cfg.omega_0)
        else:
            f = batch_mean(freq, len(pre))  # detached
            # value: the penalty at the global frequency f; gradient: (1 + 2 f / omega_0) d freq.
            penalty = f * (1 + f / self.cfg.omega_0) + (1 + 2 * f / self.cfg.omega_0) * (freq - freq.detach())
        return {"qf_penalty": self.cfg.l0_coefficient * penalty.sum()}
