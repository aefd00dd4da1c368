"""The quality of the study's SAEs, apart from any probe: sparsity, reconstruction, and what
splicing the reconstruction in costs the language model (with its spread over documents, and
beside a random perturbation of the same size).

Kept apart from `saes.py` (training), whose source is part of every SAE's cache key.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from assay.experiment.config import StudyConfig
from assay.experiment.saes import by_name
from assay.fileio import read_json, sha256_json, write_json
from assay.models.loading import LoadedModel

log = logging.getLogger(__name__)


@torch.no_grad()
def sae_quality(lm: LoadedModel, cfg: StudyConfig, paths: dict[tuple[str, int], Path], val_tokens: list[torch.Tensor],
                val_key: str, exclude: frozenset[str], progress: bool = True) -> list[dict[str, Any]]:
    """Per SAE and seed: L0, FVU (also without the residual stream's highest-variance dimensions),
    latents that never fire on the benchmark's validation tokens and latents dead at the end of
    training; for the first seed also delta LM loss and CE loss recovered (zero ablation) on
    held-out text of the SAE's own corpus, with intervals over documents, beside the cost of a
    random perturbation of the same per-token norm. Cached beside each SAE, keyed on `val_key`
    (which benchmark examples `val_tokens` are) rather than on how they were extracted, so the study
    reuses what `assay experiment saes` measured, and on the code that measures (`QUALITY_CODE`); each
    record says which run computed it."""
    from assay.provenance import code_fingerprint, git_commit
    from assay.sae.corpus import held_out_texts
    from assay.sae.io import load_sae
    from assay.sae.metrics import ce_recovered, text_batches
    from assay.sae.recipe import evaluate_sae

    spec = cfg.sae
    var = _dim_variance(val_tokens)
    outliers = torch.argsort(var, descending=True)[:N_OUTLIER_DIMS]
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    todo_ce: dict[str, dict[str, Any]] = {}
    for (name, seed), path in paths.items():
        key = sha256_json([cfg.preset, cfg.seed, cfg.layer, spec.eval_texts, spec.eval_max_tokens, val_key,
                           sum(len(t) for t in val_tokens), seed == cfg.seed, code_fingerprint(*QUALITY_CODE)])[:10]
        cache = path / f"study-quality-{key}.json"
        if cache.exists():
            rows[(name, seed)] = read_json(cache)
            continue
        sae = load_sae(path, device=str(lm.device))
        stats = evaluate_sae(sae, val_tokens, path / "freq_hist.png", f"{name} (seed {seed}): latent firing frequency",
                             outlier_dims=outliers)
        training = read_json(path / "training.json")
        stats.update(sae=name, seed=seed, corpus=by_name(name).corpus, path=str(path),
                     dead_in_training=(training.get("dead_in_training") or {}).get(name),
                     training_tokens=training.get("tokens"), outlier_dims=outliers.tolist(),
                     computed_by={"git_commit": git_commit(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                  "unix": time.time()})
        rows[(name, seed)] = stats
        if seed == cfg.seed:
            todo_ce[name] = {"sae": sae, "cache": cache}
        else:
            write_json(cache, stats)
    for corpus in ("wiki", "chat"):
        names = [n for n in todo_ce if by_name(n).corpus == corpus]
        if not names:
            continue
        texts = held_out_texts(corpus, lm, spec.eval_texts * (spec.eval_max_tokens + 1), spec.eval_max_tokens,
                               seed=cfg.seed, exclude=exclude)[: spec.eval_texts]
        fns = {}
        for n in names:
            fns[n] = todo_ce[n]["sae"]
            if n == "pretrain":  # the control for the error's size: one SAE is enough to tell
                fns[f"{n}:random"] = _matched_noise(fns[n], seed=cfg.seed)
        batches = list(text_batches(lm.tokenizer, texts, spec.eval_max_tokens, 8, lm.device))
        log.info("LM loss with %d reconstructions spliced in, on %d held-out %s documents", len(fns), len(texts), corpus)
        ce = ce_recovered(lm, fns, cfg.layer, batches, seed=cfg.seed)
        for n in names:
            stats = rows[(n, cfg.seed)]
            stats.update(ce[n])
            if f"{n}:random" in ce:
                stats["random_same_norm_delta_lm_loss"] = ce[f"{n}:random"]["delta_lm_loss"]
            write_json(todo_ce[n]["cache"], stats)
    return [rows[k] for k in paths]


N_OUTLIER_DIMS = 8  # residual dimensions reported apart: Gemma's massive-activation dimensions
# The code whose numbers a record holds, part of its key: an edit to it measures again, so a report
# never shows numbers an older version computed. (The code that trains and loads an SAE, `evaluate_sae`
# in `assay.sae.recipe` among it, already keys the SAE's own directory.)
QUALITY_CODE = ("assay.experiment.sae_quality", "assay.sae.metrics")


def _dim_variance(batches: list[torch.Tensor]) -> torch.Tensor:
    x = torch.cat([b.double() for b in batches])
    return x.var(0)


def _matched_noise(sae: Any, seed: int):
    """x + a random direction with the norm of the SAE's error on each token: how much of the
    LM-loss cost is the error's size rather than its direction."""
    gen = torch.Generator().manual_seed(seed)

    def perturb(h: torch.Tensor) -> torch.Tensor:
        err = (h - sae(h.to(sae.W_enc.dtype)).to(h.dtype)).norm(dim=-1, keepdim=True)
        noise = torch.randn(h.shape, generator=gen).to(h.device, h.dtype)
        return h + noise / noise.norm(dim=-1, keepdim=True) * err

    return perturb
