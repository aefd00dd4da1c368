"""Offline use of a bundle: score a file of prompts, or evaluate on a labelled file at the bundle's
own thresholds (how a user checks a monitor on their own traffic before trusting it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from assay.errors import InputError
from assay.fileio import atomic_path, write_json, write_text
from assay.metrics import auprc, auroc, fpr_at_threshold, recall_at_fpr

CHUNK = 64  # prompts per call into the monitor: bounds memory, keeps the progress bar moving


def read_prompts(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a JSONL or CSV file, each with `text` (a string) and optionally `id`."""
    from assay.data.user import read_rows

    rows = read_rows(path)
    if not rows:
        raise InputError(f"{path} has no rows; give one prompt per line (JSONL with a `text` field, or CSV with a "
                         "`text` column)")
    for i, r in enumerate(rows, 1):
        if not isinstance(r.get("text"), str) or not r["text"].strip():
            raise InputError(f"{path} row {i}: needs a non-empty string `text` field; found keys {sorted(r)}")
    return rows


def scored(monitor: Any, texts: Sequence[str], progress: bool = True) -> Iterator[Any]:
    """Verdicts in input order, a chunk at a time."""
    chunks = range(0, len(texts), CHUNK)
    if progress:
        from rich.progress import track

        chunks = track(chunks, description="scoring", total=len(chunks))
    for start in chunks:
        yield from monitor.score_texts(list(texts[start: start + CHUNK]))


def score_file(monitor: Any, path: str | Path, out: str | Path, progress: bool = True) -> int:
    """Write one JSON line per input row: its id (or row number), score, probability, flag at each
    threshold, and per-token scores for token-level probes. Written to a temp file, then renamed."""
    rows = read_prompts(path)
    with atomic_path(out) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for i, (row, v) in enumerate(zip(rows, scored(monitor, [r["text"] for r in rows], progress)), 1):
            f.write(json.dumps({"id": row.get("id", i), **v.to_dict()}, ensure_ascii=False) + "\n")
    return len(rows)


def metrics_at(scores: np.ndarray, y: np.ndarray, thresholds: dict[str, float]) -> dict[str, Any]:
    """AUROC and AUPRC (when both classes are present), recall and FPR at each threshold."""
    both = len(np.unique(y)) == 2
    out: dict[str, Any] = {"n": int(len(y)), "n_pos": int(y.sum()), "n_neg": int((1 - y).sum()),
                           "auroc": auroc(scores, y) if both else None, "auprc": auprc(scores, y) if both else None}
    for name, t in thresholds.items():
        out[name] = {"recall": recall_at_fpr(scores, y, t) if y.any() else None,
                     "fpr": fpr_at_threshold(scores, y, t) if (1 - y).any() else None}
    return out


def evaluate_file(monitor: Any, data: str | Path, out_dir: str | Path, *, split: str | None = None,
                  progress: bool = True) -> dict[str, Any]:
    """Evaluate the monitor on a labelled file (or a benchmark directory, optionally one split):
    overall, per `group`, and for benchmarks per collection. Writes eval.json and eval.md."""
    from assay.data import load_dataset
    from assay.monitor.folds import collections_of

    ds = load_dataset(data)
    in_sample = _in_sample(monitor, ds, split)
    if split is not None:
        ds = ds.split(split)
    y = ds.labels
    scores = np.array([v.score for v in scored(monitor, ds.texts, progress)])
    ths = monitor.thresholds
    groupings: dict[str, dict[str, list[int]]] = {"group": {}, "collection": {}}
    for i, e in enumerate(ds.examples):
        groupings["group"].setdefault(e.group, []).append(i)
        for c in collections_of(e):
            groupings["collection"].setdefault(c, []).append(i)
    result = {
        "bundle": monitor.name, "data": str(data), "split": split, "dataset_fingerprint": ds.fingerprint,
        "in_sample": in_sample, "thresholds": ths, "overall": metrics_at(scores, y, ths),
        **{by: {k: metrics_at(scores[idx], y[idx], ths) for k, idx in sorted(g.items())}
           for by, g in groupings.items() if len(g) > 1 or by == "group"},
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "eval.json", result)
    write_text(out_dir / "eval.md", render_eval(result))
    return result


def _in_sample(monitor: Any, ds: Any, split: str | None) -> bool:
    """Whether these rows trained the bundle: its own training data, in a split it trained on."""
    training = getattr(getattr(monitor, "bundle", None), "spec", {}).get("training", {})
    if ds.fingerprint != training.get("dataset_fingerprint"):
        return False
    return split is None or split in training.get("splits", [])


def render_eval(r: dict[str, Any]) -> str:
    from assay.monitor.card import fmt as f

    names = list(r["thresholds"])

    def row(label: str, m: dict[str, Any]) -> str:
        return (f"| {label} | {m['n_pos']} / {m['n_neg']} | {f(m['auroc'])} | {f(m['auprc'])} | "
                + " | ".join(f"{f(m[k]['recall'])} / {f(m[k]['fpr'])}" for k in names) + " |")

    head = ("| rows | harmful / benign | AUROC | AUPRC | " + " | ".join(f"recall / FPR @ {k}" for k in names)
            + " |\n|---|---|---|---|" + "---|" * len(names))
    lines = [f"# {r['bundle']} on {r['data']}" + (f" ({r['split']})" if r["split"] else ""), "",
             "Recall and FPR at the bundle's own thresholds (set on its calibration prompts, not on this file).", "",
             *(["**In sample: the bundle was trained on these rows**, so these numbers say it fits them, not how it "
                "generalises; its card's leave-one-collection-out numbers are the estimate for unseen collections.", ""]
               if r.get("in_sample") else []),
             head, row("all", r["overall"])]
    for by in ("group", "collection"):
        if by in r:
            lines += ["", f"By {by}:", "", head] + [row(k, m) for k, m in r[by].items()]
    return "\n".join(lines) + "\n"
