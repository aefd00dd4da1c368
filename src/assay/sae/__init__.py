"""Sparse autoencoders: architectures behind one interface, a streaming trainer, SAELens files, metrics.

    from assay.sae import build_sae, Trainer, TrainConfig, save_sae, load_sae
    sae = build_sae("topk", d_in=640, d_sae=4096, k=32)
    Trainer({"topk": sae}, TrainConfig(total_tokens=2_000_000), out_dir="runs/sae").fit(stream)
"""

from assay.sae import architectures  # noqa: F401  (registers every architecture)
from assay.sae.base import ARCHITECTURES, SAE, SAEConfig, build_sae
from assay.sae.io import load_sae, save_sae
from assay.sae.trainer import TrainConfig, Trainer

__all__ = ["ARCHITECTURES", "SAE", "SAEConfig", "TrainConfig", "Trainer", "build_sae", "load_sae", "save_sae"]
