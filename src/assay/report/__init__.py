"""The report, the top of the pipeline: per-split results from scores, per-group breakdowns, the
results schema, tables, figures and rendering (markdown, HTML, PNG). The metrics it computes live
in `assay.metrics`, below every stage. Names resolve lazily, so `assay --help` stays fast."""

from assay._lazy import lazy_exports

_EXPORTS = {
    "assay.report.breakdown": ["group_breakdown"],
    "assay.report.evaluate": ["SplitScores", "evaluate_split", "evaluate_method"],
    "assay.report.schema": ["Report", "MethodResult", "GroupResult", "Interval", "Provenance", "PublishedResult",
                          "SAEQuality", "load_report", "report_json_schema"],
    "assay.report.render": ["render_markdown", "render_html", "write_report"],
    "assay.report.published": ["gdm_published"],
}
__all__, __getattr__ = lazy_exports(__name__, _EXPORTS)

