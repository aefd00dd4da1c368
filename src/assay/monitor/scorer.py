"""`Monitor`: a loaded bundle and its model, scoring prompts live exactly as they were scored offline.

A prompt goes through the same code as extraction: the same chat formatting and cut
(`models.chat`), right padding and a forward pass that stops after the probe's layer
(`activations.forward`), then the probe's input read from the residual batch as the cache is read
(`probes.inputs.read_live`), so a live score equals the score of the cached activations the
thresholds were set on (tests hold it to that). `verdicts_from_residual` is the one step from
activations to a verdict, shared with `monitor.generate`, whose probe reads a generation's prefill.
A server tokenises each prompt once, on its counting thread (`TokenCounter`), and scores the
formatted prompts (`score_formatted`).
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from assay.activations.batching import length_order, token_budget_batches
from assay.activations.extraction import default_token_budget, pad_prompts
from assay.activations.forward import residual_stream
from assay.errors import ConfigMismatchError, InputError, ScoringError
from assay.models.chat import (FormattedPrompt, chat_affixes, check_conversation, cut_prompts, format_conversation,
                               format_prompts)
from assay.monitor.bundle import Bundle, load_bundle
from assay.probes.inputs import InputSpec, read_live

log = logging.getLogger(__name__)

# Padding allowed per batch, as a fraction of real tokens. Measured with benchmarks/monitor_load.py:
# a server's micro-batches of random prompts were 45-58% padding when only the token budget split
# them, against 10% for the offline path over a whole length-sorted file.
MAX_PADDING = 0.25
SERVE_MAX_TOKENS = 4096  # default longest prompt a server accepts: bounds one request's memory and time


@dataclass
class Verdict:
    score: float  # the probe's logit (higher = more harmful)
    probability: float  # sigmoid(score): the probe's own probability, not calibrated to any traffic's base rate
    flagged: dict[str, bool]  # at each of the bundle's thresholds
    n_tokens: int
    token_scores: list[float] | None = None  # token-level probes: the logit each token alone would give
    tokens: list[str] | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {"score": self.score, "probability": self.probability, "flagged": self.flagged, "n_tokens": self.n_tokens}
        if self.token_scores is not None:
            out |= {"token_scores": self.token_scores, "tokens": self.tokens}
        return out


class Formats:
    """Prompts formatted as the monitor reads them, with `self.tokenizer`, uncut: `Monitor.
    score_formatted` cuts a text to the bundle's limit and refuses a conversation over it (cutting
    one would drop turns), so a server can check the uncut length first."""

    tokenizer: Any

    def format_texts(self, texts: Sequence[str]) -> list[FormattedPrompt]:
        """Each text as one user turn."""
        return format_prompts(self.tokenizer, list(texts), chat=True) if len(texts) else []

    def format_conversations(self, conversations: Sequence[Sequence[dict]]) -> list[FormattedPrompt]:
        return [format_conversation(self.tokenizer, c) for c in conversations]

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(p.input_ids) for p in self.format_texts(texts)]


@dataclass
class Monitor(Formats):
    """A bundle ready to score: `score_texts` for prompts, `score_messages` for conversations.
    Not thread-safe (its tokenizer is not): a second thread scores through a `replica()`."""

    bundle: Bundle
    lm: Any
    max_tokens: int = SERVE_MAX_TOKENS
    token_budget: int | None = None
    _spec: InputSpec = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.bundle.check_model(self.lm)
        recorded = self.bundle.spec.get("chat_format")
        if recorded is not None and list(chat_affixes(self.lm.tokenizer)) != list(recorded):
            raise ConfigMismatchError(f"the tokenizer's chat format differs from the one bundle {self.bundle.path} "
                                      "was calibrated with; use the bundle's model and tokenizer")
        self._spec = InputSpec.from_dict({**self.bundle.inputs, "layer": self.bundle.layer})
        if self._spec.reads not in ("pooled", "tokens"):
            raise InputError(f"bundle {self.bundle.path} reads {self._spec.reads!r}; a monitor serves probes on "
                             "the model's activations (pooled or tokens)")
        self.token_budget = self.token_budget or default_token_budget(self.lm.device)
        self._check_probe_fits()

    @torch.inference_mode()
    def _check_probe_fits(self) -> None:
        """The probe reads vectors of the model's width at a layer the model has: scored once on zeros
        here, so a bundle for another width fails at load, not on the first request."""
        d, layer = self.lm.d_model, self.bundle.layer
        if not 0 <= layer < self.lm.n_layers:
            raise ConfigMismatchError(f"bundle {self.bundle.path} reads layer {layer}, but the model has "
                                      f"{self.lm.n_layers} blocks; use the bundle's model")
        x = torch.zeros(1, d) if self._spec.reads == "pooled" else torch.zeros(1, 1, d)
        try:
            z = self.bundle.probe.score(x) if x.ndim == 2 else self.bundle.probe.score(x, torch.ones(1, 1, dtype=torch.bool))
            ok = np.isfinite(np.asarray(z, dtype=np.float64)).all() and np.asarray(z).size == 1
        except (RuntimeError, ValueError, IndexError) as err:
            raise ConfigMismatchError(f"bundle {self.bundle.path}'s probe does not read this model's {d}-wide "
                                      f"activations ({type(err).__name__}: {err}); use the bundle's model") from None
        if not ok:
            raise ConfigMismatchError(f"bundle {self.bundle.path}'s probe gives no finite score on this model's "
                                      f"{d}-wide activations; build the bundle again")

    @classmethod
    def load(cls, path: str, *, model: str | None = None, dtype: str | None = None, device: str | None = None,
             max_tokens: int = SERVE_MAX_TOKENS) -> "Monitor":
        """The bundle at `path` and its model (`model` overrides where the same weights live)."""
        from assay.models import load

        from assay.runtime import choose_dtype

        bundle = load_bundle(path, device="cpu")
        if dtype is None:  # the calibration's dtype by default, but say so where it runs slowly here
            dtype = bundle.spec["dtype"]
            fast, why = choose_dtype("auto", device)
            if fast != dtype:
                log.warning("bundle %s was calibrated in %s, which this hardware runs slowly (%s); --dtype %s is "
                            "faster, at the cost of scores moving slightly from the calibration", path, dtype,
                            why, fast)
        elif dtype != bundle.spec["dtype"]:
            log.warning("scoring in %s; bundle %s was calibrated in %s, so scores near a threshold may flip",
                        dtype, path, bundle.spec["dtype"])
        lm = load(model or bundle.spec["model"]["source"], dtype=dtype, device=device)
        return cls(bundle, lm, max_tokens=max_tokens)

    # -- what the server needs --------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.bundle.name

    @property
    def thresholds(self) -> dict[str, float]:
        return self.bundle.thresholds

    @property
    def default_threshold(self) -> str:
        return self.bundle.default_threshold

    def describe(self) -> dict[str, Any]:
        s = self.bundle.spec
        return {"name": s["name"], "model": s["model"], "layer": s["layer"], "dtype": s["dtype"],
                "inputs": s["inputs"], "thresholds": s["thresholds"], "default_threshold": s["default_threshold"],
                "card": s.get("card", {}), "max_tokens": self.max_tokens}

    @property
    def tokenizer(self) -> Any:
        return self.lm.tokenizer

    @property
    def token_limit(self) -> int | None:
        """The bundle's: its prompts were cut to this many tokens when the thresholds were set."""
        return self.bundle.spec.get("max_tokens")

    def replica(self) -> "Monitor":
        """A scorer for another thread: the same weights and probe, its own copy of the tokenizer
        (a Hugging Face fast tokenizer must not be used from two threads at once; the forward pass
        may: it runs in inference mode and `residual_stream` keeps each thread's hooks apart)."""
        twin = copy.copy(self)
        twin.lm = self.lm.with_tokenizer(copy.deepcopy(self.lm.tokenizer))
        return twin

    def token_counter(self) -> "TokenCounter":
        """Counts with a private copy of the tokenizer, for a thread other than the scoring one."""
        return TokenCounter(self.lm.tokenizer)

    def score_texts(self, texts: Sequence[str]) -> list[Verdict]:
        """Verdicts for prompts, each formatted as one user turn (cut to the bundle's token limit,
        as extraction cut them)."""
        return self.score_formatted(self.format_texts(texts))

    def score_messages(self, conversations: Sequence[Sequence[dict]]) -> list[Verdict]:
        return self.score_formatted(self.format_conversations(conversations), conversations=True)

    def score_formatted(self, prompts: Sequence[FormattedPrompt], *, conversations: bool = False) -> list[Verdict]:
        """Verdicts for prompts formatted uncut (`format_texts`, `format_conversations`, or a
        `TokenCounter` on another thread): a prompt over the bundle's token limit has the end of its
        user text cut, as extraction cut it; a conversation over it is an error (`check_conversation`)."""
        if conversations:
            return self._score([check_conversation(p, self.token_limit) for p in prompts])
        return self._score(cut_prompts(prompts, self.token_limit))

    def format_messages(self, conversation: Sequence[dict]) -> FormattedPrompt:
        """A conversation as the probe reads it (over the bundle's token limit is an error, not a cut)."""
        return format_conversation(self.tokenizer, conversation, self.token_limit)

    # -- the forward pass -------------------------------------------------------------------
    def _score(self, prompts: list[FormattedPrompt]) -> list[Verdict]:
        if not prompts:
            return []
        lengths = [len(p.input_ids) for p in prompts]
        out: list[Verdict | None] = [None] * len(prompts)
        for batch in token_budget_batches(length_order(lengths), lengths, self.token_budget, MAX_PADDING):
            for i, verdict in zip(batch, self._score_batch([prompts[i] for i in batch]), strict=True):
                out[i] = verdict
        return out  # type: ignore[return-value]  # every index is in exactly one batch

    @torch.inference_mode()
    def _score_batch(self, prompts: list[FormattedPrompt]) -> list[Verdict]:
        layer = self.bundle.layer
        ids, attn, roles, _ = pad_prompts(prompts, self.lm.tokenizer.pad_token_id, self.lm.device)
        h = residual_stream(self.lm, ids, attn, [layer])[layer]
        return self.verdicts_from_residual(h, roles, prompts)

    # -- from activations to a verdict: the one path, for scoring and for generation alike ---
    @torch.inference_mode()
    def verdicts_from_residual(self, h: torch.Tensor, roles: torch.Tensor,
                               prompts: Sequence[FormattedPrompt]) -> list[Verdict]:
        """Verdicts from the residual stream `h [b, T, d]` after the bundle's layer for a right-padded
        batch of `prompts` with their `roles [b, T]` (-1 on padding), however it was captured: the
        scoring forward that stops at the layer, or a generation's prefill."""
        if h.ndim != 3 or tuple(roles.shape) != tuple(h.shape[:2]) or len(prompts) != h.shape[0]:
            raise ValueError(f"residual stream {tuple(h.shape)}, roles {tuple(roles.shape)} and {len(prompts)} "
                             "prompts do not line up; pass [b, T, d], [b, T] and b prompts")
        probe = self.bundle.probe
        X, M, kept = read_live(self._spec, h, roles)
        if kept is None:
            return [self._verdict(float(z), p) for z, p in zip(probe.score(X), prompts, strict=True)]
        scores, token_scores = probe.score(X, M), probe.token_scores(X, M)
        out = []
        for j, p in enumerate(prompts):
            ids_j = [p.input_ids[t] for t in kept[j].tolist()]
            out.append(self._verdict(float(scores[j]), p, [float(v) for v in token_scores[j][: len(ids_j)]],
                                     self.lm.tokenizer.convert_ids_to_tokens(ids_j)))
        return out

    def _verdict(self, z: float, prompt: FormattedPrompt, token_scores: list[float] | None = None,
                 tokens: list[str] | None = None) -> Verdict:
        if not math.isfinite(z):  # NaN compares false with every threshold: it would read as "not flagged"
            raise ScoringError(f"the probe of bundle {self.bundle.path} gave a score of {z} for a {len(prompt.input_ids)}"
                               "-token prompt; no verdict (check the model's dtype and the bundle's probe)")
        return Verdict(score=z, probability=_sigmoid(z), n_tokens=len(prompt.input_ids),
                       flagged={k: z > t for k, t in self.thresholds.items()}, token_scores=token_scores,
                       tokens=tokens)


class TokenCounter(Formats):
    """Formats prompts as the monitor does, with a private copy of the tokenizer, for the server's
    counting thread: a Hugging Face fast tokenizer must not be used from two threads at once, and a
    server that counts on its scoring thread makes every request wait behind a forward pass before
    it can even join the next batch (measured: half-empty micro-batches at 32 concurrent clients).
    The formatted prompts are what the scoring thread reads: each prompt is tokenised once."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = copy.deepcopy(tokenizer)


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))
