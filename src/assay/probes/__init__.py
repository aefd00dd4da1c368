"""Probes: dense and SAE probes behind one interface (`fit`, `score`, `save`, `load`).

    from assay.probes import LogisticProbe, load_probe
    probe = LogisticProbe().fit(X_train, y_train, X_val, y_val)   # X: pooled [n, d]
    scores = probe.score(X_test)                                   # logits, higher = harmful
    probe.save("runs/probe"); load_probe("runs/probe").score(X_test)
"""

from assay.probes.aggregation import Aggregation, pool_tokens
from assay.probes.attention import AttentionConfig, AttentionProbe, RollingAttentionConfig, RollingAttentionProbe
from assay.probes.base import Probe, load_probe, probe_kinds
from assay.probes.linear import DiffMeanConfig, DiffMeanProbe, LogisticConfig, LogisticProbe
from assay.probes.sae_features import sae_features
from assay.probes.sparse import (
    K_VALUES, KSparseConfig, KSparseProbe, OneSparseConfig, OneSparseProbe, fit_k_sweep, l1_path_select,
    latent_auroc, mean_diff_scores,
)

__all__ = [
    "Aggregation", "pool_tokens", "Probe", "load_probe", "probe_kinds",
    "LogisticProbe", "LogisticConfig", "DiffMeanProbe", "DiffMeanConfig",
    "AttentionProbe", "AttentionConfig", "RollingAttentionProbe", "RollingAttentionConfig",
    "OneSparseProbe", "OneSparseConfig", "KSparseProbe", "KSparseConfig", "K_VALUES", "fit_k_sweep",
    "l1_path_select", "latent_auroc", "mean_diff_scores", "sae_features",
]
