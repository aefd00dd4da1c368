"""What the server needs of the monitor and of the generator: protocols, so tests can pass fakes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol


class ScoringMonitor(Protocol):
    """What the server needs of `assay.monitor.scorer.Monitor` (a protocol, so tests can pass a fake)."""

    # Read-only properties, so both the real Monitor's properties and plain attributes satisfy them.
    @property
    def name(self) -> str: ...
    @property
    def thresholds(self) -> dict[str, float]: ...
    @property
    def default_threshold(self) -> str: ...
    @property
    def max_tokens(self) -> int: ...
    @property
    def token_limit(self) -> int | None: ...  # the longest conversation its probe reads (None: max_tokens)

    # A prompt is tokenised once: formatted on the counting thread (each has `input_ids`, whose
    # length the server checks and batches by), then scored as formatted on a scoring thread.
    def format_texts(self, texts: list[str]) -> list[Any]: ...
    def format_conversations(self, conversations: list[list[dict[str, str]]]) -> list[Any]: ...
    def score_formatted(self, prompts: list[Any], *, conversations: bool = False) -> list[Any]: ...
    def describe(self) -> dict: ...


class ChatGenerator(Protocol):
    """What the server needs of `assay.monitor.generate.Generator`."""

    @property
    def threshold(self) -> str: ...
    @property
    def max_new_tokens(self) -> int: ...
    @property
    def model_name(self) -> str: ...
    @property
    def context_length(self) -> int | None: ...

    def stream(self, messages: list[dict[str, str]], params: Any, should_stop: Callable[[], bool]) -> Any: ...
