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
    # The user's words stay words: a "<end_of_turn>" they type must not become the control token
    # (it would forge a turn for the probe and for generation). A document (`chat=False`) is read as
    # written: the SAE corpus's chat documents are conversations rendered in the chat template, whose
    # markers must be the control tokens the model saw in training, not 7 tokens of plain text.
    contents = tokenizer(list(texts), add_special_tokens=False, split_special_tokens=chat)["input_ids"]
    return cut_prompts([FormattedPrompt(input_ids=pre_ids + ids + suf_ids,
                                        roles=pre_roles + [int(Role.USER)] * len(ids) + [int(Role.TEMPLATE)] * len(suf_ids))
                        for ids in contents], max_tokens)


def cut_prompts(prompts: Sequence[FormattedPrompt], max_tokens: int | None) -> list[FormattedPrompt]:
    """`cut_prompt` of each, and a warning that counts the prompts it cut."""
    out = [cut_prompt(p, max_tokens) for p in prompts]
    if n_truncated := sum(p.truncated for p in out):
        log.warning("%d of %d texts exceeded %d tokens and were truncated", n_truncated, len(out), max_tokens)
    return out


def cut_prompt(prompt: FormattedPrompt, max_tokens: int | None) -> FormattedPrompt:
    """A one-turn prompt over `max_tokens` with the end of the user's text cut, the template kept:
    the one cut, whether a prompt is formatted with its limit or (a server, which tokenises once
    and checks the uncut length first) cut after."""
    over = 0 if max_tokens is None else len(prompt.input_ids) - max_tokens
    if over <= 0:
        return prompt
    user = [i for i, r in enumerate(prompt.roles) if r == int(Role.USER)]
    if len(user) <= over:
        from assay.errors import InputError

        raise InputError(f"max_tokens={max_tokens} leaves no room for the user's text after the chat template's "
                         f"{len(prompt.input_ids) - len(user)} tokens; use a larger limit")
    end = user[-1] + 1
    return FormattedPrompt(input_ids=prompt.input_ids[: end - over] + prompt.input_ids[end:],
                           roles=prompt.roles[: end - over] + prompt.roles[end:], truncated=True)


def check_conversation(prompt: FormattedPrompt, max_tokens: int | None) -> FormattedPrompt:
    """A conversation over `max_tokens` is an error: cutting it would silently drop the turn the
    monitor is asked about."""
    if max_tokens is not None and len(prompt.input_ids) > max_tokens:
        from assay.errors import InputError

        raise InputError(f"the conversation is {len(prompt.input_ids)} tokens, over the limit of {max_tokens}; "
                         "send fewer or shorter messages")
    return prompt


def _bos(tokenizer: Any) -> list[int]:
    return [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []


def _encode(tokenizer: Any, text: str, content: bool = False) -> list[int]:
    """Token ids of template text (its special tokens parsed as such) or, with `content`, of a
    message's text (special-token strings in it kept as plain text)."""
    if not text:
        return []
    return tokenizer(text, add_special_tokens=False, split_special_tokens=content)["input_ids"]


CHAT_ROLES = ("system", "user", "assistant")


def format_conversation(tokenizer: Any, messages: Sequence[dict], max_tokens: int | None = None) -> FormattedPrompt:
    """Tokenise a role/content conversation, ending with the generation prompt. The user's words are
    `Role.USER`; system and assistant text and the template are `Role.TEMPLATE`, so pooled masks
    read a conversation as they read a prompt (one user message gives exactly `format_prompts`).

    Each message's content is tokenised apart from the template around it (as `format_prompts`
    does), so no token straddles a boundary. A conversation over `max_tokens` is an error: cutting
    it would silently drop the turn the monitor is asked about."""
    from assay.errors import InputError

    if not isinstance(messages, (list, tuple)) or not messages:
        raise InputError("a conversation is a non-empty list of {role, content} messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or m.get("role") not in CHAT_ROLES:
            raise InputError(f"message {i} must be {{'role': one of {'/'.join(CHAT_ROLES)}, 'content': a string}}; "
                             f"got {m!r:.120}")
    if [m["role"] for m in messages] == ["user"]:
        [p] = format_prompts(tokenizer, [messages[0]["content"]], max_tokens=None)
        pieces = None
    else:
        pieces = _conversation_pieces(tokenizer, messages)
    if pieces is not None:
        bos = [] if pieces[0][0].startswith(tokenizer.bos_token or "\x01") else _bos(tokenizer)
        ids, roles = list(bos), [int(Role.SPECIAL)] * len(bos)
        for text, role, content in pieces:
            piece = _encode(tokenizer, text, content)
            ids += piece
            roles += [int(role)] * len(piece)
        if ids and ids[0] == tokenizer.bos_token_id:
            roles[0] = int(Role.SPECIAL)
        p = FormattedPrompt(input_ids=ids, roles=roles)
    return check_conversation(p, max_tokens)


def _conversation_pieces(tokenizer: Any, messages: Sequence[dict]) -> list[tuple[str, Role, bool]]:
    """(text, role, is a message's content) pieces of the rendered conversation: template text
    between the messages' contents, found by rendering sentinels in place of the contents."""
    if getattr(tokenizer, "chat_template", None):
        marks = [f"\x00ASSAY_MESSAGE_{i}\x00" for i in range(len(messages))]
        rendered = tokenizer.apply_chat_template([{"role": m["role"], "content": s} for m, s in zip(messages, marks)],
                                                 tokenize=False, add_generation_prompt=True)
        if all(rendered.count(s) == 1 for s in marks):
            pieces, rest = [], rendered
            for m, s in zip(messages, marks):
                before, _, rest = rest.partition(s)
                pieces += [(before, Role.TEMPLATE, False),
                           (m["content"], Role.USER if m["role"] == "user" else Role.TEMPLATE, True)]
            return [p for p in pieces + [(rest, Role.TEMPLATE, False)] if p[0]]
        log.warning("chat template drops or repeats message text; falling back to Gemma's turn format")
    pieces = []
    for m in messages:  # Gemma has no system turn: its text goes in a user turn, as Gemma's template does
        turn = "model" if m["role"] == "assistant" else "user"
        pieces += [(f"<start_of_turn>{turn}\n", Role.TEMPLATE, False),
                   (m["content"], Role.USER if m["role"] == "user" else Role.TEMPLATE, True),
                   ("<end_of_turn>\n", Role.TEMPLATE, False)]
    pieces.append(("<start_of_turn>model\n", Role.TEMPLATE, False))
    return [p for p in pieces if p[0]]
