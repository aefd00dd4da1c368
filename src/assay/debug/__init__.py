"""Dataset debugging with SAEs: which latents a sparse probe relies on, and what explains them."""

from assay._lazy import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "assay.debug.latents": ["CUES", "LatentReport", "explain_latents", "rank_probe_latents"],
})
