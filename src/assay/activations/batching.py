"""Length-bucketed batches bounded by a token budget, and shard plans for resumable extraction."""

from __future__ import annotations

from typing import Sequence


def length_order(lengths: Sequence[int]) -> list[int]:
    """Indices sorted longest first (stable): peak memory is met at once, padding stays small."""
    return sorted(range(len(lengths)), key=lambda i: -lengths[i])


def token_budget_batches(indices: Sequence[int], lengths: Sequence[int], token_budget: int,
                         max_padding: float | None = None) -> list[list[int]]:
    """Consecutive runs of `indices` (already length-sorted) whose padded size fits the budget.

    The padded size of a batch is its count times its longest length; an example longer than the
    budget gets a batch of its own. With `max_padding`, a batch also ends before its padding would
    exceed that fraction of its real tokens: a few prompts of mixed lengths (a server's
    micro-batch) otherwise spend half their compute on padding.
    """
    batches: list[list[int]] = []
    current: list[int] = []
    longest = real = 0
    for i in indices:
        new_longest = max(longest, lengths[i])
        padded = new_longest * (len(current) + 1)
        if current and (padded > token_budget
                        or (max_padding is not None and padded > (1 + max_padding) * (real + lengths[i]))):
            batches.append(current)
            current, new_longest, real = [], lengths[i], 0
        current.append(i)
        longest = new_longest
        real += lengths[i]
    if current:
        batches.append(current)
    return batches


def shard_plan(order: Sequence[int], lengths: Sequence[int], shard_tokens: int) -> list[list[int]]:
    """Split the length-sorted order into shards of about `shard_tokens` real tokens each."""
    shards: list[list[int]] = []
    current: list[int] = []
    total = 0
    for i in order:
        if current and total + lengths[i] > shard_tokens:
            shards.append(current)
            current, total = [], 0
        current.append(i)
        total += lengths[i]
    if current:
        shards.append(current)
    return shards
