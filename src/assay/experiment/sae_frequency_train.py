"""The sae-frequency sweep's SAEs: which variants, at which sparsity levels, trained how.

Every variant (Gated, JumpReLU, QF-JumpReLU at omega_0 = 0.1 and 0.01, TopK) at every target L0
trains on the same corpus tokens in ONE pass (`CalibratingTrainer`: the penalised SAEs'
coefficients tuned towards their target L0 during the first part of training, then held). The
sweep lives in `cache_dir()/sae/sae-frequency-L<layer>-<key>/<sae name>/`, the key hashing the
model, layer, settings, texts and this module's code with the SAE code it runs; a rerun reuses it
and an interrupted training resumes. Kept apart from the evaluation and report, so that editing
those never retrains.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from assay.errors import InputError
from assay.fileio import sha256_json

log = logging.getLogger(__name__)

TOLERANCE = 0.10  # |L0 / target - 1| within which an SAE counts as matched
CODE = ("assay.sae.base", "assay.sae.trainer", "assay.sae.buffer", "assay.sae.sparse", "assay.sae.architectures",
        "assay.sae.io", "assay.sae.calibrate", "assay.sae.recipe", "assay.experiment.sae_frequency_train")


@dataclass(frozen=True)
class Variant:
    """One SAE family of the comparison."""

    name: str
    arch: str
    label: str  # as figures and sentences name it
    omega_0: float | None = None
    # Starting coefficient at target L0 32 (inputs at unit mean squared norm), scaled by 32/target:
    # a guess only; the controller finds the real one.
    start: float | None = None


VARIANTS = (
    Variant("gated", "gated", "Gated", start=0.3),
    Variant("jumprelu", "jumprelu", "JumpReLU", start=2e-3),
    Variant("qf0.1", "qf_jumprelu", "QF-JumpReLU (omega_0 = 0.1)", omega_0=0.1, start=2e-3),
    Variant("qf0.01", "qf_jumprelu", "QF-JumpReLU (omega_0 = 0.01)", omega_0=0.01, start=2e-3),
    Variant("topk", "topk", "TopK"),
)


@dataclass(frozen=True)
class FrequencyConfig:
    """Every knob that changes the numbers (presets below)."""

    preset: str = "quick"
    # A few hundred steps cannot lift a JumpReLU's L0 much above ~15 at width 1024 (early on the
    # reconstruction term itself raises thresholds; the penalty can only push further down), so
    # the quick preset's levels are lower than GDM's; the full preset trains longer.
    targets: tuple[int, ...] = (8, 16, 32)
    width: int = 1024
    # The SAE corpus (`assay.sae.corpus.CORPORA`): Wikipedia leads for the small presets, the study's
    # pretraining mix (Wikipedia + GCIDE) where more unique tokens are needed than Wikipedia holds.
    corpus: str = "wiki"
    train_tokens: int = 40_000  # unique corpus tokens (extraction costs more than an SAE step)
    epochs: int = 3  # passes over them; each in a new order
    # Small: an SAE step is cheap next to extraction, and the L0 controller needs steps more than
    # the SAEs need big batches (at 512 x 2 epochs, 156 steps, every penalised SAE ended 30-75%
    # under its target: L0 was still falling when the coefficients were frozen).
    batch_size: int = 128
    lr: float = 5e-4
    max_tokens: int = 256  # tokens per document at most
    control_fraction: float = 0.9  # share of the steps during which coefficients are tuned (then held)
    eval_tokens: int = 10_000  # held-out tokens for L0, FVU and frequencies
    ce_texts: int = 8  # held-out documents for delta LM loss (17 full forward passes each)
    ce_max_tokens: int = 128
    autointerp_tokens: int = 30_000  # held-out tokens the latents are explained and scored on
    autointerp_latents: int = 40  # random live latents scored per SAE (0: no auto-interpretability)
    seed: int = 0

    def check(self) -> None:
        from assay.sae.corpus import CORPORA

        if self.corpus not in CORPORA:
            raise InputError(f"corpus must be one of {CORPORA}, not {self.corpus!r}")
        if not self.targets or any(not (isinstance(t, int) and 0 < t < self.width) for t in self.targets):
            raise InputError(f"target L0s must be integers in (0, width={self.width}), got {list(self.targets)}")
        for name in ("width", "train_tokens", "epochs", "batch_size", "eval_tokens", "max_tokens",
                     "autointerp_tokens"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.autointerp_latents < 0:
            raise InputError(f"autointerp_latents must be >= 0, got {self.autointerp_latents}")
        if self.train_tokens * self.epochs < 10 * self.batch_size:
            raise InputError(f"{self.train_tokens} tokens x {self.epochs} epochs make fewer than 10 batches of "
                             f"{self.batch_size}: too few steps to tune a coefficient")


PRESETS = {
    # What `make demo` runs after the study: every variant at one level, small and fast (a cold
    # `make demo` has under a minute for it; on a 2-core CPU each SAE's 375 steps take about 5 s);
    # its L0 matching and numbers are the least reliable of the three.
    "demo": FrequencyConfig(preset="demo", targets=(16,), width=512, train_tokens=16_000, batch_size=128,
                            eval_tokens=3_000, ce_texts=2, autointerp_tokens=5_000, autointerp_latents=10),
    # ~15 minutes on a 2-core CPU: extraction of the training tokens is the largest stage.
    "quick": FrequencyConfig(),
    # SAEs meant to meet the study's quality bar (sae_quality.QUALITY_BAR), as the comparison needs:
    # the study's recipe (batches of 1,024 at a high learning rate, ~2M token-steps, the pretraining
    # mix) at a wider dictionary and GDM-like L0s. The quick preset's 40k tokens x 3 epochs at width
    # 1,024 end 1.8-3.6 nats above the clean LM loss. About an hour on a 2-core CPU (training is most
    # of it: a JumpReLU step at width 2,048 runs ~9k token-steps/s, Gated ~5k, TopK ~24k).
    "full": FrequencyConfig(preset="full", corpus="pretrain", targets=(32, 64), width=2048, train_tokens=500_000,
                            epochs=4, batch_size=1024, lr=7e-4, eval_tokens=30_000, ce_texts=24,
                            autointerp_tokens=60_000, autointerp_latents=60),
}


def preset_config(preset: str, **overrides: Any) -> FrequencyConfig:
    if preset not in PRESETS:
        raise InputError(f"unknown preset {preset!r}: use {' or '.join(PRESETS)}")
    cfg = replace(PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None})
    cfg.check()
    return cfg


def sae_name(v: Variant, target: int) -> str:
    return f"{v.name}-k{target}" if v.arch == "topk" else f"{v.name}-l0_{target}"


def sweep(cfg: FrequencyConfig) -> list[tuple[str, Variant, int]]:
    return [(sae_name(v, t), v, t) for v in VARIANTS for t in cfg.targets]


# --- training --------------------------------------------------------------------------------
def train_sweep(lm: Any, layer: int, cfg: FrequencyConfig, progress: bool = True) -> tuple[Path, dict[str, Path]]:
    """Train (or reuse, or resume) every SAE of the sweep on one pass over the same tokens."""
    from assay.activations import extract
    from assay.activations.extraction import EXTRACTION_VERSION
    from assay.provenance import code_fingerprint
    from assay.runtime import cache_dir
    from assay.sae.base import build_sae, sparsity_kwargs
    from assay.sae.calibrate import CalibratingTrainer, L0Controller, start_near_target_
    from assay.sae.corpus import training_texts
    from assay.sae.recipe import sae_metadata, train_config

    texts = training_texts(cfg.corpus, lm, cfg.train_tokens, cfg.max_tokens, cfg.seed)
    train_fields = {k: v for k, v in asdict(cfg).items() if k not in ("preset", "eval_tokens", "ce_texts",
                                                                      "ce_max_tokens", "autointerp_tokens",
                                                                      "autointerp_latents")}
    key = sha256_json({"model": lm.fingerprint, "layer": layer, "cfg": train_fields, "texts": sha256_json(texts),
                       "variants": [asdict(v) for v in VARIANTS], "code": code_fingerprint(*CODE),
                       "extraction": EXTRACTION_VERSION})[:16]
    root = cache_dir() / "sae" / f"sae-frequency-L{layer}-{key}"
    names = {n: root / n for n, _, _ in sweep(cfg)}
    if all((p / "sae_weights.safetensors").exists() for p in names.values()) and (root / "l0_control.json").exists():
        log.info("reusing the sweep's SAEs from %s", root)
        return root, names
    saes, targets = {}, {}
    for name, v, t in sweep(cfg):
        kw = sparsity_kwargs(v.arch, k=t, l1=(v.start or 0) * 32 / t, l0=(v.start or 0) * 32 / t,
                             omega=v.omega_0 or 0.1)
        saes[name] = build_sae(v.arch, d_in=lm.d_model, d_sae=cfg.width, seed=cfg.seed, **kw)
        if v.arch != "topk":
            targets[name] = t
    acts = extract(lm, texts, [layer], dataset_fingerprint=sha256_json([cfg.corpus, texts]), aggregations=("all.mean",),
                   store_tokens=True, chat=False, max_tokens=cfg.max_tokens, progress=progress,
                   reuse=False)  # a training stream: the same order whatever the cache held
    sample = torch.cat(list(itertools.islice(acts.iter_tokens(layer, 4096, mask="all", shuffle_seed=cfg.seed), 2)))
    for name, t in targets.items():
        start_near_target_(saes[name], sample, t)
    stream = (chunk.to(lm.device) for epoch in range(cfg.epochs)
              for chunk in acts.iter_tokens(layer, 8192, mask="all", shuffle_seed=1000 * cfg.seed + epoch))
    n_tokens = sum(len(c) for c in acts.iter_tokens(layer, 1 << 16, mask="all"))
    # About ten checkpoints a run: each writes every SAE of the sweep with its Adam state (at every 25
    # steps, the old demo preset's 15 SAEs x 937 small steps spent about 15% of this stage, 11% of the
    # whole command, writing 37 of them). A fixed 100-step warm-up, as the committed sweeps trained.
    train_cfg = train_config(n_tokens, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed,
                             lm_dtype=lm.dtype, warmup=100, checkpoint_every=(10, 25), progress=progress,
                             buffer_tokens=1 << 15)
    controller = L0Controller(saes, targets, train_cfg.total_steps, control_fraction=cfg.control_fraction)
    meta = sae_metadata(lm, layer, cfg.corpus, cfg.max_tokens, experiment="sae-frequency", seed=cfg.seed)
    log.info("training %d SAEs (%d latents) on %d %s tokens x %d epochs into %s", len(saes), cfg.width,
             n_tokens, cfg.corpus, cfg.epochs, root)
    trainer = CalibratingTrainer(saes, train_cfg, root, controller, metadata=meta)
    trainer.fit(stream, resume=(root / "checkpoint.pt").exists())
    return root, names
