"""Per-group results (jailbreak family, innocuous transformation) at the split's fixed threshold.

Many groups hold one class only (a jailbreak family is all harmful; a transformation is all
benign hard negatives), where AUROC within the group is undefined: for those we report the recall
or FPR at the calibrated threshold, and the AUROC of the group against the other class of the split.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from assay.metrics.bootstrap import bootstrap_rate_ci
from assay.metrics import auroc, auroc_pos_neg
from assay.report.schema import GroupResult, Interval


def _interval(ci: tuple[float, float]) -> Interval | None:
    return None if np.isnan(ci[0]) else Interval(low=ci[0], high=ci[1])


def _num(x: float) -> float | None:
    return None if x is None or np.isnan(x) else float(x)


def group_breakdown(
    scores,
    y,
    groups: Sequence[str],
    threshold: float | None,
    *,
    by: str,
    n_boot: int = 1000,
    seed: int = 0,
) -> list[GroupResult]:
    """One `GroupResult` per distinct value of `groups` (aligned with `scores`)."""
    s = np.asarray(scores, np.float64).ravel()
    yy = np.asarray(y).ravel().astype(int)
    g = np.asarray(list(groups), dtype=object)
    pos_all, neg_all = s[yy == 1], s[yy == 0]
    out = []
    for name in sorted(set(g.tolist())):
        sel = g == name
        gp, gn = s[sel & (yy == 1)], s[sel & (yy == 0)]
        if len(gp) and len(gn):
            vs_rest = None
        elif len(gp):
            vs_rest = auroc_pos_neg(gp, neg_all)
        else:
            vs_rest = auroc_pos_neg(pos_all, gn)
        res = GroupResult(
            by=by, group=str(name), n_pos=len(gp), n_neg=len(gn),
            auroc=_num(auroc(s[sel], yy[sel])), auroc_vs_rest=_num(vs_rest) if vs_rest is not None else None,
        )
        if threshold is not None and len(gp):
            res.recall = float(np.mean(gp > threshold))
            res.recall_ci = _interval(bootstrap_rate_ci(gp > threshold, n_boot=n_boot, seed=seed))
        if threshold is not None and len(gn):
            res.fpr = float(np.mean(gn > threshold))
            res.fpr_ci = _interval(bootstrap_rate_ci(gn > threshold, n_boot=n_boot, seed=seed))
        out.append(res)
    return out
