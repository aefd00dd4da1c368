"""The SAE recipe, written once: start SAEs (fresh, or a saved one to finetune), configure and train
them on residual-stream activations, and evaluate them into quality records. `assay sae train | eval`,
the study's SAEs (`assay.experiment.saes`, `sae_quality`) and sae-frequency's sweep are thin callers.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch

from assay.sae.base import SAE
from assay.sae.trainer import TrainConfig, Trainer


def sae_metadata(lm: Any, layer: int, corpus: str, context_size: int, **extra: Any) -> dict[str, Any]:
    """What `cfg.json` records of where an SAE's activations come from, in SAELens' names where it
    has them (so SAELens can load the SAE) and ours beside."""
    return {"model_name": lm.name, "hook_name": f"blocks.{layer}.hook_resid_post", "hook_head_index": None,
            "prepend_bos": True, "context_size": context_size, "dataset_path": f"assay:{corpus}",
            "assay_layer": layer, "corpus": corpus, "model_fingerprint": lm.fingerprint, **extra}


def initial_saes(d_in: int, archs: Sequence[str], width: int, seed: int, sparsity: dict[str, dict[str, Any]],
                 *, finetune_from: str | Path | None = None, resample: float = 0.0, resample_how: str = "random",
                 freq: Callable[[SAE], torch.Tensor] | None = None, check: Callable[[SAE], None] | None = None,
                 device: str | None = None) -> dict[str, SAE]:
    """Fresh SAEs, one per architecture (`sparsity[arch]`: its `build_sae` keywords); or the SAE
    saved in `finetune_from`, keyed by its architecture, first passed to `check`, then with
    `resample` of its latents re-initialised (`least_used` ranks them by `freq(sae)`)."""
    from assay.sae.base import build_sae
    from assay.sae.io import load_sae
    from assay.sae.resample import resample_latents_

    if finetune_from is None:
        return {a: build_sae(a, d_in=d_in, d_sae=width, seed=seed, **sparsity[a]) for a in archs}
    sae = load_sae(finetune_from, device=device)
    if check is not None:
        check(sae)
    if resample > 0:
        resample_latents_(sae, resample, how=resample_how, freq=freq(sae) if freq else None, seed=seed)
    return {sae.architecture: sae}


def train_config(n_tokens: int, *, epochs: int, batch_size: int, lr: float, seed: int,
                 lm_dtype: str | torch.dtype | None = None, warmup: int | None = None,
                 checkpoint_every: int | tuple[int, int] = (20, 50), curve_points: int = 0, progress: bool = False,
                 **fields: Any) -> TrainConfig:
    """How an SAE trains on `n_tokens` unique tokens: `epochs` passes in batches of `batch_size`, inputs
    scaled to unit mean squared norm and `b_dec` started at their mean (`Trainer`). The rate warms up
    to `lr` over `warmup` steps (default a tenth of the run, at most 100: a finetune warms up too, as
    Adam's first full-rate steps knock a converged SAE off its optimum), then decays linearly to 0 over
    the last fifth. A checkpoint every `checkpoint_every` steps, or given `(n, floor)` about n a run at
    least `floor` steps apart; `curve_points` held-out evaluations (never changing the weights; at the
    same steps on every rank, which wait for the main rank's). Where the model runs in bfloat16
    (`lm_dtype`), TopK SAEs shortlist each token's top k in bf16, then compute it exactly in fp32.
    `fields`: other `TrainConfig` fields. `tests/test_sae_recipe.py` pins the study's configs."""
    from assay.runtime import search_dtype_for

    cfg = TrainConfig(total_tokens=n_tokens * epochs, batch_size=batch_size, lr=lr, seed=seed, progress=progress,
                      search_dtype=search_dtype_for(lm_dtype) if lm_dtype is not None else None, **fields)
    steps = cfg.total_steps
    if not isinstance(checkpoint_every, int):
        checkpoint_every = max(checkpoint_every[1], steps // checkpoint_every[0])
    return replace(cfg, checkpoint_every=checkpoint_every,
                   lr_warmup_steps=min(100, max(1, steps // 10)) if warmup is None else warmup,
                   eval_every_tokens=max(batch_size, cfg.total_tokens // curve_points) if curve_points else 0)


def train_saes(saes: dict[str, SAE], stream: Iterable[torch.Tensor], out: Path, cfg: TrainConfig,
               metadata: dict[str, Any], *, device: torch.device | str, resume: bool = False,
               evaluate: Callable[[dict[str, SAE]], dict[str, dict[str, float]]] | None = None) -> Trainer:
    """Train `saes` together on one pass of `stream` into `out` (checkpointed, resumable; a complete
    run deletes its checkpoint). `trainer.state.step < cfg.total_steps` afterwards is a short run:
    the data ran out, and `training.json` says `complete: false`. `evaluate` makes the held-out
    curve (`Trainer`'s, every `cfg.eval_every_tokens`)."""
    trainer = Trainer(saes, cfg, out, metadata=metadata, evaluate=evaluate)
    trainer.fit((c.to(device) for c in stream), resume=resume)
    return trainer


def outlier_dims_of(tokens: Sequence[torch.Tensor], n: int = 8) -> list[int]:
    """The `n` dimensions of highest variance over `tokens` (Gemma's massive-activation dimensions),
    which can hold most of a residual stream's variance: FVU is also reported without them."""
    return torch.cat(tokens).double().var(0).argsort(descending=True)[:n].tolist()


@torch.no_grad()
def evaluate_sae(sae: SAE, tokens: Iterable[torch.Tensor], plot: Path | None = None, title: str = "", *,
                 outlier_dims: Sequence[int] | torch.Tensor | None = None) -> dict[str, Any]:
    """The quality record of `sae` on held-out `tokens`: l0, fvu (and over all but `outlier_dims`),
    mse, dead and dense latent counts; its firing frequencies drawn as a histogram to `plot`, or,
    with none, kept as `freq` (a tensor)."""
    from assay.sae.metrics import plot_frequency_histogram, reconstruction_stats

    stats = reconstruction_stats(sae, tokens, outlier_dims=outlier_dims)
    if plot is not None:
        plot_frequency_histogram(stats.pop("freq"), plot, title=title)
        stats = {"freq_hist": str(plot), **stats}
    return {"architecture": sae.architecture, "d_sae": int(sae.cfg.d_sae), **stats}


@torch.no_grad()
def evaluate_saes(saes: dict[str, SAE], tokens: Sequence[torch.Tensor], plots: dict[str, tuple[Path, str]] | None = None,
                  *, outlier_dims: Sequence[int] | None = None, lm: Any = None, layer: int | None = None,
                  ce_batches: Iterable[Any] | None = None, controls: dict[str, Callable] | None = None,
                  seed: int = 0) -> dict[str, dict[str, Any]]:
    """`evaluate_sae` of each of `saes` (its histogram drawn to `plots[name] = (path, title)`); with
    `lm`, `layer` and `ce_batches`, also its delta LM loss and CE loss recovered (`ce_recovered`,
    bootstrapped with `seed`), the clean and zero-ablated passes shared by all, and those of
    `controls` (other reconstructions, e.g. a random perturbation) into records of their own."""
    from assay.sae.metrics import ce_recovered

    records = {name: evaluate_sae(sae, tokens, *(plots or {}).get(name, (None, "")), outlier_dims=outlier_dims)
               for name, sae in saes.items()}
    if ce_batches is not None:
        for name, ce in ce_recovered(lm, {**saes, **(controls or {})}, layer, ce_batches, seed=seed).items():
            records.setdefault(name, {}).update(ce)
    return records
