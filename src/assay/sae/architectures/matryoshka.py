"""Matryoshka BatchTopK SAE (Bussmann et al. 2025; Nabeshima 2024).

Nested prefixes of the dictionary must each reconstruct the input on their own: the loss sums
the reconstruction error of every prefix `W_dec[:m]` (the last prefix is the whole SAE), which
pushes general, frequent features into the early latents and reduces feature absorption.
Saved, like BatchTopK, as a JumpReLU with a global threshold.
"""

from __future__ import annotations

from dataclasses import dataclass

from assay.sae.architectures.batchtopk import BatchTopKConfig, BatchTopKSAE
from assay.sae.architectures.topk import auxk_loss
from assay.sae.base import register


@dataclass
class MatryoshkaConfig(BatchTopKConfig):
    # Prefix widths, increasing; d_sae is appended when missing. Empty = d_sae/16, /4, /1.
    prefixes: tuple[int, ...] = ()

    def widths(self) -> list[int]:
        w = sorted(set(self.prefixes)) if self.prefixes else [max(1, self.d_sae // 16), max(1, self.d_sae // 4)]
        return [m for m in w if m < self.d_sae] + [self.d_sae]


@register("matryoshka")
class MatryoshkaSAE(BatchTopKSAE):
    config_class = MatryoshkaConfig

    def loss(self, x, *, sparsity_scale=1.0, dead=None):
        acts, pre = self.train_acts(x)
        terms, x_hat, start = {}, self.b_dec, 0
        for m in self.cfg.widths():  # build each prefix's reconstruction on top of the previous one
            x_hat = x_hat + acts[:, start:m] @ self.W_dec[start:m]
            terms["mse" if m == self.cfg.d_sae else f"mse_{m}"] = self.mse(x_hat, x)
            start = m
        aux = auxk_loss(self, x, x_hat, pre.detach(), dead, self.cfg.aux_k, self.cfg.aux_k_coefficient)
        if aux is not None:
            terms["auxk"] = aux
        return self.with_total({**terms, **self.stats(acts)})
