"""Length-bucketed batches bounded by a token budget, and shard plans for resumable extraction."""

from __future__ import annotations

from typing import Sequence


def length_order(lengths: Sequence[int]) -> list[int]:
    """Indices sorted longest first (stable): peak memory is met at once, padding stays small."""
    return sorted(range(len(lengths)), key=lambda i: -lengths[i])


def token_budget_batches(indices: Sequence[int], lengths: Sequence[int], token_budget: int) -> list[list[int]]:
    """Consecutive runs of `indices` (already length-sorted) whose padded size fits the budget.

    The padded size of a batch is its count times its longest length; an example longer than the
    budget gets a batch of its own.
    """
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in indices:
        new_longest = max(longest, lengths[i])
        if current and new_longest * (len(current) + 1) > token_budget:
            batches.append(current)
            current, new_longest = [], lengths[i]
        current.append(i)
        longest = new_longest
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
