"""Auto-interpretability of a trained SAE: residual-stream activations of held-out texts, encoded
one document at a time (twice: frequencies, then the chosen latents), and a random SAE of the same
architecture, width and sparsity settings as the control."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from assay.autointerp.explainers import ChatExplainer, Explainer, HFExplainer, TokensExplainer, resolve_specs
from assay.autointerp.run import autointerp
from assay.autointerp.scorers import LMScorer, RuleScorer, Scorer


def random_like(sae: Any, seed: int) -> Any:
    """A freshly initialised SAE with `sae`'s architecture and config (width, k or sparsity
    coefficients), reading raw activations the way the trainer's initial SAE reads scaled ones."""
    from assay.sae.base import build_sae

    cfg = {**sae.cfg.to_dict(), "seed": seed, "device": "cpu", "dtype": "float32"}
    control = build_sae(sae.architecture, **cfg).eval()
    scale = (getattr(sae, "metadata", {}) or {}).get("input_scale")
    if scale:  # the trainer multiplies inputs by this before its SAE sees them
        control.fold_input_scale_(float(scale))
    return control


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
    control = random_like(sae, seed + 1) if random_control else None
    saved = getattr(sae, "metadata", None) or {}
    meta = {"model": lm.name, "layer": layer, "n_texts": len(texts), "n_tokens": sum(len(t) for t in token_ids),
            "sae": {"architecture": sae.architecture, "d_sae": sae.cfg.d_sae,
                    **{k: saved.get(k) for k in ("corpus", "study_sae", "seed", "training_tokens")}}}
    weights = sha256_json({k: v.float().sum().item() for k, v in sae.state_dict().items()})
    return autointerp(token_ids, encoder(sae, acts, layer), explainer, scorer, latent_ids=latent_ids,
                      n_random=n_random, control_acts=None if control is None else encoder(control, acts, layer),
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
