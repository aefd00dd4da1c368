"""Token-activation streams for SAE training: pretraining-like text (Wikipedia) or chat (ShareGPT).

Corpora:
- "wiki": English Wikipedia lead sections, as plain documents; the BOS token is dropped.
- "chat": whole ShareGPT conversations rendered in the model's chat format; BOS dropped. The
  template tokens between turns stay in (the activation cache marks roles only for one-turn
  prompts), a few percent of tokens.
- "chat-user": the first user turn of each conversation as a one-turn chat prompt; only the
  user's own tokens are kept (BOS and template dropped exactly) - the tokens probes read.
Texts are drawn in a seeded order until the token target is met; `held_out_texts` draws from the
other end of the same order, so evaluation text is never training text.
"""

from __future__ import annotations

import itertools
import random
from typing import Any, Iterator

import torch

from assay.fileio import sha256_json

CORPORA = ("wiki", "chat", "chat-user")


def _gemma_render(turns: list[dict]) -> str:
    role = {"user": "user", "system": "user", "assistant": "model"}
    return "".join(f"<start_of_turn>{role.get(t['role'], 'user')}\n{t['content']}<end_of_turn>\n" for t in turns)


def render_conversation(tokenizer: Any, turns: list[dict]) -> str:
    """A conversation in the tokenizer's chat template (Gemma's turn format when it has none)."""
    if getattr(tokenizer, "chat_template", None):
        try:
            text = tokenizer.apply_chat_template(turns, tokenize=False)
            bos = tokenizer.bos_token or ""
            return text[len(bos):] if bos and text.startswith(bos) else text  # extraction adds BOS
        except Exception:  # templates that insist on strict user/assistant alternation
            pass
    return _gemma_render(turns)


def _ordered(corpus: str, tokenizer: Any, seed: int) -> list[str]:
    from assay.data import sources

    if corpus == "wiki":
        texts = sources.wikipedia_texts()
    elif corpus == "chat":
        texts = [render_conversation(tokenizer, c) for c in sources.sharegpt_conversations()]
    elif corpus == "chat-user":
        texts = [c[0]["content"] for c in sources.sharegpt_conversations() if c[0]["role"] == "user"]
    else:
        raise ValueError(f"corpus must be one of {CORPORA}, not {corpus!r}")
    texts = [t for t in texts if t.strip()]
    random.Random(seed).shuffle(texts)
    return texts


def _take(texts: list[str], tokenizer: Any, n_tokens: int, max_tokens: int) -> list[str]:
    out, total = [], 0
    for start in range(0, len(texts), 256):
        batch = texts[start:start + 256]
        for text, ids in zip(batch, tokenizer(batch, add_special_tokens=False)["input_ids"]):
            out.append(text)
            total += min(len(ids), max_tokens) + 1
            if total >= n_tokens:
                return out
    return out


def training_texts(corpus: str, tokenizer: Any, n_tokens: int, max_tokens: int = 1024, seed: int = 0) -> list[str]:
    """Texts from the front of the seeded order holding about `n_tokens` tokens (each cut at max_tokens)."""
    return _take(_ordered(corpus, tokenizer, seed), tokenizer, n_tokens, max_tokens)


def held_out_texts(corpus: str, tokenizer: Any, n_tokens: int, max_tokens: int = 1024, seed: int = 0,
                   skip: int = 0) -> list[str]:
    """Texts from the back of the seeded order (never training text unless the corpus runs out)."""
    return _take(_ordered(corpus, tokenizer, seed)[::-1][skip:], tokenizer, n_tokens, max_tokens)


def activation_stream(lm: Any, corpus: str, layer: int, n_tokens: int, *, texts: list[str] | None = None,
                      seed: int = 0, max_tokens: int = 1024, chunk_tokens: int = 8192,
                      progress: bool = True, epochs: int = 1) -> Iterator[torch.Tensor]:
    """Per-token activations `[m, d_model]` at `layer` (cached by the activations package).

    With `epochs > 1` the same tokens come again, each pass in a new seeded order: on a CPU,
    extraction costs far more than an SAE step, so reusing tokens buys training steps cheaply.
    """
    from assay.activations import extract

    texts = texts if texts is not None else training_texts(corpus, lm.tokenizer, n_tokens, max_tokens, seed)
    chat = corpus == "chat-user"
    acts = extract(lm, texts, [layer], dataset_fingerprint=sha256_json([corpus, texts]), features=("all.mean",),
                   store_tokens=True, chat=chat, max_tokens=max_tokens, progress=progress)
    # "user" = the user's own words for one-turn chat prompts, and every token but BOS otherwise.
    mask = "user" if chat else "all"
    return itertools.chain.from_iterable(
        acts.iter_tokens(layer, chunk_tokens, mask=mask, shuffle_seed=seed + epoch) for epoch in range(epochs))
