"""The results schema: every number a study reports, with what it means and what produced it.

Fields carry a title and description, so the JSON documents itself and `report_json_schema()`
exports a JSON Schema. Renderers (markdown, HTML, PNG) take a `Report` and nothing else, so the
curves and histograms they draw are stored here too, thinned.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = "1"

MethodKind = Literal["dense", "attention", "sae_sparse", "sae_reconstruction", "baseline", "other"]


def _f(title: str, description: str, default: Any = ..., **kw: Any) -> Any:
    return Field(default, title=title, description=description, **kw)


class Interval(BaseModel):
    low: float = _f("Lower bound", "Lower end of the percentile bootstrap interval.")
    high: float = _f("Upper bound", "Upper end of the percentile bootstrap interval.")


class RocCurve(BaseModel):
    fpr: list[float] = _f("False-positive rates", "FPR at each threshold, thinned for plotting.")
    tpr: list[float] = _f("True-positive rates", "TPR (recall) at the same thresholds.")


class ScoreHistogram(BaseModel):
    group: str = _f("Group", "Family or transformation the scores belong to ('all' for the split).")
    label: int = _f("Label", "1 harmful, 0 benign.")
    bin_edges: list[float] = _f("Bin edges", "Histogram bin edges (shared across a method's split).")
    counts: list[int] = _f("Counts", "Number of examples per bin.")


class GroupResult(BaseModel):
    """One slice of a split: a jailbreak family or an innocuous transformation."""

    by: str = _f("Grouped by", "Which example field defines the groups: 'family' or 'transformation'.")
    group: str = _f("Group", "The group's value, e.g. 'aim' or 'count_words'.")
    n_pos: int = _f("Harmful examples", "Harmful examples in the group.")
    n_neg: int = _f("Benign examples", "Benign examples in the group.")
    auroc: float | None = _f("AUROC within group", "AUROC over the group's own examples; null when the group has one class.", None)
    auroc_vs_rest: float | None = _f(
        "AUROC against the other class of the split",
        "For a harmful-only group: its examples against all benign of the split; for a benign-only "
        "group: all harmful of the split against its examples.",
        None,
    )
    recall: float | None = _f("Recall at threshold", "Fraction of the group's harmful examples flagged at the calibrated threshold.", None)
    recall_ci: Interval | None = _f("Recall CI", "Bootstrap 95% interval of the recall.", None)
    fpr: float | None = _f("FPR at threshold", "Fraction of the group's benign examples flagged at the calibrated threshold.", None)
    fpr_ci: Interval | None = _f("FPR CI", "Bootstrap 95% interval of the FPR.", None)


class MethodResult(BaseModel):
    """One method (probe or baseline) on one split."""

    model_config = ConfigDict(protected_namespaces=())

    method: str = _f("Method", "Name of the method, e.g. 'logistic', 'k_sparse[l1,k=20]', 'tfidf'.")
    kind: MethodKind = _f("Kind", "Family of method, for grouping in tables.", "other")
    features: str = _f("Features", "What the method reads: an aggregation such as 'all.max' or 'resp-5', 'tokens:all' for attention probes, 'text' for baselines.")
    sae: str | None = _f("SAE", "SAE whose latents or reconstruction the probe reads; null for dense probes and baselines.", None)
    k: int | None = _f("k", "Number of SAE latents a sparse probe uses.", None)
    latents: list[int] | None = _f("Latents", "Indices of the SAE latents a sparse probe chose.", None)
    split: str = _f("Split", "Evaluation split: 'train', 'val' (in distribution), 'ood', ...")
    n_pos: int = _f("Harmful examples", "Harmful examples in the split.")
    n_neg: int = _f("Benign examples", "Benign examples in the split.")
    auroc: float | None = _f("AUROC", "Area under the ROC curve (null when the split has one class).")
    auroc_ci: Interval | None = _f("AUROC CI", "Stratified percentile bootstrap 95% interval of the AUROC.", None)
    auprc: float | None = _f("AUPRC", "Average precision.", None)
    target_fpr: float = _f("Target FPR", "FPR the threshold was calibrated for on benign validation examples.", 0.01)
    threshold: float | None = _f("Threshold", "Score threshold calibrated on benign validation examples and applied unchanged here.", None)
    recall_at_fpr: float | None = _f("Recall at target FPR", "Fraction of harmful examples scoring above the threshold.", None)
    recall_ci: Interval | None = _f("Recall CI", "Bootstrap 95% interval of the recall (threshold held fixed).", None)
    fpr_reached: float | None = _f("FPR reached", "Fraction of benign examples of this split above the threshold.", None)
    breakdown: list[GroupResult] = _f("Breakdown", "Per-family and per-transformation results.", [])
    roc: RocCurve | None = _f("ROC curve", "Thinned ROC curve for plotting.", None)
    histograms: list[ScoreHistogram] = _f("Score histograms", "Scores per group and label, for plotting.", [])
    model: str | None = _f("Model", "Language model the activations come from.", None)
    layer: int | None = _f("Layer", "Residual-stream layer (output of block L, 0-indexed).", None)
    dataset_fingerprint: str | None = _f("Dataset fingerprint", "sha256 of the benchmark rows the result was computed on.", None)
    seed: int | None = _f("Seed", "Random seed of the fit and the bootstrap.", None)
    config: dict[str, Any] = _f("Config", "The method's configuration and fitted choices (e.g. chosen C).", {})


class SAEQuality(BaseModel):
    """How good an SAE is as a reconstruction, independent of any probe."""

    sae: str = _f("SAE", "Name or path of the SAE.")
    architecture: str | None = _f("Architecture", "e.g. 'jumprelu', 'topk'.", None)
    training_data: str | None = _f("Training data", "e.g. 'pretraining', 'chat', 'pretraining+chat finetune'.", None)
    d_sae: int | None = _f("Latents", "Number of SAE latents.", None)
    l0: float | None = _f("L0", "Mean number of active latents per token.", None)
    fvu: float | None = _f("FVU", "Fraction of variance unexplained by the reconstruction.", None)
    ce_loss_recovered: float | None = _f(
        "CE loss recovered",
        "(L_zero - L_sae) / (L_zero - L_clean): next-token loss with the reconstruction spliced in at its layer, "
        "against the clean model and zero ablation, on held-out text; 1 is perfect.", None)
    delta_lm_loss: float | None = _f("Delta LM loss", "Increase in next-token loss when the reconstruction replaces the activations.", None)
    dead_fraction: float | None = _f("Dead fraction", "Fraction of latents that never fire on the evaluation tokens.", None)
    dense_fraction: float | None = _f("Dense fraction", "Fraction of latents firing on more than 10% of tokens.", None)
    eval_split: str | None = _f("Evaluated on", "Tokens the metrics were measured on.", None)


class PublishedResult(BaseModel):
    """A number from the literature, shown beside ours (never mixed into our tables' rows)."""

    source: str = _f("Source", "Citation of the published number.")
    method: str = _f("Method", "The method as named in the source.")
    split: str = _f("Split", "The split as named in the source.")
    metric: str = _f("Metric", "e.g. 'auroc'.", "auroc")
    value: float | None = _f("Value", "The published value; null when only described qualitatively.", None)
    note: str | None = _f("Note", "Context: setting differences, or the qualitative statement.", None)


class Provenance(BaseModel):
    """What produced the report (from `assay.provenance.provenance`), plus the run's inputs."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    assay_version: str | None = _f("assay version", "Package version.", None)
    git_commit: str | None = _f("Git commit", "Commit of the assay checkout ('+dirty' if modified).", None)
    torch_version: str | None = _f("torch version", "PyTorch version.", None)
    created: str | None = _f("Created", "UTC time the report was produced.", None)
    model: str | None = _f("Model", "Language model.", None)
    layer: int | None = _f("Layer", "Residual-stream layer.", None)
    dataset_fingerprint: str | None = _f("Dataset fingerprint", "sha256 of the benchmark rows.", None)
    seed: int | None = _f("Seed", "Run seed.", None)


class Report(BaseModel):
    """A study's results: methods x splits, SAE quality, published numbers, notes."""

    schema_version: str = _f("Schema version", "Version of this results schema.", SCHEMA_VERSION)
    title: str = _f("Title", "Title shown on the rendered report.", "assay report")
    provenance: Provenance = _f("Provenance", "What produced the report.")
    config: dict[str, Any] = _f("Config", "The study configuration that was run.", {})
    results: list[MethodResult] = _f("Results", "One entry per method and split.", [])
    sae_quality: list[SAEQuality] = _f("SAE quality", "Reconstruction quality of each SAE used.", [])
    published: list[PublishedResult] = _f("Published numbers", "GDM's published results, for comparison.", [])
    notes: list[str] = _f("Notes", "Caveats and observations, in plain words.", [])

    def splits(self) -> list[str]:
        """Splits in first-seen order."""
        return list(dict.fromkeys(r.split for r in self.results))

    def methods(self) -> list[str]:
        return list(dict.fromkeys(r.method for r in self.results))


def report_json_schema() -> dict[str, Any]:
    return Report.model_json_schema()


def load_report(path) -> Report:
    from pathlib import Path

    return Report.model_validate_json(Path(path).read_text(encoding="utf-8"))
