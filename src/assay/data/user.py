"""User datasets: `text,label[,split,group,cluster]` from JSONL or CSV, validated before anything uses them.

`split` defaults to "user", `group` to "none". `cluster` names the resampling unit a clustered
bootstrap draws whole (e.g. all paraphrases of one request, or all rows built from one
conversation); without it each row is its own unit.
"""

from __future__ import annotations

import csv
import json
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from assay.data.dataset import Dataset, Example

REQUIRED = ("text", "label")
OPTIONAL = ("split", "group", "cluster")
DEFAULT_SPLIT = "user"
_TRUE_LABELS = {"1": 1, "0": 0, "1.0": 1, "0.0": 0, "true": 1, "false": 0}


class DatasetError(ValueError):
    """A user dataset that cannot be used; the message names the offending rows."""


class DatasetWarning(UserWarning):
    """A user dataset that can be used but probably is not what was meant."""


@dataclass
class ValidationReport:
    rows: int = 0
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def _rows_str(rows: list[int], limit: int = 10) -> str:
    shown = ", ".join(str(r) for r in rows[:limit])
    return shown + (f", ... ({len(rows)} in all)" if len(rows) > limit else "")


def read_rows(path: str | Path) -> list[dict]:
    """Raw rows of a .jsonl or .csv file (1-based row numbers are the data rows' order)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        rows = []
        for n, ln in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not ln.strip():
                continue
            try:
                obj = json.loads(ln)
            except json.JSONDecodeError as err:
                raise DatasetError(f"{path}: line {n} is not valid JSON ({err.msg})") from None
            if not isinstance(obj, dict):
                raise DatasetError(f"{path}: line {n} is not a JSON object")
            rows.append(obj)
        return rows
    if suffix == ".csv":
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None:
                raise DatasetError(f"{path}: empty CSV (no header)")
            return [dict(r) for r in reader]
    raise DatasetError(f"{path}: unsupported file type {suffix!r}; "
                       "use .jsonl or .csv with columns text,label[,split,group,cluster]")


def _label(v) -> int | None:
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, (int, float)) and v in (0, 1):
        return int(v)
    if isinstance(v, str):
        return _TRUE_LABELS.get(v.strip().lower())
    return None


def _cluster(v) -> str:
    # Empty means "no unit given": `Dataset.clusters` then falls back to the row's own id.
    return "" if v is None else str(v).strip()


def validate_rows(rows: list[dict], name: str = "dataset") -> ValidationReport:
    """Check rows for missing columns, non-binary labels, empty texts, one-class splits, duplicates,
    and clusters that span splits (a warning)."""
    rep = ValidationReport(rows=len(rows))
    if not rows:
        rep.errors.append(f"{name}: no rows")
        return rep
    columns = set().union(*(r.keys() for r in rows))
    missing = [c for c in REQUIRED if c not in columns]
    if missing:
        rep.errors.append(f"{name}: missing column(s) {', '.join(missing)}; found {sorted(columns)}. "
                          f"Expected text,label[,split,group,cluster]")
        return rep
    absent = {c: [i for i, r in enumerate(rows, 1) if c not in r] for c in REQUIRED}
    for c, bad in absent.items():
        if bad:
            rep.errors.append(f"{name}: column {c!r} missing in row(s) {_rows_str(bad)}")
    bad_labels = [i for i, r in enumerate(rows, 1) if "label" in r and _label(r["label"]) is None]
    if bad_labels:
        values = sorted({repr(rows[i - 1]["label"]) for i in bad_labels})[:5]
        rep.errors.append(f"{name}: labels must be binary (0/1, 1 = harmful); row(s) {_rows_str(bad_labels)} "
                          f"have {', '.join(values)}")
    empty = [i for i, r in enumerate(rows, 1) if not isinstance(r.get("text"), str) or not r.get("text", "").strip()]
    if empty:
        rep.errors.append(f"{name}: empty or non-string text in row(s) {_rows_str(empty)}")
    if rep.errors:
        return rep

    by_split: dict[str, set[int]] = defaultdict(set)
    for r in rows:
        by_split[str(r.get("split") or DEFAULT_SPLIT)].add(_label(r["label"]))
    for split, labels in sorted(by_split.items()):
        if len(labels) < 2:
            only = "harmful (1)" if labels == {1} else "benign (0)"
            rows_in = [i for i, r in enumerate(rows, 1) if str(r.get("split") or DEFAULT_SPLIT) == split]
            rep.errors.append(f"{name}: split {split!r} has only {only} examples (row(s) {_rows_str(rows_in)}); "
                              f"AUROC needs both classes in every split")

    seen: dict[str, int] = {}
    dups, conflicts = [], []
    for i, r in enumerate(rows, 1):
        key = " ".join(r["text"].split())
        if key in seen:
            j = seen[key]
            (conflicts if _label(rows[j - 1]["label"]) != _label(r["label"]) else dups).append((j, i))
        else:
            seen[key] = i
    if conflicts:
        rep.errors.append(f"{name}: same text with different labels in rows "
                          + ", ".join(f"{a}&{b}" for a, b in conflicts[:10]))
    if dups:
        rep.warnings.append(f"{name}: {len(dups)} duplicated row(s) (same text and label): "
                            + ", ".join(f"{b} repeats {a}" for a, b in dups[:10]))
    spanning = _clusters_across_splits(rows)
    if spanning:
        rep.warnings.append(f"{name}: {len(spanning)} cluster(s) span more than one split (a resampling unit "
                            f"should live in one split): " + ", ".join(repr(c) for c in spanning[:10]))
    return rep


def _clusters_across_splits(rows: list[dict]) -> list[str]:
    splits_of: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        c = _cluster(r.get("cluster"))
        if c:
            splits_of[c].add(str(r.get("split") or DEFAULT_SPLIT))
    return sorted(c for c, s in splits_of.items() if len(s) > 1)


def load_user_dataset(path: str | Path) -> Dataset:
    """A validated user dataset; raises `DatasetError` on errors, warns (`DatasetWarning`) otherwise."""
    path = Path(path)
    rows = read_rows(path)
    rep = validate_rows(rows, path.name)
    if rep.errors:
        raise DatasetError("\n".join(rep.errors))
    for w in rep.warnings:
        warnings.warn(w, DatasetWarning, stacklevel=2)
    examples = [
        Example(text=r["text"], label=_label(r["label"]), split=str(r.get("split") or DEFAULT_SPLIT),
                source="user", family="none", transformation="none", behaviour_id=f"user:{i}",
                group=str(r.get("group") or "none"), cluster=_cluster(r.get("cluster")))
        for i, r in enumerate(rows, 1)
    ]
    return Dataset(examples, path, {"name": path.stem, "validation": {"rows": rep.rows, "warnings": rep.warnings}})
