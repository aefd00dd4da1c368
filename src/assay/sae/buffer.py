"""A shuffling buffer over a stream of token activations.

Activations arrive in document order ([m, d] chunks); consecutive tokens are correlated, so
batches are drawn from a buffer that mixes many chunks: fill to capacity, shuffle, hand out half,
keep the other half to mix with the next fill (SAELens's activation store does the same).
"""

from __future__ import annotations

from typing import Iterable, Iterator

import torch


def shuffled_batches(
    stream: Iterable[torch.Tensor], batch_size: int, capacity: int = 1 << 16, seed: int = 0
) -> Iterator[torch.Tensor]:
    """Yield `[batch_size, d]` batches (the last one may be shorter) from `[m, d]` chunks."""
    capacity = max(capacity, 2 * batch_size)
    gen = torch.Generator().manual_seed(seed)
    pending: list[torch.Tensor] = []
    kept: torch.Tensor | None = None
    n_pending = 0
    it = iter(stream)
    exhausted = False
    while True:
        while not exhausted and n_pending + (0 if kept is None else len(kept)) < capacity:
            try:
                chunk = next(it)
            except StopIteration:
                exhausted = True
                break
            if chunk.numel():
                pending.append(chunk.reshape(-1, chunk.shape[-1]))
                n_pending += len(pending[-1])
        parts = ([kept] if kept is not None else []) + pending
        if not parts:
            return
        buf = torch.cat(parts)
        pending, n_pending = [], 0
        buf = buf[torch.randperm(len(buf), generator=gen).to(buf.device)]
        # Hand out half the buffer (all of it once the stream is done), in whole batches.
        n_out = len(buf) if exhausted else max(batch_size, (len(buf) // 2) // batch_size * batch_size)
        for start in range(0, n_out, batch_size):
            yield buf[start:min(start + batch_size, n_out)]
        kept = buf[n_out:] if n_out < len(buf) else None
        if exhausted and kept is None:
            return
