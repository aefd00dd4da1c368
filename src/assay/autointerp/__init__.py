"""Frequency-weighted auto-interpretability of SAE latents (delphi-style explain, then score).

    from assay.autointerp import autointerp_sae
    summary = autointerp_sae(sae, lm, layer, texts, latent_ids=[3, 17], n_random=50, out_dir="out")
    summary["runs"]["real"]["detection"]["weighted"]   # sum_i f_i s_i / sum_i f_i

`records` (windows and sampling, model-free), `explainers`, `scorers`, `summary` (weighted means,
intervals, bins, plot), `run` (the controls and the files), `from_sae` (an SAE and a model in).
"""

from assay._lazy import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "assay.autointerp.from_sae": ["autointerp_sae", "build_pair", "random_baseline"],
    "assay.autointerp.run": ["autointerp", "chance_check"],
    "assay.autointerp.records": ["LatentRecord", "Window", "collect_records", "firing_frequency"],
    "assay.autointerp.explainers": ["ChatExplainer", "Explanation", "HFExplainer", "TokensExplainer"],
    "assay.autointerp.scorers": ["LMScorer", "RuleScorer"],
    "assay.autointerp.summary": ["frequency_weighted_mean", "means_with_ci"],
})
