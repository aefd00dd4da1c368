"""Explain the SAE latents a sparse probe relies on, and flag those a surface cue explains.

GDM's one positive SAE result: a k-sparse probe's latents exposed spurious cues in their dataset
(a "question mark" latent: only the benign prompts were questions). For each latent we list its
top-activating tokens and examples per class, then test two kinds of explanation:

- token cues: the share of the latent's top activations that sit on a cue token (a question mark,
  a bracket, a chat-template token, the last prompt token);
- prompt cues: how well the latent's max activation per prompt tells prompts with a surface
  property from those without (ends with "?", ends with a bracket: AUROC, folded to >= 0.5), or
  tracks it (length: |Spearman rho|).

A latent is flagged when a token cue holds at least `token_share` of its top activations, or a
prompt cue scores at least `prompt_auroc`. When the cue itself predicts the label (the dataset's
flaw), a latent that tracks the label tracks the cue too: the flag then says the data cannot tell
the two apart, which is the warning a dataset author needs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from assay.metrics import auroc
from assay.models.chat import Role

# token-level cues: (token string, role) -> bool
TOKEN_CUES: dict[str, Callable[[str, int], bool]] = {
    "question_mark": lambda tok, role: "?" in tok,
    "bracket": lambda tok, role: any(c in tok for c in "()[]{}<>") and role == Role.USER,
    "template_token": lambda tok, role: role == Role.TEMPLATE,
}
# prompt-level cues: text -> float (binary cues are scored by AUROC, the rest by |Spearman rho|)
PROMPT_CUES: dict[str, Callable[[str], float]] = {
    "question_mark": lambda t: float(t.rstrip().endswith("?")),
    "bracket": lambda t: float(t.rstrip()[-1:] in ")]}>") if t.strip() else 0.0,
    "length": lambda t: float(len(t)),
}
BINARY_CUES = ("question_mark", "bracket")
CUES = sorted(set(TOKEN_CUES) | set(PROMPT_CUES))


@dataclass
class LatentReport:
    latent: int
    rank: int
    weight: float  # the probe's standardised weight on this latent (sign: + means harmful)
    mean_harmful: float
    mean_benign: float
    top_tokens: list[dict[str, Any]] = field(default_factory=list)
    top_examples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    token_cue_share: dict[str, float] = field(default_factory=dict)
    prompt_cue_auroc: dict[str, float] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def rank_probe_latents(Z: torch.Tensor, latents: Sequence[int], coef: Sequence[float]) -> list[tuple[int, float]]:
    """Latents ordered by how much the probe relies on them: |weight| x the latent's spread."""
    std = Z[:, list(latents)].float().std(0).numpy()
    importance = np.abs(np.asarray(coef, dtype=float)) * std
    order = np.argsort(-importance)
    return [(int(latents[i]), float(np.asarray(coef)[i] * std[i])) for i in order]


@torch.no_grad()
def explain_latents(
    acts: Any,
    sae: Any,
    layer: int,
    ranked: Sequence[tuple[int, float]],
    Z: torch.Tensor,
    texts: Sequence[str],
    labels: Sequence[int],
    tokenizer: Any,
    indices: Sequence[int] | None = None,
    top_n: int = 8,
    token_share: float = 0.5,
    prompt_auroc: float = 0.9,
) -> list[LatentReport]:
    """Reports for the `ranked` latents (from `rank_probe_latents`) over the examples `indices`.

    `Z [len(indices), d_sae]` are the latents the probe read, pooled by its own aggregation
    (`Inputs.read` of its spec): a latent's per-prompt activation, its class means, top examples
    and cue strengths all use them, so they describe what the probe saw. The SAE is applied to each
    token again only to find the tokens a latent fires on."""
    indices = list(range(len(texts))) if indices is None else list(indices)
    ids = [i for i, _ in ranked]
    if Z.shape[0] != len(indices):
        raise ValueError(f"Z has {Z.shape[0]} rows for {len(indices)} examples; pass the rows of `indices`")
    dev = sae.W_enc.device
    per_token: list[tuple[int, int, str, int, torch.Tensor]] = []  # (example, position, token, role, acts[k])
    maxes = Z[:, ids].float().cpu()  # the pooled value, whatever the aggregation (named for the default, all.max)
    for i in indices:
        x, roles, tok_ids = acts.example_tokens(layer, i)
        z = sae.encode(x.to(dev)).float().cpu()[:, ids]
        toks = tokenizer.convert_ids_to_tokens(tok_ids.tolist())
        for p in range(len(z)):
            if (z[p] > 0).any():
                per_token.append((i, p, toks[p], int(roles[p]), z[p]))
    y = np.asarray([labels[i] for i in indices])
    cue_values = {cue: np.asarray([fn(texts[i]) for i in indices]) for cue, fn in PROMPT_CUES.items()}
    reports = []
    for j, (latent, weight) in enumerate(ranked):
        vals = torch.stack([t[4][j] for t in per_token]) if per_token else torch.zeros(0)
        top = torch.argsort(vals, descending=True)[: max(top_n * 4, 32)].tolist() if len(vals) else []
        top = [t for t in top if vals[t] > 0]
        rep = LatentReport(latent=latent, rank=j + 1, weight=weight,
                           mean_harmful=float(maxes[y == 1, j].mean()) if (y == 1).any() else 0.0,
                           mean_benign=float(maxes[y == 0, j].mean()) if (y == 0).any() else 0.0)
        rep.top_tokens = [{"example": per_token[t][0], "position": per_token[t][1], "token": per_token[t][2],
                           "activation": float(vals[t])} for t in top[:top_n]]
        for cue, test in TOKEN_CUES.items():
            hits = [test(per_token[t][2], per_token[t][3]) for t in top]
            rep.token_cue_share[cue] = float(np.mean(hits)) if hits else 0.0
        for cue, values in cue_values.items():
            rep.prompt_cue_auroc[cue] = _cue_strength(cue, values, maxes[:, j].numpy())
        for label, name in ((1, "harmful"), (0, "benign")):
            rows = np.flatnonzero(y == label)
            best = rows[np.argsort(-maxes[rows, j].numpy())][:top_n]
            rep.top_examples[name] = [{"example": indices[r], "activation": float(maxes[r, j]),
                                       "text": texts[indices[r]][:200]} for r in best]
        rep.flags = sorted({c for c, s in rep.token_cue_share.items() if s >= token_share}
                           | {c for c, a in rep.prompt_cue_auroc.items() if a >= prompt_auroc})
        reports.append(rep)
    return reports


def _cue_strength(cue: str, values: np.ndarray, activation: np.ndarray) -> float:
    """How well a latent's per-prompt activation follows a cue: folded AUROC, or |Spearman rho|."""
    if len(set(values.tolist())) < 2 or len(set(activation.tolist())) < 2:
        return 0.0
    if cue in BINARY_CUES:
        auc = auroc(activation, values.astype(int))
        return float(max(auc, 1 - auc))
    from scipy.stats import spearmanr

    return float(abs(spearmanr(values, activation).statistic))
