"""Text baselines a user would pick instead of an activation probe, run on the same splits."""

from assay.baselines.base import TextBaseline, load_baseline
from assay.baselines.embedding import EmbeddingBaseline, embed, minilm_path
from assay.baselines.tfidf import TfidfBaseline

__all__ = ["TextBaseline", "load_baseline", "TfidfBaseline", "EmbeddingBaseline", "embed", "minilm_path"]
