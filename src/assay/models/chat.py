"""Chat formatting with per-token roles: which tokens are the user's words, which the template.

Prompts are rendered as the single user turn of a conversation, followed by the generation prompt,
so the last token sits where the model's response would begin. The tokenizer's own chat template
is used when it has one; otherwise Gemma's turn format (the bundled GGUF ships no template).
The prefix, the user's text and the suffix are tokenised separately and concatenated, which makes
the role of every token exact rather than recovered from character offsets.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Sequence

log = logging.getLogger(__name__)

GEMMA_PREFIX = "<start_of_turn>user\n"
GEMMA_SUFFIX = "<end_of_turn>\n<start_of_turn>model\n"
_SENTINEL = "\x00ASSAY_USER_CONTENT\x00"


class Role(IntEnum):
    SPECIAL = 0  # BOS: an attention sink with a huge norm, excluded from every pooled mask
    TEMPLATE = 1  # chat-template tokens around the user's text
    USER = 2  # the user's own words


@dataclass(frozen=True)
class FormattedPrompt:
    input_ids: list[int]
    roles: list[int]
    truncated: bool = False

    @property
    def response_start(self) -> int:
        """Index the model's first response token would have (one past the last prompt token)."""
        return len(self.input_ids)


def chat_affixes(tokenizer: Any) -> tuple[str, str]:
    """The text before and after the user's message in a one-turn chat, generation prompt included."""
    if getattr(tokenizer, "chat_template", None):
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": _SENTINEL}], tokenize=False, add_generation_prompt=True
        )
        prefix, sep, suffix = rendered.partition(_SENTINEL)
        if sep:
            return prefix, suffix
        log.warning("chat template drops the user's text; falling back to Gemma's turn format")
    return GEMMA_PREFIX, GEMMA_SUFFIX


def format_prompts(
    tokenizer: Any,
    texts: Sequence[str],
    max_tokens: int | None = None,
    chat: bool = True,
) -> list[FormattedPrompt]:
    """Tokenise `texts` as user turns (or as plain documents when `chat=False`).

    Texts that would exceed `max_tokens` have the end of the user's text cut, keeping the template,
    and a warning counts them.
    """
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"text #{i} is {type(text).__name__}, not str: {text!r:.80}")
    if not texts:
        raise ValueError("no texts to format: the dataset is empty")
    prefix, suffix = chat_affixes(tokenizer) if chat else ("", "")
    bos = [] if prefix.startswith(tokenizer.bos_token or "\x01") else _bos(tokenizer)
    pre_ids = bos + _encode(tokenizer, prefix)
    suf_ids = _encode(tokenizer, suffix)
    pre_roles = [int(Role.SPECIAL)] * len(bos) + [int(Role.TEMPLATE)] * (len(pre_ids) - len(bos))
    if pre_ids and pre_ids[0] == tokenizer.bos_token_id:
        pre_roles[0] = int(Role.SPECIAL)
    budget = None if max_tokens is None else max_tokens - len(pre_ids) - len(suf_ids)
    if budget is not None and budget < 1:
        from assay.errors import InputError

        need = len(pre_ids) + len(suf_ids) + 1
        raise InputError(f"max_tokens={max_tokens} leaves no room for the user's text after the chat template's "
                         f"{need - 1} tokens; use --max-tokens {need} or more")
    contents = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    out, n_truncated = [], 0
    for ids in contents:
        truncated = budget is not None and len(ids) > budget
        if truncated:
            ids, n_truncated = ids[:budget], n_truncated + 1
        out.append(FormattedPrompt(
            input_ids=pre_ids + ids + suf_ids,
            roles=pre_roles + [int(Role.USER)] * len(ids) + [int(Role.TEMPLATE)] * len(suf_ids),
            truncated=truncated,
        ))
    if n_truncated:
        log.warning("%d of %d texts exceeded %d tokens and were truncated", n_truncated, len(texts), max_tokens)
    return out


def _bos(tokenizer: Any) -> list[int]:
    return [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []


def _encode(tokenizer: Any, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
