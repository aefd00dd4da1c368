"""Explainers: a latent's top-activating windows in, a short description of what it fires on out.

Three behind one interface (`explain(record) -> Explanation`):
- `TokensExplainer` (no language model): the tokens carrying most of the latent's activation mass,
  plus its commonest lead-in n-gram. Its structured form (the token set) is what the rule-based
  scorer tests, so the pair is a cheap, deterministic floor any LM explainer should beat.
- `HFExplainer`: a local causal LM, prompted with marked windows, greedy decoding.
- `ChatExplainer`: any OpenAI-compatible `/chat/completions` endpoint, over the standard library.
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from assay.autointerp.records import LatentRecord, firing_positions, render
from assay.errors import AssayError, InputError

API_KEY_ENV = "ASSAY_EXPLAINER_API_KEY"
INSTRUCTION = ("Each excerpt below is from a text on which one feature of a language model fires; the tokens it "
               "fires on most are marked <<like this>>. Describe in a few words what the feature fires on.")


@dataclass(frozen=True)
class Explanation:
    text: str
    tokens: tuple[int, ...] = ()  # the token ids it fires on: only the tokens explainer fills this


class Explainer(Protocol):
    name: str

    def explain(self, record: LatentRecord) -> Explanation: ...

    def settings(self) -> dict[str, Any]: ...


def _quote(piece: str) -> str:
    return json.dumps(piece, ensure_ascii=False)


class TokensExplainer:
    """The tokens holding `coverage` of the latent's activation mass in its top windows (at most
    `max_tokens`), and the `context`-token lead-in most often seen before its peak."""

    name = "tokens"

    def __init__(self, decode: Callable[[list[int]], str], max_tokens: int = 5, coverage: float = 0.8,
                 context: int = 2):
        self.decode, self.max_tokens, self.coverage, self.context = decode, max_tokens, coverage, context

    def settings(self) -> dict[str, Any]:
        return {"max_tokens": self.max_tokens, "coverage": self.coverage, "context": self.context}

    def explain(self, record: LatentRecord) -> Explanation:
        mass: dict[int, float] = defaultdict(float)
        leads: Counter = Counter()
        for w in record.explain:
            for t, a in zip(w.tokens, w.acts):
                if a > 0:
                    mass[t] += float(a)
            peak = int(w.acts.argmax())
            if peak >= self.context:
                leads[tuple(w.tokens[peak - self.context: peak + 1])] += 1
        if not mass:
            return Explanation("never fires")
        total, chosen, covered = sum(mass.values()), [], 0.0
        for t, m in sorted(mass.items(), key=lambda kv: -kv[1])[: self.max_tokens]:
            chosen.append(t)
            covered += m
            if covered >= self.coverage * total:
                break
        text = "fires on " + ", ".join(_quote(self.decode([t])) for t in chosen)
        (gram, count), = leads.most_common(1) or [((), 0)]
        if count >= 2:  # a lead-in seen once is an anecdote, not a pattern
            text += f" (also {_quote(self.decode(list(gram)))})"
        return Explanation(text, tuple(chosen))


def explainer_prompt(record: LatentRecord, decode: Callable[[list[int]], str], n_windows: int) -> str:
    lines = [f"Excerpt {i + 1}: {render(w.tokens, decode, firing_positions(w))}"
             for i, w in enumerate(record.explain[:n_windows])]
    return INSTRUCTION + "\n\n" + "\n".join(lines)


class HFExplainer:
    """A local causal LM (e.g. the bundled gemma-3-270m) continuing "The feature fires on".
    Greedy, so a rerun gives the same explanation."""

    def __init__(self, lm: Any, max_new_tokens: int = 30, n_windows: int = 10):
        self.lm, self.max_new_tokens, self.n_windows = lm, max_new_tokens, n_windows
        self.name = f"hf:{lm.name}"

    def settings(self) -> dict[str, Any]:
        return {"model": self.lm.name, "max_new_tokens": self.max_new_tokens, "n_windows": self.n_windows}

    def explain(self, record: LatentRecord) -> Explanation:
        import torch

        tok = self.lm.tokenizer
        decode = lambda ids: tok.decode(ids)  # noqa: E731
        prompt = explainer_prompt(record, decode, self.n_windows) + "\n\nThe feature fires on"
        enc = tok(prompt, return_tensors="pt").to(self.lm.device)
        with torch.inference_mode():
            out = self.lm.model.generate(**enc, max_new_tokens=self.max_new_tokens, do_sample=False,
                                         pad_token_id=tok.pad_token_id or tok.eos_token_id)
        text = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        return Explanation(clean(text))


def clean(text: str) -> str:
    """The first line of a generation, stripped; a blank answer is said to be blank, not hidden."""
    line = text.strip().split("\n")[0].strip()
    return line or "(empty explanation)"


class ChatExplainer:
    """An OpenAI-compatible chat endpoint (`base_url` ending in /v1). The key, if the server needs
    one, comes from $ASSAY_EXPLAINER_API_KEY so it never lands in a command line or a result file."""

    def __init__(self, base_url: str, model: str, decode: Callable[[list[int]], str], timeout: float = 60.0,
                 max_tokens: int = 60, n_windows: int = 10):
        if not model:
            raise InputError(f"--explainer {base_url} needs --explainer-model (the model name the endpoint serves)")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.decode, self.timeout = model, decode, timeout
        self.max_tokens, self.n_windows = max_tokens, n_windows
        self.name = f"chat:{model}"

    def settings(self) -> dict[str, Any]:
        return {"url": self.url, "model": self.model, "max_tokens": self.max_tokens, "n_windows": self.n_windows}

    def explain(self, record: LatentRecord) -> Explanation:
        import urllib.error
        import urllib.request

        body = {"model": self.model, "temperature": 0, "max_tokens": self.max_tokens, "messages": [
            {"role": "system", "content": "You explain features of language models in one short phrase."},
            {"role": "user", "content": explainer_prompt(record, self.decode, self.n_windows)}]}
        headers = {"Content-Type": "application/json"}
        if os.environ.get(API_KEY_ENV):
            headers["Authorization"] = f"Bearer {os.environ[API_KEY_ENV]}"
        req = urllib.request.Request(self.url, data=json.dumps(body).encode(), headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                reply = json.loads(resp.read().decode())
            return Explanation(clean(reply["choices"][0]["message"]["content"] or ""))
        except urllib.error.HTTPError as err:
            raise AssayError(f"explainer endpoint {self.url} answered HTTP {err.code} ({err.reason}); check the URL, "
                             f"--explainer-model and ${API_KEY_ENV}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as err:
            raise AssayError(f"explainer endpoint {self.url} unreachable ({err}); is the server running?") from None
        except (ValueError, KeyError, IndexError, TypeError) as err:
            raise AssayError(f"explainer endpoint {self.url} sent no chat completion ({type(err).__name__}: {err}); "
                             "is it OpenAI-compatible?") from None


def parse_spec(spec: str, what: str = "--explainer") -> tuple[str, str]:
    """`tokens` | `rule` | `hf:NAME` | `http(s)://host:port/v1` -> (kind, argument)."""
    if spec in ("tokens", "rule"):
        return spec, ""
    if spec.startswith("hf:") and len(spec) > 3:
        return "hf", spec[3:]
    if spec.startswith(("http://", "https://")):
        return "chat", spec
    raise InputError(f"{what} {spec!r} is not understood; use 'tokens' (or 'rule' for the scorer), 'hf:MODEL' "
                     "(an HF id, local directory or gemma-3-270m) or an OpenAI-compatible URL such as "
                     "http://localhost:8000/v1")


def resolve_specs(explainer: str, scorer: str | None, default_lm: str | None = None) -> tuple[tuple[str, str], ...]:
    """(explainer kind, argument), (scorer kind, argument), checked as a pair before anything loads.
    The scorer defaults to the rule scorer for the tokens explainer, to the explainer's own model
    for `hf:`, and to `default_lm` (the SAE's model) for an endpoint."""
    kind, arg = parse_spec(explainer, "--explainer")
    if kind == "rule":
        raise InputError("--explainer rule is a scorer; the explainers are 'tokens', 'hf:MODEL' and an "
                         "OpenAI-compatible URL")
    if scorer is None:
        scorer = {"tokens": "rule", "hf": explainer}.get(kind, f"hf:{default_lm or 'gemma-3-270m'}")
    skind, sarg = parse_spec(scorer, "--scorer")
    if skind in ("tokens", "chat"):
        raise InputError(f"--scorer {scorer!r}: a scorer is 'rule' or 'hf:MODEL' (it reads Yes/No "
                         "probabilities, which a chat endpoint does not give)")
    if skind == "rule" and kind != "tokens":
        raise InputError("--scorer rule tests the token set of the 'tokens' explainer and cannot read the free text "
                         f"of {explainer!r}; use --scorer hf:MODEL")
    return (kind, arg), (skind, sarg)
