"""BatchTopK SAE (Bussmann et al. 2024): k active latents on average over the batch.

Training keeps the top k * batch pre-activations of the whole batch. For inference the SAE
becomes a JumpReLU with one global threshold, estimated during training as a running average of
the smallest activation that survived the batch top-k (as in the paper and SAELens); it is saved
that way, so SAELens loads it as "jumprelu".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from assay.sae.architectures.topk import auxk_loss
from assay.sae.base import SAE, SAEConfig, register


@dataclass
class BatchTopKConfig(SAEConfig):
    k: float = 32
    aux_k_coefficient: float = 1 / 32
    aux_k: int | None = None
    threshold_lr: float = 0.01  # EMA rate of the global threshold


def batch_topk(pre: torch.Tensor, k: float) -> torch.Tensor:
    """Keep the top round(k * n) entries of relu(pre [n, d_sae]) across the whole batch."""
    acts = pre.relu()
    flat = acts.flatten()
    vals, idx = flat.topk(min(int(round(k * pre.shape[0])), flat.numel()), sorted=False)
    return torch.zeros_like(flat).scatter(0, idx, vals).view_as(acts)


@register("batchtopk")
class BatchTopKSAE(SAE):
    config_class = BatchTopKConfig
    saelens_architecture = "jumprelu"
    unit_norm_decoder = True

    def __init__(self, cfg: BatchTopKConfig):
        super().__init__(cfg)
        self.b_enc = nn.Parameter(torch.zeros_like(self.W_enc[0]))
        self.register_buffer("threshold", torch.zeros((), dtype=torch.float64, device=self.W_enc.device))

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        return self.centred(x) @ self.W_enc + self.b_enc

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Inference encoding: the JumpReLU the SAE is saved as."""
        pre = self.pre_acts(x)
        return pre * (pre > self.threshold.to(pre.dtype).clamp_min(0))

    @torch.no_grad()
    def update_threshold(self, acts: torch.Tensor) -> None:
        positive = acts[acts > 0]
        if positive.numel():
            lr = self.cfg.threshold_lr
            self.threshold.mul_(1 - lr).add_(lr * positive.min().double())

    def train_acts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pre = self.pre_acts(x)
        acts = batch_topk(pre, self.cfg.k)
        if self.training:
            self.update_threshold(acts)
        return acts, pre

    def loss(self, x, *, sparsity_scale=1.0, dead=None):
        acts, pre = self.train_acts(x)
        x_hat = self.decode(acts)
        terms = {"mse": self.mse(x_hat, x)}
        aux = auxk_loss(self, x, x_hat, pre.detach(), dead, self.cfg.aux_k, self.cfg.aux_k_coefficient)
        if aux is not None:
            terms["auxk"] = aux
        return self.with_total({**terms, **self.stats(acts)})

    def inference_state(self):
        _, _, tensors = super().inference_state()
        thr = tensors.pop("threshold")
        tensors["threshold"] = torch.full_like(tensors["b_enc"], float(thr))
        return "jumprelu", {}, tensors

    def load_inference_state(self, tensors, extra):
        tensors = dict(tensors)
        # SAELens stores the global threshold as a [d_sae] vector; ours is its (single) value.
        tensors["threshold"] = tensors["threshold"].max().to(torch.float64)
        self.load_state_dict(tensors)
