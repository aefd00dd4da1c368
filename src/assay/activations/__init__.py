"""Residual-stream activations: extraction to layer L only, pooled features, a disk cache."""

from assay.activations.extract import extract
from assay.activations.features import DEFAULT_FEATURES, Feature
from assay.activations.store import ActivationSet, CacheCorruptError, list_entries, remove_entry

__all__ = ["ActivationSet", "CacheCorruptError", "DEFAULT_FEATURES", "Feature", "extract", "list_entries", "remove_entry"]
