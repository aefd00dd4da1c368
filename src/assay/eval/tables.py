"""The report's tables as plain data (title, header, rows), rendered to markdown or HTML elsewhere."""

from __future__ import annotations

from dataclasses import dataclass, field

from assay.eval.plots import row_label
from assay.eval.schema import Interval, MethodResult, Report


@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list[str]]
    caption: str = ""
    id: str = field(default="")


def fmt(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def fmt_ci(x: float | None, ci: Interval | None, digits: int = 3) -> str:
    if x is None:
        return "–"
    return f"{x:.{digits}f} [{ci.low:.{digits}f}, {ci.high:.{digits}f}]" if ci else f"{x:.{digits}f}"


def _by_label(report: Report) -> dict[str, dict[str, MethodResult]]:
    out: dict[str, dict[str, MethodResult]] = {}
    for r in report.results:
        out.setdefault(row_label(r), {})[r.split] = r
    return out


def _kind(rows: dict[str, MethodResult]) -> str:
    return next(iter(rows.values())).kind


def headline_tables(report: Report) -> list[Table]:
    """AUROC and recall at the target FPR, methods x splits, baselines beside the probes."""
    splits, methods = report.splits(), _by_label(report)
    def key(m: str):  # group by kind, then method family, SAE, and k numerically (2 before 20)
        r = next(iter(methods[m].values()))
        return (r.kind, r.method.split("[")[0], r.sae or "", r.k or 0, m)

    order = sorted(methods, key=key)
    auroc = Table(
        "AUROC", ["method", "kind"] + splits,
        [[m, _kind(methods[m])] + [fmt_ci(methods[m][s].auroc, methods[m][s].auroc_ci) if s in methods[m] else "–" for s in splits] for m in order],
        "AUROC with stratified percentile bootstrap 95% intervals.", "table-auroc",
    )
    target = report.results[0].target_fpr if report.results else 0.01

    def cell(r: MethodResult | None) -> str:
        if r is None or r.recall_at_fpr is None:
            return "–"
        return f"{fmt_ci(r.recall_at_fpr, r.recall_ci)} (FPR {fmt(r.fpr_reached)})"

    recall = Table(
        f"Recall at {target:.0%} FPR", ["method", "kind"] + splits,
        [[m, _kind(methods[m])] + [cell(methods[m].get(s)) for s in splits] for m in order],
        "Threshold set on benign validation examples, applied unchanged to every split; the FPR it "
        "actually reached on each split in parentheses.", "table-recall",
    )
    return [auroc, recall]


def breakdown_tables(report: Report, split: str, max_methods: int = 8) -> list[Table]:
    """Per family / transformation: recall (harmful groups) or FPR (benign groups) at the fixed
    threshold for the best methods on `split`, with AUROC against the rest of the split."""
    rows_ = sorted((r for r in report.results if r.split == split and r.breakdown), key=lambda r: -(r.auroc or 0))[:max_methods]
    tables = []
    for by in dict.fromkeys(g.by for r in rows_ for g in r.breakdown):
        groups = list(dict.fromkeys(g.group for r in rows_ for g in r.breakdown if g.by == by))
        body = []
        for name in groups:
            line = [name]
            for r in rows_:
                g = next((g for g in r.breakdown if g.by == by and g.group == name), None)
                if g is None:
                    line.append("–")
                    continue
                parts = []
                if g.recall is not None:
                    parts.append(f"recall {fmt(g.recall, 2)}")
                if g.fpr is not None:
                    parts.append(f"FPR {fmt(g.fpr, 2)}")
                auc = g.auroc if g.auroc is not None else g.auroc_vs_rest
                if auc is not None:
                    parts.append(f"AUROC {fmt(auc)}")
                line.append("; ".join(parts) + f" (n={g.n_pos + g.n_neg})")
            body.append(line)
        tables.append(Table(
            f"{split}: by {by}", [by] + [row_label(r) for r in rows_], body,
            "Recall for harmful groups, FPR for benign groups, at the calibrated threshold; AUROC within "
            "the group, or of the group against the other class of the split when it has one class.",
            f"table-{split}-{by}",
        ))
    return tables


def sae_quality_table(report: Report) -> Table | None:
    if not report.sae_quality:
        return None
    cols = ["sae", "architecture", "training_data", "d_sae", "l0", "fvu", "ce_loss_recovered", "delta_lm_loss", "dead_fraction", "dense_fraction"]
    rows = [[fmt(v) if isinstance(v, float) else ("–" if v is None else str(v)) for v in (getattr(q, c) for c in cols)]
            for q in report.sae_quality]
    return Table("SAE quality", cols, rows, "Reconstruction quality of each SAE (independent of probing).", "table-sae")


def published_table(report: Report) -> Table | None:
    if not report.published:
        return None
    rows = [[p.source, p.method, p.split, p.metric, fmt(p.value), p.note or ""] for p in report.published]
    return Table("Published (GDM)", ["source", "method", "split", "metric", "value", "note"], rows,
                 "Numbers from the literature, on their model and data: context, not a like-for-like comparison.",
                 "table-published")


def all_tables(report: Report) -> list[Table]:
    tables = headline_tables(report)
    for split in report.splits():
        tables += breakdown_tables(report, split)
    tables += [t for t in (sae_quality_table(report), published_table(report)) if t is not None]
    return tables
