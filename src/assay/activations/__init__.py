"""Residual-stream activations: extraction to layer L only, pooled features, a disk cache."""

from assay._lazy import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "assay.activations.extraction": ["extract", "extract_on_all_ranks"],
    "assay.activations.aggregation": ["DEFAULT_AGGREGATIONS", "Aggregation"],
    "assay.activations.store": ["ActivationSet", "CacheCorruptError", "list_entries", "remove_entry"],
})
