"""Evaluation: metrics, bootstrap intervals, per-group breakdowns, the results schema and report
rendering (markdown, HTML, PNG)."""

from assay.eval.bootstrap import bootstrap_auroc_ci, bootstrap_ci, bootstrap_rate_ci
from assay.eval.breakdown import group_breakdown
from assay.eval.evaluate import SplitScores, evaluate_method, evaluate_split
from assay.eval.metrics import auprc, auroc, fpr_at_threshold, recall_at_fpr, roc_curve, threshold_at_fpr
from assay.eval.schema import (
    GroupResult, Interval, MethodResult, Provenance, PublishedResult, Report, SAEQuality, load_report, report_json_schema,
)

__all__ = [
    "auroc", "auprc", "recall_at_fpr", "threshold_at_fpr", "fpr_at_threshold", "roc_curve",
    "bootstrap_auroc_ci", "bootstrap_rate_ci", "bootstrap_ci", "group_breakdown",
    "SplitScores", "evaluate_split", "evaluate_method",
    "Report", "MethodResult", "GroupResult", "Interval", "Provenance", "PublishedResult", "SAEQuality",
    "load_report", "report_json_schema", "render_markdown", "render_html", "write_report",
]


def __getattr__(name: str):
    # rendering pulls in matplotlib: import it only when asked
    if name in ("render_markdown", "render_html", "write_report"):
        from assay.eval import render

        return getattr(render, name)
    raise AttributeError(name)
