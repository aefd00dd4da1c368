"""Auto-interpretability of a trained SAE: residual-stream activations of held-out texts, encoded
one document at a time (twice: frequencies, then the chosen latents), and, as the baseline, a random
SAE with the trainer's initialisation at the trained SAE's frequency profile."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from assay.autointerp.explainers import ChatExplainer, Explainer, HFExplainer, TokensExplainer, resolve_specs
from assay.autointerp.run import autointerp
from assay.autointerp.scorers import LMScorer, RuleScorer, Scorer


def random_baseline(sae: Any, acts: Any, layer: int, seed: int,
                    n_sample: int = 16_384) -> Callable[[np.ndarray], Callable[[int], torch.Tensor]]:
    """The random-SAE baseline, built from the trained SAE's firing frequencies on these texts (the
    returned `make(frequency)`, which reads its sample only when called).

    Its directions are those a fresh SAE of `sae`'s architecture and width starts from (the
    trainer's initialisation: decoder rows random, encoder its transpose), applied to activations
    centred at their mean (where the trainer starts `b_dec`). Each latent gets a bias that makes it
    fire, on the first `n_sample` tokens, at a frequency drawn (without replacement) from the
    trained SAE's own: the two dictionaries then have the same frequency profile, so a score that
    depends on frequency alone (GDM's dense latents, or window statistics) moves both alike. Left at
    their initial biases, random latents were 2,685 dead and 65 dense of 4,096 on the study's texts:
    not a fair control. Latent i = relu(w_i . (x - mean) - threshold_i)."""
    from assay.sae.base import build_sae

    def make(frequency: np.ndarray) -> Callable[[int], torch.Tensor]:
        cfg = {**sae.cfg.to_dict(), "seed": seed, "device": "cpu", "dtype": "float32"}
        w = build_sae(sae.architecture, **cfg).W_enc.detach()  # [d_in, d_sae]
        rows, taken = [], 0
        for i in range(acts.n):
            if taken >= n_sample:
                break
            rows.append(acts.example_tokens(layer, i)[0][: n_sample - taken])
            taken += len(rows[-1])
        sample = torch.cat(rows).float()
        mean = sample.mean(0)
        target = torch.as_tensor(np.random.default_rng(seed).permutation(np.asarray(frequency, float)))
        pre = (sample - mean) @ w
        threshold = torch.full((w.shape[1],), float("inf"))
        live = target > 0
        # the value with round(f n) sample values above it: the latent fires on a share f of the sample
        n = len(sample)
        order = pre.sort(0).values
        above = (target * n).round().long()
        at = (n - above - 1).clamp(0, n - 1)
        threshold[live] = order[at, torch.arange(w.shape[1])][live]
        threshold[above >= n] = -float("inf")

        def encode(i: int) -> torch.Tensor:
            x = acts.example_tokens(layer, i)[0].float()
            return torch.relu((x - mean) @ w - threshold)

        return encode

    return make


def encoder(sae: Any, acts: Any, layer: int) -> Callable[[int], torch.Tensor]:
    """Document i's latent activations [t, d_sae], recomputed on demand instead of stored."""
    p = next(sae.parameters())

    def encode(i: int) -> torch.Tensor:
        x = acts.example_tokens(layer, i)[0]
        with torch.inference_mode():
            return sae.encode(x.to(p.device, p.dtype)).float().cpu()

    return encode


def autointerp_sae(
    sae: Any,
    lm: Any,
    layer: int,
    texts: Sequence[str],
    *,
    latent_ids: Sequence[int] = (),
    n_random: int = 50,
    explainer: Explainer | None = None,
    scorer: Scorer | None = None,
    out_dir: str | Path | None = None,
    random_control: bool = True,
    max_tokens: int = 256,
    seed: int = 0,
    progress: bool = True,
    activations_root: str | Path | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Explain and score `latent_ids` and `n_random` random live latents of `sae` (trained on
    `layer` of `lm`) on `texts`; defaults: the tokens explainer and its rule scorer. Returns the
    summary (`autointerp`'s), and writes scores.jsonl, summary.json and autointerp.png to `out_dir`.
    `options` go to `autointerp` (ctx_len, n_explain, n_quantiles, per_quantile)."""
    from assay.activations import extract
    from assay.fileio import sha256_json

    explainer = explainer or TokensExplainer(lambda ids: lm.tokenizer.decode(ids))  # read only if a latent is left
    scorer = scorer or RuleScorer()
    fp = sha256_json(["autointerp", list(texts)])
    acts = extract(lm, list(texts), [layer], dataset_fingerprint=fp, aggregations=("all.mean",),
                   store_tokens=True, chat=False, max_tokens=max_tokens, progress=progress,
                   **({} if activations_root is None else {"root": activations_root}))
    token_ids = [acts.example_tokens(layer, i)[2].long() for i in range(acts.n)]
    saved = getattr(sae, "metadata", None) or {}
    meta = {"model": lm.name, "layer": layer, "n_texts": len(texts), "n_tokens": sum(len(t) for t in token_ids),
            "sae": {"architecture": sae.architecture, "d_sae": sae.cfg.d_sae,
                    **{k: saved.get(k) for k in ("corpus", "study_sae", "seed", "training_tokens")}}}
    weights = sha256_json({k: v.float().sum().item() for k, v in sae.state_dict().items()})
    return autointerp(token_ids, encoder(sae, acts, layer), explainer, scorer, latent_ids=latent_ids,
                      n_random=n_random, make_control=random_baseline(sae, acts, layer, seed + 1) if random_control else None,
                      out_dir=out_dir, seed=seed, fingerprint=[fp, acts.key, weights, random_control],
                      meta=meta, progress=progress, **options)


def build_pair(explainer_spec: str, scorer_spec: str | None, *, decode: Callable[[list[int]], str],
               load_lm: Callable[[str], Any], explainer_model: str | None = None,
               default_lm: str | None = None) -> tuple[Explainer, Scorer]:
    """Explainer and scorer from their command-line specs (`resolve_specs` says which pairs and
    defaults); `load_lm(name)` loads, and should cache, a language model."""
    (kind, arg), (skind, sarg) = resolve_specs(explainer_spec, scorer_spec, default_lm)
    if kind == "tokens":
        ex: Explainer = TokensExplainer(decode)
    elif kind == "hf":
        ex = HFExplainer(load_lm(arg))
    else:
        ex = ChatExplainer(arg, explainer_model or "", decode)
    sc: Scorer = RuleScorer() if skind == "rule" else LMScorer(load_lm(sarg))
    return ex, sc
