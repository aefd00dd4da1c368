"""Scorers: how well does an explanation predict where the latent fires? (delphi's two tests)

- detection: shown one held-out window, does the latent fire anywhere in it? Scored over activating
  windows (all activation quantiles) against non-activating ones.
- fuzzing: shown an activating window with some tokens marked, are the marked tokens the ones it
  fires on? Scored over windows marked at the truly firing tokens against the same windows marked
  at as many random other tokens.

Each test gives every sample a score; the latent's score is the AUROC of those over the positive vs
negative samples (0.5 = chance, whatever the scorer's bias towards saying yes); a latent with no
window where it is silent fails detection (0.5). An LM scorer's
sample score is P(" Yes") / (P(" Yes") + P(" No")) at the next token of a fixed prompt, read from
one batched forward pass, never sampled text. The rule scorer counts the tokens explainer's tokens.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from assay.autointerp.explainers import Explanation
from assay.autointerp.records import LatentRecord, firing_positions, render
from assay.errors import InputError
from assay.metrics import auroc


@dataclass(frozen=True)
class Sample:
    tokens: Sequence[int]
    marked: tuple[int, ...]
    label: int  # 1: the latent fires here / these are its tokens; 0: it does not / they are not


def detection_samples(record: LatentRecord) -> list[Sample]:
    return ([Sample(w.tokens, (), 1) for w in record.activating]
            + [Sample(w.tokens, (), 0) for w in record.non_activating])


def fuzzing_samples(record: LatentRecord, rng: np.random.Generator, threshold: float = 0.3) -> list[Sample]:
    """Each held-out activating window twice: marked where it fires, and at as many random tokens
    where it does not (fewer when the window has fewer; none when it fires on every token)."""
    out = []
    for w in record.activating:
        hits = firing_positions(w, threshold)
        others = [i for i in range(len(w.tokens)) if i not in set(hits)]
        if not hits or not others:
            continue
        decoy = rng.choice(others, size=min(len(hits), len(others)), replace=False)
        out += [Sample(w.tokens, tuple(hits), 1), Sample(w.tokens, tuple(sorted(int(i) for i in decoy)), 0)]
    return out


class Scorer(Protocol):
    name: str

    def probabilities(self, explanation: Explanation, samples: list[Sample], test: str) -> np.ndarray: ...

    def settings(self) -> dict[str, Any]: ...


def score_latent(scorer: Scorer, explanation: Explanation, record: LatentRecord,
                 rng: np.random.Generator) -> dict[str, float]:
    """Detection and fuzzing AUROC of one explanation on one latent's held-out windows (NaN when a
    test has no positives or no negatives)."""
    out = {}
    for test, samples in (("detection", detection_samples(record)), ("fuzzing", fuzzing_samples(record, rng))):
        if test == "detection" and record.activating and not record.non_activating:
            # It fires in every window: no explanation can say where it does not, so detection
            # fails (chance). Contrasting it with its weakest windows instead rewarded dense latents.
            out[test] = NO_NEGATIVES_SCORE
            continue
        if not samples:
            out[test] = float("nan")
            continue
        p = scorer.probabilities(explanation, samples, test)
        out[test] = auroc(p, [s.label for s in samples])
    return out


NO_NEGATIVES_SCORE = 0.5  # detection of a latent with no window where it is silent


class RuleScorer:
    """The tokens explainer's own test: detection = the share of a window's tokens that are in the
    explanation's token set (a share, not a count, so that it cannot grow with a window's length);
    fuzzing = the share of marked tokens that are."""

    name = "rule"

    def settings(self) -> dict[str, Any]:
        return {}

    def probabilities(self, explanation: Explanation, samples: list[Sample], test: str) -> np.ndarray:
        if not explanation.tokens:
            raise InputError("the rule-based scorer tests the token set of the 'tokens' explainer; with another "
                             "explainer use an LM scorer (--scorer hf:MODEL)")
        vocab = set(explanation.tokens)
        if test == "detection":
            return np.array([np.mean([t in vocab for t in s.tokens]) for s in samples], dtype=float)
        return np.array([np.mean([s.tokens[i] in vocab for i in s.marked]) for s in samples], dtype=float)


PROMPTS = {
    "detection": ("A feature of a language model is described as: {explanation}\n\nText: {text}\n\n"
                  "Does the feature fire on any token of this text? Answer Yes or No.\nAnswer:"),
    "fuzzing": ("A feature of a language model is described as: {explanation}\n\nIn the text below some tokens are "
                "marked <<like this>>.\nText: {text}\n\nIs the feature firing on the marked tokens? Answer Yes or "
                "No.\nAnswer:"),
}


class LMScorer:
    """A local causal LM answering each prompt with its next-token probabilities of Yes and No."""

    def __init__(self, lm: Any, batch_size: int = 16):
        self.lm, self.batch_size = lm, batch_size
        self.name = f"hf:{lm.name}"

    @functools.cached_property
    def _yes_no(self) -> tuple[int, int]:
        """The ids of " Yes" and " No", read on first use: a finished run never reads the tokenizer."""
        tok = self.lm.tokenizer
        yes, no = (tok.encode(w, add_special_tokens=False)[0] for w in (" Yes", " No"))
        return yes, no

    def settings(self) -> dict[str, Any]:
        return {"model": self.lm.name, "batch_size": self.batch_size, "prompts": PROMPTS}

    def probabilities(self, explanation: Explanation, samples: list[Sample], test: str) -> np.ndarray:
        decode: Callable[[list[int]], str] = self.lm.tokenizer.decode
        prompts = [PROMPTS[test].format(explanation=explanation.text, text=render(s.tokens, decode, s.marked))
                   for s in samples]
        return yes_probability(self.lm, prompts, *self._yes_no, self.batch_size)


def yes_probability(lm: Any, prompts: list[str], yes: int, no: int, batch_size: int = 16) -> np.ndarray:
    """P(yes) / (P(yes) + P(no)) at the token after each prompt; left padding, so every prompt's
    last token is in the last column, and one forward pass per batch."""
    import torch

    tok, out = lm.tokenizer, []
    side, tok.padding_side = tok.padding_side, "left"
    try:
        for start in range(0, len(prompts), batch_size):
            enc = tok(prompts[start:start + batch_size], return_tensors="pt", padding=True).to(lm.device)
            # Positions count real tokens only, so a left-padded prompt reads as if it were unpadded.
            pos = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)
            with torch.inference_mode():
                logits = lm.model(**enc, position_ids=pos, logits_to_keep=1).logits[:, -1]
            pair = logits[:, [yes, no]].float().log_softmax(-1)
            out.append(pair[:, 0].exp().cpu().numpy())
    finally:
        tok.padding_side = side
    return np.concatenate(out) if out else np.zeros(0)
