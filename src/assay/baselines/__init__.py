"""Text baselines a user would pick instead of an activation probe, run on the same splits."""

from assay._lazy import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "assay.baselines.base": ["TextBaseline", "load_baseline"],
    "assay.baselines.embedding": ["EmbeddingBaseline", "embed", "minilm_path"],
    "assay.baselines.tfidf": ["TfidfBaseline"],
})
