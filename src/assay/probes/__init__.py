"""Probes: every method behind one interface (`fit`, `score`, `save`, `load`), one registry.

    from assay.probes import make_probe, load_probe
    probe = make_probe("dense-logistic").fit(X_train, y_train, X_val, y_val)  # X: pooled [n, d]
    scores = probe.score(X_test)                                              # logits, higher = harmful
    probe.save("runs/probe"); load_probe("runs/probe").score(X_test)

`METHODS` lists the methods under the paper's names; `Inputs` (in `assay.probes.inputs`) computes
what each reads. Names resolve lazily, so `assay --help` (which imports `assay.probes.cli`) stays fast.
"""

from assay._lazy import lazy_exports

_EXPORTS = {
    "assay.probes.base": ["Probe", "load_probe"],
    "assay.probes.methods": ["METHODS", "Method", "make_probe", "method"],
    "assay.probes.inputs": ["InputSpec", "Inputs", "sae_outputs", "token_inputs"],
    "assay.probes.linear": ["LogisticProbe", "LogisticConfig", "DiffMeanProbe", "DiffMeanConfig"],
    "assay.probes.attention": ["AttentionProbe", "AttentionConfig", "RollingAttentionProbe", "RollingAttentionConfig"],
    "assay.probes.sparse": ["OneSparseProbe", "OneSparseConfig", "KSparseProbe", "KSparseConfig", "K_VALUES",
                            "fit_k_sweep", "l1_path_order", "l1_path_select", "mean_diff_scores", "selection_order"],
    "assay.probes.tfidf": ["TfidfProbe", "TfidfConfig"],
}
__all__, __getattr__ = lazy_exports(__name__, _EXPORTS)
