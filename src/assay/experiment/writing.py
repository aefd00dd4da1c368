"""How a finding is written: `Writer` collects the citation of every number a sentence quotes
(a report row, a comparison, an SAE-quality record, a diagnostic), so no number in a finding is
typed by hand; and the few helpers that name and find configurations in a report."""

from __future__ import annotations

from functools import partial
from typing import Any

from assay.experiment.families import same_config
from assay.probes import names


CMP_SPLITS = ("calib", "ood")

label = partial(names.label, sae=" on the {} SAE")  # how prose names a configuration


def f3(x: float) -> str:
    return f"{x:.3f}"


def signed(x: float) -> str:
    return f"{x:+.3f}"


class Writer:
    """Collects the citations of one finding while its text is built."""

    def __init__(self, report: Any):
        self.report, self.cites = report, []

    def result(self, ref: Any, split: str, metric: str = "auroc") -> str:
        from assay.report.schema import Citation

        r = find_result(self.report, ref, split)
        value = getattr(r, metric) if r is not None else None
        if value is None:
            return "n/a"
        self.cites.append(Citation(source="result", ref=ref, split=split, metric=metric, value=value))
        return f3(value)

    def with_ci(self, ref: Any, split: str) -> str:
        r = find_result(self.report, ref, split)
        text = self.result(ref, split)
        if r is not None and r.auroc_ci is not None:
            text += f" [{f3(r.auroc_ci.low)}, {f3(r.auroc_ci.high)}]"
        if r is not None and r.seed_auroc_mean is not None:
            text += f" (mean over {len(r.seeds)} seeds {f3(r.seed_auroc_mean)} ± {f3(r.seed_auroc_sd)})"
        return text

    def diff(self, a: Any, b: Any, split: str) -> tuple[str, Any]:
        """'+0.123 [0.1, 0.2]' for AUROC(a) - AUROC(b) on `split`, and the comparison."""
        from assay.report.schema import Citation

        c = find_comparison(self.report, a, b, split)
        if c is None:
            return "n/a", None
        self.cites.append(Citation(source="comparison", ref=b, versus=a, split=split, metric="diff", value=c.diff))
        seeds = f", over seeds {signed(c.seed_diff_mean)} ± {f3(c.seed_diff_sd)}" if c.seed_diff_mean is not None else ""
        return f"{signed(c.diff)} [{signed(c.ci.low)}, {signed(c.ci.high)}]{seeds}", c

    def value(self, source: str, metric: str, value: float, *, ref: Any = None, fmt=f3) -> str:
        from assay.report.schema import Citation

        self.cites.append(Citation(source=source, ref=ref, metric=metric, value=value))
        return fmt(value)

    def finding(self, claim: str, text: str, holds: bool | None, saes: list[str] | None = None) -> Any:
        """A finding from `text` and the numbers it cited; one about `saes` ends with their quality
        (delta LM loss and FVU, every seed) and records those below the bar."""
        from assay.report.schema import Finding

        below: list[str] = []
        if saes:
            quality, below = self.quality(saes)
            text = f"{text} {quality}" if quality else text
        f = Finding(claim=claim, text=text, holds=holds, cites=self.cites, below_bar=below)
        self.cites = []
        return f

    def quality(self, saes: list[str]) -> tuple[str, list[str]]:
        """'SAE quality (...): pretrain delta LM loss 0.41, FVU 0.19; ...' with each number cited, and
        the SAEs any of whose seeds misses the bar (or has no verdict)."""
        from assay.experiment.sae_quality import QUALITY_BAR

        parts, below = [], []
        for sae in saes:
            qs = sorted((q for q in self.report.sae_quality if q.sae == sae), key=lambda q: q.seed or 0)
            if not qs:
                continue
            vals = {m: [self.value("sae_quality", m, getattr(q, m), ref=quality_ref(q)) for q in qs
                        if getattr(q, m) is not None] for m in ("delta_lm_loss", "fvu")}
            txt = ", ".join(f"{name} {'/'.join(v)}" for name, v in (("delta LM loss", vals["delta_lm_loss"]),
                                                                   ("FVU", vals["fvu"])) if v)
            parts.append(f"{sae} {txt}")
            if not all(q.meets_bar for q in qs):
                below.append(sae)
        if not parts:
            return "", []
        n_seeds = max(len([q for q in self.report.sae_quality if q.sae == s]) for s in saes)
        head = ("SAE quality (delta LM loss in nats/token on held-out text of each SAE's corpus, FVU on the "
                "benchmark's validation tokens" + (", per seed" if n_seeds > 1 else "") + "): ")
        bar = f"delta LM loss <= {QUALITY_BAR['delta_lm_loss']} and FVU <= {QUALITY_BAR['fvu']}"
        tail = (f" Every one meets the quality bar ({bar})." if not below else
                f" Below the quality bar ({bar}): {', '.join(below)}; for those this verdict describes SAEs as trained "
                "here, not good SAEs.")
        return head + "; ".join(parts) + "." + tail, below


def find_result(report: Any, ref: Any, split: str) -> Any | None:
    return next((r for r in report.results if r.split == split and same_config(r, ref)), None)


def find_comparison(report: Any, a: Any, b: Any, split: str) -> Any | None:
    return next((c for c in report.comparisons if c.split == split and same_config(c.a, a) and same_config(c.b, b)),
                None)


def compared(c: Any, better: str, worse: str, tie: str) -> str:
    if c is None:
        return "not compared"
    return better if c.outside_noise and c.diff > 0 else worse if c.outside_noise and c.diff < 0 else tie


def interval_text(w: "Writer", path: str, row: dict[str, Any]) -> str:
    """'+0.123 [+0.050, +0.190]' for a diagnostic's {'value', 'ci'}, the value cited."""
    return f"{w.value('diagnostic', f'{path}/value', row['value'], fmt=signed)} [{signed(row['ci'][0])}, {signed(row['ci'][1])}]"


def dense_at(dense: Any, features: str) -> Any:
    return dense.model_copy(update={"features": features})


def row_ref(d: dict) -> Any:
    from assay.report.schema import RowRef

    return RowRef(**d)


def quality_ref(q: Any) -> Any:
    from assay.report.schema import RowRef

    return RowRef(method=q.sae, features="sae_quality", seed=q.seed)
