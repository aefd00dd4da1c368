"""Recompute a committed report's numbers from its per-example scores file, and say which differ.

A reader who doubts an interval need not rerun the study: `assay experiment recompute DIR` reads
`DIR/report.json` and `DIR/scores.npz` (the headline runs' scores on every row, see
`score_table`), evaluates every run in the file again with the study's own code and settings
(the seed, the number of resamples and the calibration split come from the report's config), and
compares every number: each result row (AUROC, recall and FPR at the calibrated threshold, their
clustered intervals, the per-group breakdown, the AUROC by kind of negative), each comparison
between two runs in the file, and the hard-negative, gap-closed and k-sparse gap diagnostics.
Choices (which configuration is each family's best) are read from the report, as the study made
them on validation numbers only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterator

# Fields of a result row that describe where it came from rather than what the scores give.
_PROVENANCE = ("latents", "config", "computed_by", "model", "layer", "dataset_fingerprint", "kind", "seed")
TOLERANCE = 1e-9


@dataclass
class Section:
    """One part of the report recomputed: how many numbers and intervals were compared, and the
    ones that differ (path, committed, recomputed)."""

    name: str
    values: int = 0
    intervals: int = 0
    max_abs_diff: float = 0.0
    mismatches: list[tuple[str, Any, Any]] = field(default_factory=list)

    def compare(self, path: str, committed: Any, recomputed: Any) -> None:
        for key, a, b in _pairs(path, committed, recomputed):
            self.values += 1
            self.intervals += key.endswith(("ci/low", "ci/0"))
            if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
                if math.isnan(a) and math.isnan(b):
                    continue
                d = abs(a - b)
                self.max_abs_diff = max(self.max_abs_diff, d if math.isfinite(d) else math.inf)
                if not d <= TOLERANCE:
                    self.mismatches.append((key, a, b))
            elif a != b:
                self.mismatches.append((key, a, b))


def _pairs(path: str, a: Any, b: Any) -> Iterator[tuple[str, Any, Any]]:
    """Leaves of two JSON-like values side by side; a missing or extra entry is a leaf that differs."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            yield from _pairs(f"{path}/{k}", a.get(k, "<missing>"), b.get(k, "<missing>"))
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            yield from _pairs(f"{path}/{i}", x, y)
    else:
        yield path, a, b


def recompute(report: Any, table: Any, progress: bool = False) -> list[Section]:
    """Every number of `report` that the runs in `table` determine, recomputed and compared (a
    progress bar over the runs with `progress`: the full study's 65 take about a minute)."""
    from rich.progress import track

    from assay.experiment.config import StudyConfig
    from assay.experiment.evaluation import Evaluator
    from assay.experiment.families import CONFIG_FIELDS, detailed, family_best, run_of, to_ref
    from assay.report.evaluate import evaluate_method

    cfg = StudyConfig.model_validate(report.config)
    ev = Evaluator(table, cfg)
    key = lambda r: tuple(getattr(r, f) for f in CONFIG_FIELDS)  # noqa: E731
    committed_rows = {(*key(r), r.split): r for r in report.results}
    kinds = {key(r): r.kind for r in report.results}

    results, rows = Section("results"), []
    for run in track(list(table.scores), description="recomputing runs", disable=not progress):
        if key(run) not in kinds:
            results.mismatches.append((run.id, "<no committed row>", "<scores>"))
            continue
        again = evaluate_method(run.method, table.split_scores(table.scores[run]), features=run.features,
                                calibrate_on=cfg.calibrate_on, target_fpr=cfg.target_fpr, n_boot=cfg.n_boot,
                                seed=cfg.seed, detail=detailed(run, cfg), kind=kinds[key(run)], sae=run.sae,
                                k=run.k, selector=run.selector)
        for r in again:
            r.seed = run.seed
        rows += again
    ev._seed_summaries(rows)
    for r in rows:
        c = committed_rows.get((*key(r), r.split))
        if c is None:
            results.mismatches.append((f"{to_ref(r)}/{r.split}", "<no committed row>", "<recomputed>"))
            continue
        results.compare(f"{r.method}/{r.features}/{r.sae}/{r.k}/{r.selector}/s{r.seed}/{r.split}",
                        c.model_dump(mode="json", exclude=set(_PROVENANCE)),
                        r.model_dump(mode="json", exclude=set(_PROVENANCE)))

    comparisons = Section("comparisons")
    for c in report.comparisons:
        a, b = run_of(c.a), run_of(c.b)
        if a in table.scores and b in table.scores:
            comparisons.compare(f"{c.kind}/{c.split}/{a.id} vs {b.id}", c.model_dump(mode="json"),
                                ev.compare(a, b, c.split, c.kind).model_dump(mode="json"))

    d, out = report.diagnostics, [results, comparisons]
    best = family_best(report.results, cfg)  # the study's choices, made on validation numbers
    for name, again in (("hard_negatives", lambda: ev.hard_negatives(best, rows)),
                        ("gap_closed", lambda: ev.gap_closed(report.results)),
                        ("ksparse_gaps", lambda: ev.ksparse_gaps(report.results))):
        if name in d:
            sec = Section(name)
            sec.compare(name, _json(d[name]), _json(again()))
            out.append(sec)
    return out


def _json(x: Any) -> Any:
    """`x` as it reads back from report.json (tuples as lists, numpy scalars as floats)."""
    import json

    return json.loads(json.dumps(x, default=float))
