"""The results schema: every number a study reports, with what it means and what produced it.

Fields carry a title and description, so the JSON documents itself and `report_json_schema()`
exports a JSON Schema. Renderers (markdown, HTML, PNG) take a `Report` and nothing else, so the
curves and histograms they draw are stored here too, thinned.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from assay.probes.names import KINDS

SCHEMA_VERSION = "2"

MethodKind = Literal[KINDS + ("other",)]  # the names table's kinds, and one for a method it does not know


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
    recall_ci: Interval | None = _f("Recall CI", "Bootstrap 95% interval of the recall (clusters resampled when the split has them).", None)
    fpr: float | None = _f("FPR at threshold", "Fraction of the group's benign examples flagged at the calibrated threshold.", None)
    fpr_ci: Interval | None = _f("FPR CI", "Bootstrap 95% interval of the FPR (clusters resampled when the split has them).", None)
    auroc_vs_rest_ci: Interval | None = _f("AUROC against the other class, CI", "95% clustered bootstrap interval of auroc_vs_rest.", None)


class NegativeSlice(BaseModel):
    """All harmful rows of a split against one kind of its benign rows (hard negatives or ordinary
    benign, or one benign group): the AUROC a split's mix of negatives would otherwise average away."""

    kind: str = _f("Negatives", "'hard' (benign requests on sensitive topics, benign requests in jailbreak templates, "
                   "harmful text under an innocuous transformation), 'ordinary' (plain and transformed benign requests), "
                   "or one benign group's name.")
    groups: list[str] = _f("Benign groups", "The benchmark groups (`group` column) of its negatives.")
    n_pos: int = _f("Harmful examples", "Every harmful row of the split.")
    n_neg: int = _f("Benign examples", "Benign rows of this kind.")
    auroc: float | None = _f("AUROC", "Harmful rows against these benign rows.", None)
    auroc_ci: Interval | None = _f("AUROC CI", "95% percentile bootstrap interval resampling clusters.", None)


class MethodResult(BaseModel):
    """One method (probe or baseline) on one split."""

    model_config = ConfigDict(protected_namespaces=())

    method: str = _f("Method", "Name of the method, e.g. 'dense-logistic', 'k-sparse', 'reconstruction', 'tfidf'.")
    kind: MethodKind = _f("Kind", "Family of method, for grouping in tables.", "other")
    features: str = _f("Features", "What the method reads: an aggregation such as 'all.max' or 'resp-5', 'tokens:all' for attention probes, 'text' for baselines.")
    sae: str | None = _f("SAE", "SAE whose latents, reconstruction or error the probe reads; null for dense probes and baselines.", None)
    k: int | None = _f("k", "Number of SAE latents a sparse probe uses.", None)
    selector: str | None = _f("Selector", "How a k-sparse probe chose its latents: 'mean_diff' or 'l1' (path).", None)
    latents: list[int] | None = _f("Latents", "Indices of the SAE latents a sparse probe chose.", None)
    split: str = _f("Split", "Evaluation split: 'train', 'val' (model selection), 'calib' (threshold; held-out in distribution), 'ood', ...")
    n_pos: int = _f("Harmful examples", "Harmful examples in the split.")
    n_neg: int = _f("Benign examples", "Benign examples in the split.")
    n_units: int | None = _f("Resampling units", "Distinct clusters (behaviours / benign requests) the bootstrap resamples in this split.", None)
    auroc: float | None = _f("AUROC", "Area under the ROC curve (null when the split has one class).")
    auroc_ci: Interval | None = _f(
        "AUROC CI", "95% percentile bootstrap interval resampling clusters of rows (all rows built from one "
        "behaviour or benign request move together), not rows.", None)
    auprc: float | None = _f("AUPRC", "Average precision.", None)
    target_fpr: float = _f("Target FPR", "FPR the threshold was calibrated for on benign calibration examples.", 0.01)
    calibrated_on: str | None = _f("Calibrated on", "Split whose benign examples set the threshold.", None)
    threshold: float | None = _f("Threshold", "Score threshold calibrated on benign calibration examples and applied unchanged here.", None)
    threshold_ci: Interval | None = _f("Threshold CI", "95% bootstrap interval of the threshold over resampled calibration clusters.", None)
    recall_at_fpr: float | None = _f("Recall at target FPR", "Fraction of harmful examples scoring above the threshold.", None)
    recall_ci: Interval | None = _f(
        "Recall CI", "95% clustered bootstrap interval of the recall, the threshold re-calibrated in every "
        "resample of the calibration clusters (so its own uncertainty is included).", None)
    fpr_reached: float | None = _f("FPR reached", "Fraction of benign examples of this split above the threshold.", None)
    fpr_ci: Interval | None = _f("FPR CI", "95% clustered bootstrap interval of the FPR reached (threshold uncertainty included).", None)
    seeds: list[int] | None = _f("Seeds", "Seeds this method was trained with (SAEs and stochastic probes); the row itself is the first.", None)
    seed_auroc_mean: float | None = _f("AUROC mean over seeds", "Mean AUROC over the seeds' refits, on this split.", None)
    seed_auroc_sd: float | None = _f("AUROC sd over seeds", "Standard deviation of the AUROC over seeds (ddof=1).", None)
    computed_by: str | None = _f("Computed by", "Git commit (and code fingerprint) of the code that computed these scores.", None)
    breakdown: list[GroupResult] = _f("Breakdown", "Per-family and per-transformation results.", [])
    hard_negatives: list[NegativeSlice] = _f(
        "AUROC by kind of negative", "Every harmful row against the hard negatives, against the ordinary benign rows, "
        "and against each benign group alone, with clustered intervals (empty when the split has no group column).", [])
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
    delta_lm_loss: float | None = _f(
        "Delta LM loss", "Increase in next-token loss (nats/token) when the reconstruction replaces the residual "
        "stream at every position but BOS, on held-out text of the SAE's corpus.", None)
    delta_lm_loss_ci: Interval | None = _f("Delta LM loss CI", "95% bootstrap interval over held-out documents.", None)
    ce_loss_recovered_ci: Interval | None = _f("CE loss recovered CI", "95% bootstrap interval over held-out documents.", None)
    ce_texts: int | None = _f("CE texts", "Held-out documents the LM losses were measured on.", None)
    ce_tokens: int | None = _f("CE tokens", "Scored tokens in those documents.", None)
    fvu_other_dims: float | None = _f(
        "FVU without outlier dims", "FVU over every residual dimension but the 8 highest-variance ones (which hold most "
        "of the variance and little of what the model reads).", None)
    random_same_norm_delta_lm_loss: float | None = _f(
        "Delta LM loss, random error", "Delta LM loss when each token gets a random perturbation with the norm of the "
        "SAE's error instead: how much of the cost is the error's size rather than its direction.", None)
    dead_fraction: float | None = _f("Never fires on val", "Fraction of latents that never fire on the benchmark's validation tokens.", None)
    dead_in_training: float | None = _f(
        "Dead in training", "Fraction of latents that had not fired within the trainer's dead window when training stopped.", None)
    seed: int | None = _f("Seed", "Seed of this SAE (initialisation and data order).", None)
    training_tokens: int | None = _f("Training tokens", "Tokens the SAE was trained on (all epochs; finetunes: the finetuning tokens).", None)
    dense_fraction: float | None = _f("Dense fraction", "Fraction of latents firing on more than 10% of tokens.", None)
    eval_split: str | None = _f("Evaluated on", "Tokens the metrics were measured on.", None)
    meets_bar: bool | None = _f(
        "Meets the quality bar", "Delta LM loss and FVU within assay.experiment.sae_quality.QUALITY_BAR: below it an "
        "SAE verdict describes a broken instrument; None when a number is missing.", None)


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


class RowRef(BaseModel):
    """Names one method configuration (one row per split in `Report.results`)."""

    method: str = _f("Method", "As in `MethodResult.method`.")
    features: str = _f("Features", "As in `MethodResult.features`.")
    sae: str | None = _f("SAE", "As in `MethodResult.sae`.", None)
    k: int | None = _f("k", "As in `MethodResult.k`.", None)
    selector: str | None = _f("Selector", "As in `MethodResult.selector`.", None)
    seed: int | None = _f("Seed", "As in `MethodResult.seed`.", None)


class Comparison(BaseModel):
    """A paired difference of two methods' AUROC on the same examples, with a clustered interval."""

    kind: str = _f("Kind", "'same_aggregation' (SAE method vs the dense probe on the same aggregation), "
                   "'family_best' (each family's configuration chosen on validation vs the dense probe's), or 'other'.")
    split: str = _f("Split", "Split both were scored on.")
    a: RowRef = _f("A", "The first method (usually the dense probe).")
    b: RowRef = _f("B", "The second method.")
    a_auroc: float = _f("AUROC of A", "On this split.")
    b_auroc: float = _f("AUROC of B", "On this split.")
    diff: float = _f("A - B", "AUROC of A minus AUROC of B.")
    ci: Interval = _f("CI", "95% paired clustered bootstrap interval of A - B (the same resampled clusters for both).")
    p_two_sided: float | None = _f("p", "Crude two-sided bootstrap p-value of A - B = 0.", None)
    outside_noise: bool = _f("Outside noise", "True when the interval excludes zero.")
    seed_diff_mean: float | None = _f("A - B mean over seeds", "Mean of the difference over the seeds both were trained with.", None)
    seed_diff_sd: float | None = _f("A - B sd over seeds", "Standard deviation of the difference over seeds.", None)


class Citation(BaseModel):
    """One number a finding quotes, and where it comes from in this report."""

    source: str = _f("Source", "'result' (a MethodResult field), 'comparison' (a Comparison field), "
                     "'sae_quality' (an SAEQuality field) or 'diagnostic' (a value under `diagnostics`).")
    ref: RowRef | None = _f("Row", "The configuration whose number is quoted (for results: the row; for "
                            "comparisons: method B; for SAE quality: method = SAE name, seed).", None)
    versus: RowRef | None = _f("Versus", "Method A of a comparison.", None)
    split: str | None = _f("Split", "The split.", None)
    metric: str = _f("Metric", "The field quoted, e.g. 'auroc', 'diff', 'delta_lm_loss'; for diagnostics a "
                     "path such as 'gap_closed/2/fraction_closed'.")
    value: float = _f("Value", "The value as computed (the text shows it rounded).")


class Finding(BaseModel):
    """A sentence generated from the numbers, the GDM claim it speaks to, and what it cites."""

    claim: str = _f("GDM claim", "The published claim this finding tests, or '' for our own observations.")
    text: str = _f("Text", "The finding in plain words, generated from the cited numbers.")
    holds: bool | None = _f("Holds", "Whether our numbers agree with GDM's claim (null when not a test of one).", None)
    cites: list[Citation] = _f("Citations", "Every number the text quotes, with its row.", [])
    below_bar: list[str] = _f(
        "SAEs below the quality bar", "The SAEs this finding is about whose quality misses the bar (delta LM loss "
        "and FVU, `SAEQuality.meets_bar`): the verdict describes those SAEs as trained here, not good SAEs.", [])


class Report(BaseModel):
    """A study's results: methods x splits, SAE quality, published numbers, notes."""

    schema_version: str = _f("Schema version", "Version of this results schema.", SCHEMA_VERSION)
    title: str = _f("Title", "Title shown on the rendered report.", "assay report")
    provenance: Provenance = _f("Provenance", "What produced the report.")
    config: dict[str, Any] = _f("Config", "The study configuration that was run.", {})
    results: list[MethodResult] = _f("Results", "One entry per method and split.", [])
    sae_quality: list[SAEQuality] = _f("SAE quality", "Reconstruction quality of each SAE used.", [])
    published: list[PublishedResult] = _f("Published numbers", "GDM's published results, for comparison.", [])
    comparisons: list[Comparison] = _f("Comparisons", "Paired, clustered differences between methods.", [])
    findings: list[Finding] = _f("Findings", "Generated findings with the numbers they cite.", [])
    diagnostics: dict[str, Any] = _f("Diagnostics", "Extra analyses (e.g. why difference of means fails, latent stability).", {})
    notes: list[str] = _f("Notes", "Caveats and observations, in plain words (the findings' texts first).", [])

    def splits(self) -> list[str]:
        """Splits in first-seen order."""
        return list(dict.fromkeys(r.split for r in self.results))

    def methods(self) -> list[str]:
        return list(dict.fromkeys(r.method for r in self.results))


def report_json_schema() -> dict[str, Any]:
    return Report.model_json_schema()


def load_report(path) -> Report:
    from pathlib import Path

    from pydantic import ValidationError

    from assay.errors import InputError

    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a directory; pass a results JSON (report.json)")
    try:
        return Report.model_validate_json(path.read_text(encoding="utf-8"))
    except ValidationError as err:
        first = str(err).splitlines()
        raise InputError(f"{path} is not an assay results JSON ({first[0]}: {first[1] if len(first) > 1 else ''}"
                         f"{'; invalid JSON' if 'json_invalid' in str(err) else ''}); pass a report.json written by "
                         "assay") from None
