"""Evaluation: metrics, bootstrap intervals, per-group breakdowns, the results schema and report
rendering (markdown, HTML, PNG). Names resolve lazily, so `assay --help` stays fast."""

from assay._lazy import lazy_exports

_EXPORTS = {
    "assay.eval.metrics": ["auroc", "auprc", "recall_at_fpr", "threshold_at_fpr", "fpr_at_threshold", "roc_curve"],
    "assay.eval.bootstrap": ["bootstrap_auroc_ci", "bootstrap_rate_ci", "bootstrap_ci", "cluster_weights", "weighted_auroc",
                             "cluster_auroc_ci", "paired_auroc_diff", "recall_ci", "paired_recall_diff"],
    "assay.eval.breakdown": ["group_breakdown"],
    "assay.eval.evaluate": ["SplitScores", "evaluate_split", "evaluate_method"],
    "assay.eval.schema": ["Report", "MethodResult", "GroupResult", "Interval", "Provenance", "PublishedResult",
                          "SAEQuality", "load_report", "report_json_schema"],
    "assay.eval.render": ["render_markdown", "render_html", "write_report"],
    "assay.eval.published": ["gdm_published"],
}
__all__, __getattr__ = lazy_exports(__name__, _EXPORTS)

