"""User datasets: `text,label[,split,group,cluster]` from JSONL or CSV, validated before anything uses them.

`split` defaults to "user", `group` to "none". `cluster` names the resampling unit a clustered
bootstrap draws whole (e.g. all paraphrases of one request, or all rows built from one
conversation); without it each row is its own unit.
"""

from __future__ import annotations

import csv
import io
import json
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from assay.data.dataset import Dataset, Example
from assay.errors import InputError

REQUIRED = ("text", "label")
OPTIONAL = ("split", "group", "cluster")
DEFAULT_SPLIT = "user"
_TRUE_LABELS = {"1": 1, "0": 0, "1.0": 1, "0.0": 0, "true": 1, "false": 0}


class DatasetError(InputError):
    """A user dataset that cannot be used; the message names the offending rows."""


class DatasetWarning(UserWarning):
    """A user dataset that can be used but probably is not what was meant."""


@dataclass
class ValidationReport:
    rows: int = 0
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    splits: dict[str, int] = field(default_factory=dict)  # rows per split, once the cells are valid

    @property
    def ok(self) -> bool:
        return not self.errors


def _rows_str(rows: list[int], limit: int = 10) -> str:
    shown = ", ".join(str(r) for r in rows[:limit])
    return shown + (f", ... ({len(rows)} in all)" if len(rows) > limit else "")


_SUFFIX_HINTS = {
    ".json": "if it is a JSON array, write one object per line and name it .jsonl",
    ".tsv": "save it as comma-separated .csv",
    ".txt": "save it as .csv (comma-separated, header text,label) or .jsonl",
    ".xlsx": "export it from the spreadsheet as CSV UTF-8",
    ".xls": "export it from the spreadsheet as CSV UTF-8",
}


def read_rows(path: str | Path) -> list[dict]:
    """Raw rows of a .jsonl or .csv file (1-based row numbers are the data rows' order).

    UTF-8 with or without a byte-order mark (spreadsheets write one) is read; other encodings are
    refused with the line of the first bad byte.
    """
    path = Path(path)
    if path.is_dir():
        raise DatasetError(f"{path} is a directory; pass a .jsonl or .csv file (or a benchmark directory with a "
                           "manifest.json)")
    if not path.exists():
        raise DatasetError(f"{path}: no such file; check the path")
    if not path.is_file():
        raise DatasetError(f"{path} is not a regular file (a pipe or device?); pass a .jsonl or .csv file")
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".ndjson", ".csv"):
        hint = _SUFFIX_HINTS.get(suffix, "use .jsonl or .csv")
        raise DatasetError(f"{path}: unsupported file type {suffix or '(no extension)'!r}; {hint} "
                           "(columns text,label[,split,group,cluster])")
    text = _decode(path)
    return _jsonl_rows(path, text) if suffix in (".jsonl", ".ndjson") else _csv_rows(path, text)


def _jsonl_rows(path: Path, text: str) -> list[dict]:
    if text.lstrip().startswith("["):  # one JSON array (often pretty-printed), not JSON Lines
        raise DatasetError(f"{path}: starts with '[', a JSON array; a .jsonl file holds one object per line, "
                           '{"text": ..., "label": 0}, with no enclosing brackets')
    rows = []
    for n, ln in enumerate(text.splitlines(), 1):
        if not ln.strip():
            continue
        try:
            obj = json.loads(ln, object_pairs_hook=_no_repeated_keys)
        except json.JSONDecodeError as err:
            raise DatasetError(f"{path}: line {n} is not valid JSON ({err.msg}); each line must be one JSON "
                               "object") from None
        except _RepeatedKey as err:
            raise DatasetError(f"{path}: line {n} gives key {err.args[0]!r} twice; keep one") from None
        if not isinstance(obj, dict):
            raise DatasetError(f"{path}: line {n} is a JSON {type(obj).__name__}, not an object; each line "
                               'must be one object like {"text": ..., "label": 0}')
        rows.append(obj)
    return rows


class _RepeatedKey(Exception):
    pass


def _no_repeated_keys(pairs: list[tuple]) -> dict:
    # json.loads keeps the last of two equal keys: a row saying "label" twice would lose one silently.
    keys = [k for k, _ in pairs]
    for k in keys:
        if keys.count(k) > 1:
            raise _RepeatedKey(k)
    return dict(pairs)


def _csv_rows(path: Path, text: str) -> list[dict]:
    # strict: a quote that is never closed raises instead of swallowing every later line into one field.
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    # csv refuses fields over 128 KiB by default; no field can be longer than the file.
    csv.field_size_limit(max(csv.field_size_limit(), len(text) + 1))
    records: list[tuple[int, list[str]]] = []  # (first line of the record, its fields)
    start = 1
    try:
        for rec in reader:
            if rec:  # blank lines hold no record
                records.append((start, rec))
            start = reader.line_num + 1
    except csv.Error as err:
        raise DatasetError(f"{path}: line {start} is not readable CSV ({err}); a field that starts with a quote must "
                           'end with one, and quotes inside it are doubled ("")') from None
    if not records:
        raise DatasetError(f"{path}: empty CSV (no header); the first line must name the columns, e.g. text,label")
    (_, header), body = records[0], records[1:]
    _check_header(path, header)
    rows = []
    for line, rec in body:
        if len(rec) > len(header) and any(f.strip() for f in rec[len(header):]):
            raise DatasetError(f"{path}: line {line} has {len(rec)} fields but the header names {len(header)}; "
                               "a comma inside a text? Put the text in double quotes")
        if any(h in REQUIRED + OPTIONAL for h in header[len(rec):]):  # a short row must not lose a field assay reads
            raise DatasetError(f"{path}: line {line} has {len(rec)} field(s) but the header names {len(header)} "
                               f"({','.join(header)}); fill the missing fields (empty is fine for split/group/cluster)")
        rows.append({h: v for h, v in zip(header, rec) if h})  # columns assay does not read may be left off
    return rows


def _check_header(path: Path, header: list[str]) -> None:
    if "text" not in header and len(header) == 1 and any(d in header[0] for d in "\t;|"):
        raise DatasetError(f"{path}: one column {header[0]!r}: the file seems separated by tabs, semicolons or bars; "
                           "save it as comma-separated CSV")
    dupes = sorted({c for c in header if c and header.count(c) > 1})
    if dupes:
        raise DatasetError(f"{path}: the header names column(s) {', '.join(map(repr, dupes))} more than once; "
                           "rename or drop the copies")


def _decode(path: Path) -> str:
    data = path.read_bytes()
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise DatasetError(f"{path}: the file is UTF-16 (it starts with a UTF-16 byte-order mark); save it as UTF-8")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise DatasetError(f"{path}: line {line} (byte {err.start}) is not UTF-8 ({data[err.start:err.start + 1]!r}); "
                           "save the file as UTF-8") from None
    if "\x00" in text:
        line = text[:text.index("\x00")].count("\n") + 1
        raise DatasetError(f"{path}: line {line} holds a NUL byte; is it a binary file? Save it as UTF-8 text")
    return text


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


def validate_rows(rows: list[dict], name: str = "dataset", need_train: bool = False) -> ValidationReport:
    """Check rows for missing columns, non-binary labels, empty texts, one-class splits, duplicates
    (across splits: a leak), clusters that span splits (a warning), and with `need_train` a `train`
    split to fit probes on."""
    rep = ValidationReport(rows=len(rows))
    if not rows:
        rep.errors.append(f"{name}: no data rows (only a header, or nothing); add rows of text,label")
        return rep
    columns = set().union(*(r.keys() for r in rows))
    missing = [c for c in REQUIRED if c not in columns]
    if missing:
        rep.errors.append(f"{name}: missing column(s) {', '.join(missing)}; found {sorted(map(str, columns))}"
                          f"{_near_misses(missing, columns)}. Expected text,label[,split,group,cluster]")
        return rep
    _check_cells(rows, name, rep)
    if rep.errors:
        return rep

    by_split: dict[str, set[int]] = defaultdict(set)
    for r in rows:
        by_split[_split(r)].add(_label(r["label"]))
    rep.splits = dict(Counter(_split(r) for r in rows))
    if need_train and "train" not in by_split:
        rep.errors.append(f"{name}: no row has split 'train' (splits: {', '.join(sorted(by_split))}); `probe train` "
                          "fits on split train and tunes on split val: name those splits in the split column")
    for split, labels in sorted(by_split.items()):
        if len(labels) < 2:
            only = "harmful (1)" if labels == {1} else "benign (0)"
            rows_in = [i for i, r in enumerate(rows, 1) if _split(r) == split]
            rep.errors.append(f"{name}: split {split!r} has only {only} examples (row(s) {_rows_str(rows_in)}); "
                              f"AUROC needs both classes in every split")
    unsplit = [i for i, r in enumerate(rows, 1) if not str(r.get("split") or "").strip()]
    if unsplit and len(unsplit) < len(rows):  # a split column with holes: those rows fall out of train/val
        rep.warnings.append(f"{name}: row(s) {_rows_str(unsplit)} have no split value and go to split "
                            f"{DEFAULT_SPLIT!r}, which `probe train` does not fit on; give them one")

    _duplicates(rows, name, rep)
    spanning = _clusters_across_splits(rows)
    if spanning:
        rep.warnings.append(f"{name}: {len(spanning)} cluster(s) span more than one split (a resampling unit "
                            f"should live in one split): " + ", ".join(repr(c) for c in spanning[:10]))
    return rep


def _near_misses(missing: list[str], columns: set) -> str:
    """' (did you mean 'Text' for 'text'?)' where a column differs only in case or spacing."""
    found = [f"{c!r} to {m!r}" for m in missing for c in sorted(map(str, columns)) if c.strip().lower() == m]
    return f" (column names are lower case with no spaces: rename {', '.join(found)})" if found else ""


def _check_cells(rows: list[dict], name: str, rep: ValidationReport) -> None:
    """Every row has a text and a binary label."""
    for c in REQUIRED:
        bad = [i for i, r in enumerate(rows, 1) if c not in r]
        if bad:
            rep.errors.append(f"{name}: column {c!r} missing in row(s) {_rows_str(bad)}")
    bad_labels = [i for i, r in enumerate(rows, 1) if "label" in r and _label(r["label"]) is None]
    if bad_labels:
        values = sorted({_shown(rows[i - 1]["label"]) for i in bad_labels})[:5]
        rep.errors.append(f"{name}: labels must be binary (0/1, 1 = harmful); row(s) {_rows_str(bad_labels)} "
                          f"have {', '.join(values)}")
    texts = [(i, r.get("text")) for i, r in enumerate(rows, 1) if "text" in r]
    not_str = [i for i, t in texts if not isinstance(t, str)]
    if not_str:
        rep.errors.append(f"{name}: text must be a string; row(s) {_rows_str(not_str)} have "
                          f"{', '.join(sorted({_json_type(rows[i - 1]['text']) for i in not_str}))}"
                          " (quote numbers in JSONL)")
    empty = [i for i, t in texts if isinstance(t, str) and not t.strip()]
    if empty:
        rep.errors.append(f"{name}: empty or whitespace-only text in row(s) {_rows_str(empty)}")
    nul = [i for i, t in texts if isinstance(t, str) and "\x00" in t]
    if nul:
        rep.errors.append(f"{name}: text holds a NUL character (\\u0000) in row(s) {_rows_str(nul)}; remove it")


def _shown(v) -> str:
    """A cell as the user wrote it: 'yes' from a CSV, null or 2.5 from JSONL."""
    return repr(v) if isinstance(v, str) else json.dumps(v)


def _json_type(v) -> str:
    return {type(None): "null", bool: "true/false", int: "a number", float: "a number", list: "an array",
            dict: "an object"}.get(type(v), type(v).__name__)


def usable_for(rep: ValidationReport) -> str:
    """What a valid dataset can be used for, from the splits it has."""
    splits = rep.splits
    if "train" not in splits:
        return (f"scoring only (`probe eval --data`, splits {', '.join(splits)}); to fit probes, give rows "
                "split train and val")
    uses = ["`probe train` (fit on train" + (", tune on val)" if "val" in splits else
                                             "; no val split, so pass --val-split '' to fit untuned)")]
    if {"val", "ood"} <= set(splits):
        uses.append("`experiment` (train, val, ood)")
    return ", ".join(uses) + f", and scoring any of {', '.join(splits)}"


def _duplicates(rows: list[dict], name: str, rep: ValidationReport) -> None:
    """Texts equal up to case and whitespace: across splits a leak (the test would score rows the
    probe was fitted on), with two labels a contradiction, within a split a warning."""
    seen: dict[str, int] = {}
    leaks, conflicts, dups = [], [], []
    for i, r in enumerate(rows, 1):
        key = " ".join(r["text"].casefold().split())
        if key not in seen:
            seen[key] = i
            continue
        j = seen[key]
        if _label(rows[j - 1]["label"]) != _label(r["label"]):
            conflicts.append((j, i))
        elif _split(rows[j - 1]) != _split(r):
            leaks.append((j, i))
        else:
            dups.append((j, i))

    def pairs(found: list[tuple[int, int]]) -> str:
        shown = ", ".join(f"row {a} ({_split(rows[a - 1])}) and row {b} ({_split(rows[b - 1])})" for a, b in found[:10])
        return shown + (f", ... ({len(found)} pairs in all)" if len(found) > 10 else "")

    if conflicts:
        rep.errors.append(f"{name}: the same text (ignoring case and spacing) has different labels: {pairs(conflicts)}")
    if leaks:
        rep.errors.append(f"{name}: the same text (ignoring case and spacing) is in two splits, so a probe would be "
                          f"tested on what it was fitted on: {pairs(leaks)}; keep one copy")
    if dups:
        rep.warnings.append(f"{name}: {len(dups)} duplicated row(s) in one split (same text up to case and spacing, "
                            f"same label): {pairs(dups)}")


def _split(row: dict) -> str:
    return str(row.get("split") or "").strip() or DEFAULT_SPLIT


def _clusters_across_splits(rows: list[dict]) -> list[str]:
    splits_of: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        c = _cluster(r.get("cluster"))
        if c:
            splits_of[c].add(_split(r))
    return sorted(c for c, s in splits_of.items() if len(s) > 1)


def load_user_dataset(path: str | Path) -> Dataset:
    """A validated user dataset; raises `DatasetError` on errors, warns (`DatasetWarning`) otherwise."""
    path = Path(path)
    rows = read_rows(path)
    rep = validate_rows(rows, path.name)
    if rep.errors:  # one line: the first problem, and where to see the rest
        more = len(rep.errors) - 1
        raise DatasetError(rep.errors[0] + (f" (and {more} more problem(s): run `assay data validate {path}`)"
                                            if more else ""))
    for w in rep.warnings:
        warnings.warn(w, DatasetWarning, stacklevel=2)
    examples = [
        Example(text=r["text"], label=_label(r["label"]), split=_split(r),
                source="user", family="none", transformation="none", behaviour_id=f"user:{i}",
                group=str(r.get("group") or "none"), cluster=_cluster(r.get("cluster")))
        for i, r in enumerate(rows, 1)
    ]
    return Dataset(examples, path, {"name": path.stem, "validation": {"rows": rep.rows, "warnings": rep.warnings}})
