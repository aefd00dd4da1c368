"""Activation records: which context windows show a latent, to explain it and to test the explanation.

The documents, one after another, are cut into non-overlapping windows of exactly `ctx_len` tokens
(delphi's 32 by default; a window may run across a document boundary, so short prompts count too).
Every window has the same length on purpose: a detector that counts explanation tokens in a window
would otherwise score long windows higher, and a latent that fires at random would look
interpretable whenever its activating windows were longer than its silent ones. For each latent we
keep its top-activating windows (shown to the explainer) and, held out from them, activating
windows sampled evenly across activation quantiles plus as many windows where it does not fire at
all (shown to the scorer). A latent that fires in every window has no true negative, and its
detection is scored as a failure (chance), never against its weakest windows. Sampling across
quantiles matters: an explanation drawn from the strongest examples is also tested on the weak
ones, where it is most often wrong.

Two passes over the activations keep memory bounded: the first counts how often every latent
fires (no [tokens, d_sae] array is ever built), the second keeps only the chosen latents' columns.
The source is either a list of `[t, n_latents]` tensors or a callable `i -> [t, n_latents]`
(e.g. an SAE encoding document i on demand), so nothing here knows about models.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from assay.errors import InputError

Acts = Sequence[torch.Tensor] | Callable[[int], torch.Tensor]


@dataclass
class Window:
    """One context window and one latent's activation on each of its tokens."""

    doc: int
    start: int
    tokens: list[int]
    acts: np.ndarray  # float32 [len(tokens)]
    quantile: int = -1  # activation-quantile bin of a held-out activating window (0 = weakest); -1 otherwise

    @property
    def max_act(self) -> float:
        return float(self.acts.max()) if len(self.acts) else 0.0


@dataclass
class LatentRecord:
    """A latent's evidence: what the explainer sees and what the scorer is tested on."""

    latent: int
    group: str  # where the latent came from: "random", "given", ...
    frequency: float  # fraction of all tokens on which it fires (activation > 0)
    explain: list[Window] = field(default_factory=list)
    activating: list[Window] = field(default_factory=list)
    non_activating: list[Window] = field(default_factory=list)  # windows where it never fires; may be empty

    @property
    def scorable(self) -> bool:
        """Explainable and testable; without non-activating windows the detection test is a failure."""
        return bool(self.explain) and bool(self.activating)


def _doc_acts(acts: Acts, i: int) -> torch.Tensor:
    a = acts(i) if callable(acts) else acts[i]
    if a.ndim != 2:
        raise InputError(f"activations of document {i} have shape {tuple(a.shape)}; expected [tokens, n_latents]")
    return a


def firing_frequency(token_ids: Sequence[torch.Tensor], acts: Acts, progress: bool = False) -> np.ndarray:
    """Fraction of all tokens on which each latent fires, streamed one document at a time."""
    from rich.progress import track

    if not token_ids:
        raise InputError("no documents to read activations from; pass at least one text")
    counts, total = None, 0
    for i in track(range(len(token_ids)), description="latent frequencies", disable=not progress):
        a = _doc_acts(acts, i)
        if len(a) != len(token_ids[i]):
            raise InputError(f"document {i}: {len(token_ids[i])} token ids but {len(a)} activation rows")
        fired = (a > 0).sum(0, dtype=torch.int64)
        counts = fired if counts is None else counts + fired
        total += len(a)
    if total == 0:
        raise InputError("the documents hold no tokens; pass non-empty texts")
    return (counts.double() / total).numpy()


def _windows(n_tokens: int, ctx_len: int) -> np.ndarray:
    """Start offsets, in the documents laid end to end, of every whole window of `ctx_len` tokens
    (the last partial one is dropped: every window has the same length)."""
    return np.arange(0, n_tokens - ctx_len + 1, ctx_len, dtype=np.int64)


def collect_records(
    token_ids: Sequence[torch.Tensor],
    acts: Acts,
    latents: dict[int, str],
    frequency: np.ndarray,
    *,
    ctx_len: int = 32,
    n_explain: int = 20,
    n_quantiles: int = 10,
    per_quantile: int = 2,
    seed: int = 0,
    progress: bool = False,
) -> list[LatentRecord]:
    """A `LatentRecord` for each latent in `latents` (id -> group), in that order.

    At most half of a latent's activating windows are used to explain it, so a rare latent still
    has held-out windows to be tested on. A latent that never fires gets an empty (unscorable) record.
    """
    from rich.progress import track

    if ctx_len < 1 or n_explain < 1 or n_quantiles < 1 or per_quantile < 1:
        raise InputError("ctx_len, n_explain, n_quantiles and per_quantile must all be >= 1")
    ids = list(latents)
    n_latents = len(frequency)
    bad = [j for j in ids if not 0 <= j < n_latents]
    if bad:
        raise InputError(f"latent ids {bad[:5]} are out of range: this dictionary has {n_latents} latents (0..{n_latents - 1})")
    cols = torch.as_tensor(ids, dtype=torch.long)
    # Second pass: only the chosen latents' columns, laid end to end: [tokens, n_chosen].
    kept = [_doc_acts(acts, i)[:, cols].float().numpy()
            for i in track(range(len(token_ids)), description="activating windows", disable=not progress)]
    flat = np.concatenate(kept) if kept else np.zeros((0, len(ids)), np.float32)
    flat_ids = torch.cat([t.reshape(-1).long() for t in token_ids]).numpy() if token_ids else np.zeros(0, np.int64)
    doc_of = np.repeat(np.arange(len(kept)), [len(k) for k in kept])
    pos_of = np.concatenate([np.arange(len(k)) for k in kept]) if kept else np.zeros(0, np.int64)
    starts = _windows(len(flat), ctx_len)
    wmax = (flat[: len(starts) * ctx_len].reshape(len(starts), ctx_len, len(ids)).max(1) if len(starts)
            else np.zeros((0, len(ids)), np.float32))

    rng = np.random.default_rng(seed)
    records = []
    for j, latent in enumerate(ids):
        rec = LatentRecord(latent=latent, group=latents[latent], frequency=float(frequency[latent]))

        def window(w: int, quantile: int = -1) -> Window:
            a = int(starts[w])
            return Window(int(doc_of[a]), int(pos_of[a]), flat_ids[a:a + ctx_len].tolist(),
                          flat[a:a + ctx_len, j].copy(), quantile)

        m = wmax[:, j]
        firing = np.nonzero(m > 0)[0]
        firing = firing[np.argsort(-m[firing], kind="stable")]
        n_top = min(n_explain, len(firing) // 2) if len(firing) > 1 else 0
        rec.explain = [window(w) for w in firing[:n_top]]
        # Held-out activating windows: equal-count bins by activation rank, strongest bin first in
        # `firing`, so quantile 0 (weakest) is the last chunk.
        held = firing[n_top:]
        chosen: list[tuple[int, int]] = []
        for q, chunk in enumerate(reversed(np.array_split(held, min(n_quantiles, len(held))) if len(held) else [])):
            pick = rng.choice(chunk, size=min(per_quantile, len(chunk)), replace=False)
            chosen += [(int(w), q) for w in sorted(pick)]
        rec.activating = [window(w, q) for w, q in chosen]
        silent = np.nonzero(m == 0)[0]
        neg = rng.choice(silent, size=min(len(chosen), len(silent)), replace=False) if len(chosen) else []
        rec.non_activating = [window(int(w)) for w in sorted(neg)]
        records.append(rec)
    return records


def firing_positions(window: Window, threshold: float = 0.3) -> list[int]:
    """Positions where the latent fires strongly in this window: above `threshold` x its maximum
    here (delphi's rule), so a latent with a faint, ever-present floor marks only its peaks."""
    top = window.max_act
    return [] if top <= 0 else [i for i, a in enumerate(window.acts) if a > threshold * top]


def render(tokens: Sequence[int], decode: Callable[[list[int]], str], marked: Sequence[int] = ()) -> str:
    """A window as text, with the tokens at `marked` positions wrapped in <<...>> (a run of
    adjacent marked tokens becomes one span, so multi-token words read naturally)."""
    marked, out = set(marked), []
    for i, t in enumerate(tokens):
        piece = decode([int(t)])
        if i in marked and i - 1 not in marked:
            piece = "<<" + piece
        if i in marked and i + 1 not in marked:
            piece = piece + ">>"
        out.append(piece)
    return "".join(out).replace("\n", " ")
