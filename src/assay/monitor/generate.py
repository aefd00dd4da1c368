"""Generation with the monitor riding on it: the probe reads the prefill the model runs anyway.

A chat is formatted exactly as the monitor formats it (`Monitor.format_messages`), then one forward
pass of the full causal LM fills the KV cache and gives the first token's logits. A forward hook on
the probe's block captures (and does not stop) the residual stream during that pass, and
`Monitor.verdicts_from_residual` turns it into the verdict `Monitor.score_messages` would give: the
monitor costs a hook, a pooling and a dot product, not a second forward. Decoding then runs token
by token on the cache, greedy or sampled, so a server can stream.

    gen = Generator(Monitor.load("bundle/"), refuse_when_flagged=True)
    done = gen.generate([{"role": "user", "content": "hi"}], SamplingParams(max_tokens=64, temperature=0))
    done.text, done.finish_reason, done.prefill.verdict.score

Like `Monitor`, a Generator is not thread-safe: the server runs it on the monitor's one worker.
"""

from __future__ import annotations

import inspect
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from assay.activations.extraction import pad_prompts
from assay.errors import InputError
from assay.models.chat import FormattedPrompt
from assay.monitor.scorer import Monitor, Verdict

REFUSAL = "I can't help with that request."
DEFAULT_MAX_NEW_TOKENS = 512
MAX_STOP_STRINGS = 4  # OpenAI's limit; each stop string is searched for after every token
# Turn-end tokens of chat formats: a chat model ends its answer with these, not always with EOS.
# A turn ends at its end token, or where the model starts another turn (Gemma's <start_of_turn>):
# an answer must not run on into a turn it writes for the user.
TURN_END_TOKENS = ("<end_of_turn>", "<start_of_turn>", "<|eot_id|>", "<|im_end|>", "<|im_start|>", "<|end|>")


@dataclass(frozen=True)
class SamplingParams:
    """How to decode. `temperature=0` is greedy; otherwise sample from softmax(logits / temperature)
    cut to the smallest set of tokens whose probability reaches `top_p`. `seed` makes sampling
    repeatable (None: a fresh random seed)."""

    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise InputError(f"max_tokens must be a positive integer, got {self.max_tokens!r}")
        if not 0.0 <= self.temperature <= 2.0:
            raise InputError(f"temperature must be between 0 and 2, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise InputError(f"top_p must be in (0, 1], got {self.top_p}")
        if len(self.stop) > MAX_STOP_STRINGS or not all(isinstance(s, str) and s for s in self.stop):
            raise InputError(f"stop must be at most {MAX_STOP_STRINGS} non-empty strings, got {self.stop!r}")


@dataclass(frozen=True)
class Prefilled:
    """The first event of a generation: the prompt's verdict, read from the prefill."""

    verdict: Verdict | None  # None when the generator runs without its probe (benchmarks)
    flagged: bool | None  # at the generator's threshold
    threshold: str
    prompt_tokens: int
    refused: bool


@dataclass(frozen=True)
class Delta:
    """New text, in order; the deltas of a generation concatenate to its final text."""

    text: str


@dataclass(frozen=True)
class Completion:
    """The last event of a generation. `finish_reason`: "stop" (end of turn or a stop string),
    "length" (max_tokens), "content_filter" (refused) or "cancelled" (`should_stop` said so)."""

    text: str
    token_ids: list[int]
    finish_reason: str
    prefill: Prefilled
    prefill_seconds: float
    decode_seconds: float

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)


Event = Prefilled | Delta | Completion


@dataclass
class Generator:
    """Chat generation on the monitor's model with the monitor's verdict on each prompt.

    `threshold` names the operating point `flagged` means (default: the bundle's). With
    `refuse_when_flagged`, a flagged prompt gets `refusal` and finish_reason "content_filter"
    instead of a generation. `max_new_tokens` caps what a request may ask for. `probe=False`
    generates without the hook and verdict (to measure what the monitor costs)."""

    monitor: Monitor
    threshold: str | None = None
    refuse_when_flagged: bool = False
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    refusal: str = REFUSAL
    probe: bool = True
    eos_ids: frozenset[int] = field(init=False)
    _cache_kwarg: str = field(init=False, repr=False)
    _keeps_logits: bool = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.threshold = self.threshold or self.monitor.default_threshold
        if self.threshold not in self.monitor.thresholds:
            raise ValueError(f"unknown threshold {self.threshold!r} for monitor {self.monitor.name}; "
                             f"choose one of {sorted(self.monitor.thresholds)}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        self.eos_ids = _stop_token_ids(self.lm)
        # transformers 5 renamed `past_key_values` to `cache`; take whichever this version's forward has.
        params = inspect.signature(self.lm.model.forward).parameters
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"
        self._keeps_logits = "logits_to_keep" in params

    @property
    def lm(self) -> Any:
        return self.monitor.lm

    @property
    def model_name(self) -> str:
        return str(self.monitor.bundle.spec["model"].get("source") or self.lm.name)

    @property
    def context_length(self) -> int | None:
        return self.lm.max_positions

    # -- the public calls ---------------------------------------------------------------------
    def generate(self, messages: Sequence[dict], params: SamplingParams | None = None,
                 should_stop: Callable[[], bool] | None = None) -> Completion:
        """Run a whole generation and return its Completion."""
        for event in self.stream(messages, params, should_stop):
            if isinstance(event, Completion):
                return event
        raise RuntimeError("generation ended without a Completion")  # stream always ends with one

    def stream(self, messages: Sequence[dict], params: SamplingParams | None = None,
               should_stop: Callable[[], bool] | None = None) -> Iterator[Event]:
        """Prefilled, then Deltas as text is decoded, then the Completion. `should_stop` is asked
        before every decoding step (a client gone, a server stopping)."""
        params = params or SamplingParams(max_tokens=self.max_new_tokens)
        prompt = self._prompt(messages, params)
        start = time.perf_counter()
        logits, cache, verdict = self._prefill(prompt)
        flagged = bool(verdict.flagged[self.threshold]) if verdict is not None else None
        head = Prefilled(verdict, flagged, self.threshold, len(prompt.input_ids),
                         refused=bool(flagged) and self.refuse_when_flagged)
        prefill_s = time.perf_counter() - start
        yield head
        if head.refused:
            yield Delta(self.refusal)
            yield Completion(self.refusal, [], "content_filter", head, prefill_s, 0.0)
            return
        yield from self._decode(logits, cache, params, head, prefill_s, should_stop)

    # -- the pieces -------------------------------------------------------------------------------
    def _prompt(self, messages: Sequence[dict], params: SamplingParams) -> FormattedPrompt:
        if params.max_tokens > self.max_new_tokens:
            raise InputError(f"max_tokens={params.max_tokens} is over this generator's cap of "
                             f"{self.max_new_tokens}; ask for fewer")
        prompt = self.monitor.format_messages(messages)
        n = len(prompt.input_ids)
        if n > self.monitor.max_tokens:
            raise InputError(f"the conversation is {n} tokens, over this monitor's limit of "
                             f"{self.monitor.max_tokens}; send fewer or shorter messages")
        if self.context_length is not None and n + params.max_tokens > self.context_length:
            raise InputError(f"the conversation ({n} tokens) plus max_tokens={params.max_tokens} is over the "
                             f"model's context of {self.context_length} tokens; ask for fewer tokens")
        return prompt

    @torch.inference_mode()
    def _prefill(self, prompt: FormattedPrompt) -> tuple[torch.Tensor, Any, Verdict | None]:
        """Last-position logits, the filled KV cache, and the verdict from the same forward pass."""
        ids, _, roles, _ = pad_prompts([prompt], self.lm.tokenizer.pad_token_id, self.lm.device)
        captured: list[torch.Tensor] = []

        def capture(_module: Any, _args: Any, output: Any) -> None:
            captured.append(output[0] if isinstance(output, tuple) else output)

        handle = self.lm.block(self.monitor.bundle.layer).register_forward_hook(capture) if self.probe else None
        try:
            # No attention mask: one unpadded sequence is plain causal attention, here and in decoding.
            out = self.lm.model(input_ids=ids, use_cache=True, **self._last_logits_only(ids.shape[1]))
        finally:
            if handle is not None:
                handle.remove()
        verdict = self.monitor.verdicts_from_residual(captured[0], roles, [prompt])[0] if self.probe else None
        return out.logits[:, -1], _cache_of(out), verdict

    def _last_logits_only(self, n: int) -> dict[str, Any]:
        """Project only the last position onto the vocabulary. As an index tensor, not `logits_to_keep=1`:
        the slice that 1 makes keeps the prompt's row stride, and torch 2.13's CPU bfloat16 linear takes
        a path 50x slower on such a one-row input (2 s instead of 35 ms for Gemma 3's 262k vocabulary)."""
        if not self._keeps_logits:
            return {}
        return {"logits_to_keep": torch.tensor([n - 1], device=self.lm.device)}

    @torch.inference_mode()
    def _step(self, token: int, cache: Any) -> torch.Tensor:
        ids = torch.tensor([[token]], device=self.lm.device)
        out = self.lm.model(input_ids=ids, use_cache=True, **{self._cache_kwarg: cache})
        return out.logits[:, -1]

    def _decode(self, logits: torch.Tensor, cache: Any, params: SamplingParams, head: Prefilled,
                prefill_s: float, should_stop: Callable[[], bool] | None) -> Iterator[Event]:
        start = time.perf_counter()
        rng = torch.Generator(device=self.lm.device)
        rng.manual_seed(params.seed % 2**63 if params.seed is not None else secrets.randbits(63))
        text = _TextOut(self.lm.tokenizer, params.stop)
        tokens: list[int] = []
        finish = "length"
        while len(tokens) < params.max_tokens:
            if should_stop is not None and should_stop():
                finish = "cancelled"
                break
            token = _pick(logits, params, rng)
            if token in self.eos_ids:
                finish = "stop"
                break
            tokens.append(token)
            delta, hit_stop = text.add(token)
            if delta:
                yield Delta(delta)
            if hit_stop:
                finish = "stop"
                break
            if len(tokens) < params.max_tokens:  # no forward for a token that will never be read
                logits = self._step(token, cache)
        if finish != "cancelled" and (tail := text.finish()):
            yield Delta(tail)
        yield Completion(text.text, tokens, finish, head, prefill_s, time.perf_counter() - start)


@torch.inference_mode()
def _pick(logits: torch.Tensor, params: SamplingParams, rng: torch.Generator) -> int:
    """The next token from `logits [1, V]`: argmax, or a sample at the temperature from the nucleus
    (the fewest most likely tokens whose probability reaches top_p)."""
    if params.temperature == 0:
        return int(logits.argmax(-1))
    probs = torch.softmax(logits[0].float() / params.temperature, dim=-1)
    if params.top_p >= 1.0:
        return _sample(probs, rng)
    # Grow a top-k until it holds the nucleus: a full sort of a 262k vocabulary costs more than a
    # decoding step of a small model, and a nucleus is usually a few dozen tokens.
    k = min(64, len(probs))
    while True:
        top, order = probs.topk(k)
        if k == len(probs) or float(top.sum()) >= params.top_p:
            break
        k = min(8 * k, len(probs))
    # Keep a token while the mass before it is under top_p: the most likely token is always kept.
    nucleus = top[(top.cumsum(0) - top) < params.top_p]
    return int(order[_sample(nucleus, rng)])


def _sample(probs: torch.Tensor, rng: torch.Generator) -> int:
    """An index drawn in proportion to `probs [n]` (unnormalised is fine), by inverting its CDF:
    one cumulative sum, where torch.multinomial costs several times more on a large vocabulary."""
    cdf = probs.double().cumsum(0)
    u = torch.rand(1, generator=rng, dtype=torch.float64, device=probs.device) * cdf[-1]
    return min(int(torch.searchsorted(cdf, u, right=True)), len(probs) - 1)


def _cache_of(out: Any) -> Any:
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def _stop_token_ids(lm: Any) -> frozenset[int]:
    """Tokens that end a chat answer: the generation config's and tokenizer's EOS and the chat
    format's turn-end token (Gemma ends a turn with <end_of_turn>, which is not its EOS)."""
    ids: set[int] = set()
    config = getattr(lm.model, "generation_config", None)
    for value in (getattr(config, "eos_token_id", None), lm.tokenizer.eos_token_id):
        if value is not None:
            ids.update(value if isinstance(value, (list, tuple)) else [value])
    vocab = lm.tokenizer.get_vocab()
    ids.update(vocab[t] for t in TURN_END_TOKENS if t in vocab)
    return frozenset(int(i) for i in ids)


class _TextOut:
    """Decoded text, released in order as tokens arrive.

    Text is decoded in a short window of tokens and released only when it no longer ends in an
    incomplete character (byte-fallback tokens), and the last characters that could start a stop
    string are held back until they cannot; a stop string ends the text before it."""

    def __init__(self, tokenizer: Any, stop: Sequence[str]) -> None:
        self.tokenizer, self.stop = tokenizer, tuple(stop)
        self.hold = max((len(s) for s in self.stop), default=1) - 1
        self.ids: list[int] = []
        self.prefix, self.read = 0, 0  # decode window [prefix, read) is text already accounted for
        self.text, self.sent = "", 0

    def add(self, token: int) -> tuple[str, bool]:
        """(text safe to release now, whether a stop string was reached)."""
        self.ids.append(token)
        new = self._decoded(final=False)
        self.text += new
        if self.stop:
            hits = [i for s in self.stop if (i := self.text.find(s)) >= 0]
            if hits:
                self.text = self.text[: min(hits)]
                return self._release(len(self.text)), True
        return self._release(max(self.sent, len(self.text) - self.hold)), False

    def finish(self) -> str:
        self.text += self._decoded(final=True)
        return self._release(len(self.text))

    def _decoded(self, final: bool) -> str:
        decode = self.tokenizer.decode
        before = decode(self.ids[self.prefix: self.read], skip_special_tokens=True)
        after = decode(self.ids[self.prefix:], skip_special_tokens=True)
        if len(after) <= len(before) or (after.endswith("\ufffd") and not final):
            return ""  # nothing new yet, or a character whose bytes are still arriving
        self.prefix, self.read = self.read, len(self.ids)
        return after[len(before):]

    def _release(self, upto: int) -> str:
        out = self.text[self.sent: upto]
        self.sent = max(self.sent, upto)
        return out
