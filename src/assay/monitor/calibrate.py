"""Re-set a bundle's thresholds on a deployer's own benign traffic.

A threshold set on the benchmark's benign prompts flags a different share of another population's
benign prompts (the card's held-out collections show how far it moves). Benign traffic is easy to
collect and needs no labels beyond "benign": scored once, it sets the thresholds at the same target
FPRs. The new bundle records the file's fingerprint and size, the thresholds it replaced, and the
FPR those old thresholds reached on this traffic.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np

from assay.errors import InputError

MIN_BENIGN = 100  # below this a 1% threshold is the top one or two scores


def recalibrate(monitor: Any, benign: str | Path, out: str | Path, *, min_benign: int = MIN_BENIGN,
                progress: bool = True) -> Path:
    """Score `benign` (JSONL/CSV with `text`) with the loaded `monitor`, set its thresholds there, and
    write the bundle with them to `out` (which may be the bundle itself: it is replaced atomically)."""
    from assay.fileio import sha256_json
    from assay.monitor.bundle import save_bundle
    from assay.monitor.card import render_card
    from assay.monitor.evaluate import read_prompts, scored
    from assay.monitor.select import thresholds

    texts = [r["text"] for r in read_prompts(benign)]
    if len(texts) < min_benign:
        raise InputError(f"{benign} has {len(texts)} prompts; thresholds at 1% FPR need at least {min_benign} benign "
                         "ones (--min-benign sets the floor)")
    scores = np.array([v.score for v in scored(monitor, texts, progress)], dtype=np.float64)
    bundle = monitor.bundle
    spec = copy.deepcopy(bundle.spec)
    before = {k: float(np.mean(scores > t["threshold"])) for k, t in spec["thresholds"].items()}
    spec["calibration"] = {
        "split": None, "source": str(Path(benign).resolve()), "n_benign": len(texts),
        "fingerprint": sha256_json(texts)[:16],
        "replaced": {"calibration": spec["calibration"], "thresholds": spec["thresholds"]},
        "fpr_of_replaced_thresholds": before,
    }
    spec["thresholds"] = thresholds(scores)
    return save_bundle(out, spec, bundle.probe, render_card(spec))


def recalibration_lines(spec: dict[str, Any]) -> list[str]:
    """The card's account of a recalibration, or nothing for a bundle as built."""
    cal = spec["calibration"]
    if cal.get("split") is not None:
        return []
    old = cal["fpr_of_replaced_thresholds"]
    return ["", "## Recalibrated", "",
            f"The thresholds were re-set on {cal['n_benign']} benign prompts of `{cal['source']}` (fingerprint "
            f"{cal['fingerprint']}); the FPR there is at most each target by construction. The build's thresholds "
            "flagged " + ", ".join(f"{v:.1%} at {k}" for k, v in old.items()) + " of these prompts. The tables above "
            "describe the bundle as built (its thresholds then), not these."]
