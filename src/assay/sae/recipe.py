"""The SAE recipe, written once: start SAEs (fresh, or a saved one to finetune), train them on a
stream of residual-stream activations, and evaluate one into a quality record. `assay sae train |
eval` and the study's SAEs (`assay.experiment.saes`, `sae_quality`) are thin callers.
"""

from __future__ import annotations

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


@torch.no_grad()
def evaluate_sae(sae: SAE, tokens: Iterable[torch.Tensor], plot: Path, title: str, *,
                 outlier_dims: Sequence[int] | torch.Tensor | None = None, lm: Any = None, layer: int | None = None,
                 ce_batches: Iterable[Any] | None = None) -> dict[str, Any]:
    """The quality record of `sae` on held-out `tokens`: l0, fvu (and over all but `outlier_dims`),
    mse, dead and dense latent counts, with its firing-frequency histogram drawn to `plot`; with
    `lm`, `layer` and `ce_batches`, also delta LM loss and CE loss recovered with the
    reconstruction spliced into the model."""
    from assay.sae.metrics import ce_recovered, plot_frequency_histogram, reconstruction_stats

    stats = reconstruction_stats(sae, tokens, outlier_dims=outlier_dims)
    plot_frequency_histogram(stats.pop("freq"), plot, title=title)
    record = {"architecture": sae.architecture, "d_sae": int(sae.cfg.d_sae), "freq_hist": str(plot), **stats}
    if ce_batches is not None:
        record.update(ce_recovered(lm, sae, layer, ce_batches))
    return record
