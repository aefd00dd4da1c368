"""Synthetic activations from a planted sparse dictionary, for tests and benchmarks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch


@dataclass
class PlantedDictionary:
    """x = sum_i c_i D_i with D unit-norm rows and c_i > 0 on a few random latents per token."""

    d_in: int = 32
    n_features: int = 64
    active: float = 3.0  # expected number of active features per token
    always_on: float = 0.0  # magnitude of an extra direction present in every token (0 = none)
    # Like a residual stream's massive-activation dimension: every token gets `massive` along the
    # first axis, with 20% spread (0 = none); and everything is multiplied by `scale` (Gemma 3's
    # residual norms are in the tens of thousands).
    massive: float = 0.0
    scale: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        gen = torch.Generator().manual_seed(self.seed)
        self.dictionary = torch.nn.functional.normalize(torch.randn(self.n_features, self.d_in, generator=gen), dim=1)
        self.always_on_dir = torch.nn.functional.normalize(torch.randn(self.d_in, generator=gen), dim=0)
        self._gen = gen

    def sample(self, n: int) -> torch.Tensor:
        p = self.active / self.n_features
        on = torch.rand(n, self.n_features, generator=self._gen) < p
        mags = 0.5 + torch.rand(n, self.n_features, generator=self._gen)
        x = (on * mags) @ self.dictionary
        if self.always_on:
            # Present on every token with a widely varying magnitude, so a bias cannot absorb it.
            x = x + self.always_on * 2 * torch.rand(n, 1, generator=self._gen) * self.always_on_dir
        if self.massive:
            x[:, 0] += self.massive * (1 + 0.2 * torch.randn(n, generator=self._gen))
        return x * self.scale

    def stream(self, n_tokens: int, chunk: int = 1024) -> Iterator[torch.Tensor]:
        for start in range(0, n_tokens, chunk):
            yield self.sample(min(chunk, n_tokens - start))


def max_cosine(learned: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """For each true row, the best cosine similarity with any learned row (decoder rows)."""
    a = torch.nn.functional.normalize(learned.detach().float(), dim=1)
    b = torch.nn.functional.normalize(true.float(), dim=1)
    return (b @ a.T).max(dim=1).values
