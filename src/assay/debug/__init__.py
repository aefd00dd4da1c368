"""Dataset debugging with SAEs: which latents a sparse probe relies on, and what explains them."""

from assay.debug.latents import CUES, LatentReport, explain_latents, rank_probe_latents

__all__ = ["CUES", "LatentReport", "explain_latents", "rank_probe_latents"]
