"""Sparse autoencoders: architectures behind one interface, a streaming trainer, SAELens files, metrics.

    from assay.sae import build_sae, Trainer, TrainConfig, save_sae, load_sae
    sae = build_sae("topk", d_in=640, d_sae=4096, k=32)
    Trainer({"topk": sae}, TrainConfig(total_tokens=2_000_000), out_dir="runs/sae").fit(stream)

Names resolve lazily, so `assay --help` does not import torch; `build_sae` and `load_sae` import
(and so register) every architecture on first use.
"""

from assay._lazy import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "assay.sae.base": ["ARCHITECTURES", "SAE", "SAEConfig", "build_sae"],
    "assay.sae.io": ["load_sae", "save_sae"],
    "assay.sae.trainer": ["TrainConfig", "Trainer"],
})
