"""The activations a monitor is built from: one extraction of every labelled prompt, pooled only.

Model selection fits many probes on the same prompts, so the pooled matrices of every candidate
layer and aggregation (only those) are extracted in one forward pass (to the deepest candidate
layer) and cached like any other extraction; per-token activations are stored only when a
candidate reads tokens (attention and token-level probes), since they are hundreds of times larger.
"""

from __future__ import annotations

from typing import Any, Sequence

from assay.activations.aggregation import DEFAULT_AGGREGATIONS


def monitor_activations(lm: Any, ds: Any, layers: Sequence[int], *, tokens: bool = False,
                        aggregations: Sequence[str] = DEFAULT_AGGREGATIONS, progress: bool = True) -> Any:
    """The dataset's activations at `layers` (an `ActivationSet`), from the cache or extracted."""
    from assay.activations.extraction import extract

    return extract(lm, ds.texts, sorted(set(layers)), dataset_fingerprint=ds.fingerprint,
                   aggregations=list(aggregations), store_tokens=tokens, progress=progress)
