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
from assay.experiment.config import by_name
from assay.fileio import read_json, sha256_json, write_json
from assay.models.loading import LoadedModel

log = logging.getLogger(__name__)


@torch.no_grad()
def sae_quality(lm: LoadedModel, cfg: StudyConfig, paths: dict[tuple[str, int], Path], val_tokens: list[torch.Tensor],
                val_key: str, exclude: frozenset[str], progress: bool = True) -> list[dict[str, Any]]:
    """Per SAE and seed: L0, FVU (also without the residual stream's highest-variance dimensions),
    latents that never fire on the benchmark's validation tokens and latents dead at the end of
    training; delta LM loss and CE loss recovered (zero ablation) on held-out text of the SAE's own
    corpus, with intervals over documents (for the first seed's pretraining SAE beside the cost of
    a random perturbation of the same per-token norm); whether it meets the quality bar. Cached beside each SAE, keyed on `val_key`
    (which benchmark examples `val_tokens` are) rather than on how they were extracted, so the study
    reuses what `assay experiment saes` measured, and on the code that measures (`QUALITY_CODE`); each
    record says which run computed it."""
    from assay.provenance import code_fingerprint, git_commit
    from assay.sae.io import load_sae
    from assay.sae.recipe import evaluate_saes, outlier_dims_of

    spec = cfg.sae
    outliers = outlier_dims_of(val_tokens)
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    todo: dict[tuple[str, int], Path] = {}  # those to measure: their record's file
    for (name, seed), path in paths.items():
        key = sha256_json([cfg.preset, cfg.seed, cfg.layer, spec.eval_texts, spec.eval_max_tokens, val_key,
                           sum(len(t) for t in val_tokens), seed == cfg.seed, code_fingerprint(*QUALITY_CODE)])[:10]
        cache = path / f"study-quality-{key}.json"
        if cache.exists():
            rows[(name, seed)] = read_json(cache)
        else:
            todo[(name, seed)] = cache
    for corpus in ("pretrain", "chat"):
        names = [k for k in todo if by_name(k[0]).corpus == corpus]
        if not names:
            continue
        saes = {f"{n}@{s}": load_sae(paths[(n, s)], device=str(lm.device)) for n, s in names}
        plots = {f"{n}@{s}": (paths[(n, s)] / "freq_hist.png", f"{n} (seed {s}): latent firing frequency")
                 for n, s in names}
        first = saes.get(f"pretrain@{cfg.seed}")  # the control for the error's size: one SAE is enough to tell
        batches = held_out_batches(lm, cfg, corpus, exclude)
        log.info("LM loss with %d reconstructions spliced in, on %d held-out %s documents", len(saes),
                 sum(len(b[0]) for b in batches), corpus)
        records = evaluate_saes(
            saes, val_tokens, plots, outlier_dims=outliers, lm=lm, layer=cfg.layer, ce_batches=batches, seed=cfg.seed,
            controls={"random": _matched_noise(first, seed=cfg.seed)} if first is not None else None)
        for name, seed in names:
            training = read_json(paths[(name, seed)] / "training.json")
            stats = rows[(name, seed)] = records[f"{name}@{seed}"]
            stats.update(sae=name, seed=seed, corpus=corpus, path=str(paths[(name, seed)]),
                         dead_in_training=(training.get("dead_in_training") or {}).get(name),
                         training_tokens=training.get("tokens"), outlier_dims=outliers,
                         computed_by={"git_commit": git_commit(),
                                      "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                      "unix": time.time()})
            if name == "pretrain" and seed == cfg.seed:
                stats["random_same_norm_delta_lm_loss"] = records["random"]["delta_lm_loss"]
            stats["meets_bar"] = meets_bar(stats)
            write_json(todo[(name, seed)], stats)
    return [rows[k] for k in paths]


# The quality an SAE needs before a verdict about SAEs rests on it: splicing its reconstruction in
# costs at most 0.5 nats per token on held-out text of its corpus (Gemma Scope's SAEs, which GDM
# used, cost about 0.1), and it leaves at most a fifth of the variance of the benchmark's validation
# tokens unexplained. Below it, a finding describes a broken instrument more than SAEs.
QUALITY_BAR = {"delta_lm_loss": 0.5, "fvu": 0.2}


def meets_bar(q: dict[str, Any]) -> bool | None:
    """Whether a quality record is within `QUALITY_BAR` (None when a number is missing)."""
    if any(q.get(k) is None for k in QUALITY_BAR):
        return None
    return all(q[k] <= bound for k, bound in QUALITY_BAR.items())


def bar_text(rows: list[dict[str, Any]]) -> str:
    """One sentence, from the records: how many SAEs meet the bar, and the numbers of those that miss it."""
    judged = [r for r in rows if meets_bar(r) is not None]  # from the numbers, whatever a record says
    if not judged:
        return "no SAE has both numbers the quality bar needs (FVU and delta LM loss)."
    missed = [r for r in judged if not meets_bar(r)]
    head = (f"{len(judged) - len(missed)} of the {len(judged)} SAEs meet the quality bar (delta LM loss <= "
            f"{QUALITY_BAR['delta_lm_loss']} nats/token on held-out text of their corpus and FVU <= {QUALITY_BAR['fvu']} "
            "on the benchmark's validation tokens)")
    if not missed:
        return head + "."
    return head + "; below it: " + "; ".join(
        f"{r['sae']} (seed {r['seed']}: delta LM loss {r['delta_lm_loss']:.3f}, FVU {r['fvu']:.3f})" for r in missed) + "."


def held_out_batches(lm: LoadedModel, cfg: StudyConfig, corpus: str,
                     exclude: frozenset[str]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The held-out documents of `corpus` an SAE's delta LM loss is measured on (`eval_texts` of
    them from the end of the corpus's order, at most `eval_max_tokens` tokens each), tokenised."""
    from assay.sae.corpus import held_out_texts
    from assay.sae.metrics import text_batches

    spec = cfg.sae
    texts = held_out_texts(corpus, lm, spec.eval_texts * (spec.eval_max_tokens + 1), spec.eval_max_tokens,
                           seed=cfg.seed, exclude=exclude)[: spec.eval_texts]
    return list(text_batches(lm.tokenizer, texts, spec.eval_max_tokens, 8, lm.device))


# The curve a study SAE records while it trains (`assay.experiment.saes`). Kept here, outside the
# code that keys an SAE's directory: how it is measured does not change its weights.
def held_out_lm_loss(lm: LoadedModel, cfg: StudyConfig, corpus: str, exclude: frozenset[str]) -> Any:
    """Delta LM loss on the held-out documents of `corpus` that `sae_quality` measures on."""
    from assay.sae.metrics import HeldOutLMLoss

    return HeldOutLMLoss(lm, cfg.layer, held_out_batches(lm, cfg, corpus, exclude))


def curve_evaluator(val_tokens: list[torch.Tensor], lm_loss: Any = None):
    """`evaluate(saes)` for `Trainer`: L0, FVU, dead and dense latents on `val_tokens`, and delta
    LM loss with each reconstruction spliced in when `lm_loss` (a `HeldOutLMLoss`) is given."""
    from assay.sae.recipe import evaluate_sae

    def evaluate(saes: dict[str, Any]) -> dict[str, dict[str, float]]:
        out = {}
        for name, sae in saes.items():
            st = evaluate_sae(sae, val_tokens)
            out[name] = {k: st[k] for k in ("l0", "fvu", "dead", "dense")}
            if lm_loss is not None:
                out[name]["delta_lm_loss"] = lm_loss.delta(sae)
        return out

    return evaluate


# The code whose numbers a record holds, part of its key: an edit to it measures again, so a report
# never shows numbers an older version computed. (The code that trains and loads an SAE, `evaluate_sae`
# in `assay.sae.recipe` among it, already keys the SAE's own directory.)
QUALITY_CODE = ("assay.experiment.sae_quality", "assay.sae.metrics")


def _matched_noise(sae: Any, seed: int):
    """x + a random direction with the norm of the SAE's error on each token: how much of the
    LM-loss cost is the error's size rather than its direction."""
    gen = torch.Generator().manual_seed(seed)

    def perturb(h: torch.Tensor) -> torch.Tensor:
        err = (h - sae(h.to(sae.W_enc.dtype)).to(h.dtype)).norm(dim=-1, keepdim=True)
        noise = torch.randn(h.shape, generator=gen).to(h.device, h.dtype)
        return h + noise / noise.norm(dim=-1, keepdim=True) * err

    return perturb
