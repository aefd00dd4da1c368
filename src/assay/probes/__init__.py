"""Probes: dense and SAE probes behind one interface (`fit`, `score`, `save`, `load`).

    from assay.probes import LogisticProbe, load_probe
    probe = LogisticProbe().fit(X_train, y_train, X_val, y_val)   # X: pooled [n, d]
    scores = probe.score(X_test)                                   # logits, higher = harmful
    probe.save("runs/probe"); load_probe("runs/probe").score(X_test)

Names resolve lazily, so `assay --help` (which imports `assay.probes.cli`) stays fast.
"""

from importlib import import_module

from assay._lazy import lazy_exports

_EXPORTS = {
    "assay.probes.aggregation": ["Aggregation", "pool_tokens"],
    "assay.probes.base": ["Probe", "load_probe", "probe_kinds"],
    "assay.probes.linear": ["LogisticProbe", "LogisticConfig", "DiffMeanProbe", "DiffMeanConfig"],
    "assay.probes.attention": ["AttentionProbe", "AttentionConfig", "RollingAttentionProbe", "RollingAttentionConfig"],
    "assay.probes.sparse": ["OneSparseProbe", "OneSparseConfig", "KSparseProbe", "KSparseConfig", "K_VALUES",
                            "fit_k_sweep", "l1_path_order", "l1_path_select", "latent_auroc", "mean_diff_scores", "selection_order"],
    "assay.probes.sae_encode": ["sae_features"],
}
__all__, __getattr__ = lazy_exports(__name__, _EXPORTS)


def _register_all() -> None:
    """Import every module that defines a probe kind (fills the registry)."""
    for module in ("assay.probes.linear", "assay.probes.attention", "assay.probes.sparse"):
        import_module(module)
