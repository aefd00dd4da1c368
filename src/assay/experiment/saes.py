"""The study's three SAEs: pretraining text, chat, and the pretraining SAE finetuned on chat.

Each lives in `cache_dir()/sae/<key>/`, the key hashing everything that changes its weights, so a
rerun reuses it; an interrupted training resumes from its checkpoint.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from assay.experiment.config import StudyConfig
from assay.fileio import read_json, sha256_json
from assay.models.loading import LoadedModel
from assay.runtime import cache_dir

log = logging.getLogger(__name__)

# (name, corpus, what it is)
STUDY_SAES = (
    ("pretrain", "wiki", "pretraining text (Wikipedia)"),
    ("chat", "chat", "chat (ShareGPT conversations)"),
    ("pretrain+chat-ft", "chat", "pretraining SAE finetuned on chat"),
)


def sae_key(lm: LoadedModel, cfg: StudyConfig, name: str) -> str:
    spec = cfg.sae.model_dump()
    if name == "pretrain":
        spec.pop("chat_tokens"), spec.pop("finetune_tokens"), spec.pop("resample_fraction")
    elif name == "chat":
        spec.pop("pretrain_tokens"), spec.pop("finetune_tokens"), spec.pop("resample_fraction")
    return sha256_json({"model": lm.fingerprint, "layer": cfg.layer, "seed": cfg.seed, "name": name,
                        "sae": spec})[:16]


def study_saes(lm: LoadedModel, cfg: StudyConfig, progress: bool = True) -> dict[str, tuple[Any, Path]]:
    """Train (or reuse) the three SAEs; returns name -> (SAE on lm's device, directory)."""
    from assay.sae import build_sae, load_sae
    from assay.sae.base import sparsity_kwargs
    from assay.sae.corpus import activation_stream
    from assay.sae.resample import resample_latents_
    from assay.sae.trainer import TrainConfig, Trainer

    spec = cfg.sae
    out: dict[str, tuple[Any, Path]] = {}
    for name, corpus, _ in STUDY_SAES:
        path = cache_dir() / "sae" / f"{name}-L{cfg.layer}-{sae_key(lm, cfg, name)}"
        if (path / "sae_weights.safetensors").exists() and (path / "cfg.json").exists():
            out[name] = (load_sae(path, device=str(lm.device)), path)
            log.info("reusing SAE %s from %s", name, path)
            continue
        finetune = name == "pretrain+chat-ft"
        n_tokens = {"pretrain": spec.pretrain_tokens, "chat": spec.chat_tokens}.get(name, spec.finetune_tokens)
        # The finetuning stream starts elsewhere in ShareGPT than the chat SAE's (different seed).
        seed = cfg.seed + (1 if finetune else 0)
        if finetune:
            sae = load_sae(out["pretrain"][1], device=str(lm.device))
            if spec.resample_fraction > 0:
                resample_latents_(sae, spec.resample_fraction, how="random", seed=cfg.seed)
        else:
            sae = build_sae(spec.arch, d_in=lm.d_model, d_sae=spec.width, seed=cfg.seed,
                            **sparsity_kwargs(spec.arch, spec.k))
        meta = {
            "model_name": lm.name, "hook_name": f"blocks.{cfg.layer}.hook_resid_post", "assay_layer": cfg.layer,
            "corpus": corpus, "study_sae": name, "model_fingerprint": lm.fingerprint,
            "context_size": spec.max_tokens, "dataset_path": f"assay:{corpus}",
            "finetuned_from": str(out["pretrain"][1]) if finetune else None,
        }
        train_cfg = TrainConfig(total_tokens=n_tokens * spec.epochs, batch_size=spec.batch_size, lr=spec.lr, seed=cfg.seed,
                                checkpoint_every=50, progress=progress,
                                lr_warmup_steps=0 if finetune else 100)
        stream = activation_stream(lm, corpus, cfg.layer, n_tokens, seed=seed, max_tokens=spec.max_tokens,
                                   progress=progress, epochs=spec.epochs)
        trainer = Trainer({name: sae}, train_cfg, path, metadata=meta)
        log.info("training SAE %s (%s, %d latents) on %d %s tokens", name, spec.arch, spec.width, n_tokens, corpus)
        trainer.fit((c.to(lm.device) for c in stream), resume=(path / "checkpoint.pt").exists())
        out[name] = (load_sae(path, device=str(lm.device)), path)
    return out


@torch.no_grad()
def sae_quality(
    lm: LoadedModel, sae: Any, path: Path, name: str, cfg: StudyConfig, probe_tokens: list[torch.Tensor],
) -> dict[str, Any]:
    """L0, FVU, dead/dense latents on the benchmark's validation tokens (what the probes read),
    and CE loss recovered on held-out text of the SAE's own corpus. Cached beside the SAE."""
    from assay.fileio import write_json
    from assay.sae.corpus import held_out_texts
    from assay.sae.metrics import ce_recovered, plot_frequency_histogram, reconstruction_stats, text_batches

    cache = path / f"study-quality-{sha256_json([cfg.preset, cfg.seed, len(probe_tokens)])[:8]}.json"
    if cache.exists():
        return read_json(cache)
    stats = reconstruction_stats(sae, probe_tokens)
    freq = stats.pop("freq")
    plot_frequency_histogram(freq, path / "freq_hist.png", title=f"{name}: latent firing frequency")
    corpus = "wiki" if name == "pretrain" else "chat"
    texts = held_out_texts(corpus, lm.tokenizer, cfg.sae.eval_texts, seed=cfg.seed)
    stats.update(ce_recovered(lm, sae, cfg.layer, text_batches(lm.tokenizer, texts, 128, 8, lm.device)))
    stats.update(sae=name, corpus=corpus, path=str(path), d_sae=int(sae.cfg.d_sae), architecture=sae.architecture,
                 freq_hist=str(path / "freq_hist.png"))
    write_json(cache, stats)
    return stats
