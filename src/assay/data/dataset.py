"""`Example` and `Dataset`: the rows every other part of assay consumes, and their fingerprint."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

SPLITS = ("train", "val", "calib", "ood")


@dataclass(frozen=True)
class Example:
    text: str
    label: int  # 1 harmful, 0 benign
    split: str  # "train" | "val" | "calib" | "ood" | user-defined
    source: str  # harmbench, advbench, donotanswer, sharegpt, templated_edgy, user
    family: str = "none"  # jailbreak family, "none" if plain
    transformation: str = "none"  # innocuous transformation, "none" if none
    behaviour_id: str = ""  # the underlying request: one behaviour lives in one split
    group: str = "none"  # row type, e.g. harmful_plain, benign_topic, transform_innocuous
    cluster: str = ""  # resampling unit: near-duplicate cluster of the underlying request ("h17", "b503")

    def to_row(self) -> dict:
        return {f: getattr(self, f) for f in FIELDS}  # flat fields: asdict's deep copy is 10x slower

    def canonical_row(self) -> dict:
        """The row the fingerprint hashes: an empty `cluster` is left out, so datasets without
        clusters (older builds, user files) keep the fingerprint they had before the field existed."""
        row = self.to_row()
        if not row["cluster"]:
            del row["cluster"]
        return row


FIELDS = tuple(f.name for f in fields(Example))
_OPTIONAL = frozenset({"cluster"})  # fields rows written before they existed may lack


def fingerprint(examples: Iterable[Example]) -> str:
    """sha256 over the canonical rows (every field, in order): what the activation cache keys on."""
    h = hashlib.sha256()
    for e in examples:
        h.update(json.dumps(e.canonical_row(), sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode())
        h.update(b"\n")
    return h.hexdigest()


class Dataset:
    """An ordered list of examples with a content fingerprint."""

    def __init__(self, examples: list[Example], path: Path | None = None, meta: dict | None = None):
        self.examples = list(examples)
        self.path = Path(path) if path is not None else None
        self.meta = meta or {}
        self.fingerprint = fingerprint(self.examples)

    def __len__(self) -> int:
        return len(self.examples)

    def __iter__(self) -> Iterator[Example]:
        return iter(self.examples)

    def __getitem__(self, i: int) -> Example:
        return self.examples[i]

    def __repr__(self) -> str:
        counts = ", ".join(f"{s}={len(self.split(s))}" for s in self.splits)
        return f"Dataset({len(self)} examples: {counts}; fingerprint {self.fingerprint[:12]})"

    def split(self, name: str) -> "Dataset":
        sub = [e for e in self.examples if e.split == name]
        if not sub and name not in self.splits:
            from assay.errors import InputError

            raise InputError(f"no split {name!r}; splits are {', '.join(self.splits)}")
        return Dataset(sub, self.path, self.meta)

    @property
    def splits(self) -> list[str]:
        seen = dict.fromkeys(e.split for e in self.examples)
        known = [s for s in SPLITS if s in seen]
        return known + [s for s in seen if s not in SPLITS]

    @property
    def texts(self) -> list[str]:
        return [e.text for e in self.examples]

    @property
    def labels(self) -> np.ndarray:
        return np.array([e.label for e in self.examples], dtype=np.int64)

    @property
    def clusters(self) -> np.ndarray:
        """Resampling unit of each example (what a clustered bootstrap draws): its near-duplicate
        cluster, else its behaviour id, else the row itself."""
        return np.array([e.cluster or e.behaviour_id or f"row{i}" for i, e in enumerate(self.examples)], dtype=str)


def read_jsonl_examples(path: Path) -> list[Example]:
    out = []
    with open(path, encoding="utf-8") as f:
        for ln in f:
            if ln.strip():
                row = json.loads(ln)
                out.append(Example(**{k: row[k] for k in FIELDS if k in row or k not in _OPTIONAL}))
    return out


def write_jsonl_examples(path: Path, examples: Iterable[Example]) -> None:
    from assay.fileio import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for e in examples:
            f.write(json.dumps(e.to_row(), ensure_ascii=False) + "\n")


def load_dataset(path: str | Path) -> Dataset:
    """A benchmark directory (with `manifest.json`), or a user JSONL/CSV file (validated)."""
    path = Path(path)
    if path.is_dir():
        return _read_benchmark_dir(path)
    from assay.data.user import load_user_dataset

    return load_user_dataset(path)


def _read_benchmark_dir(path: Path) -> Dataset:
    """A built benchmark; a folder that is not one, or one damaged since, is a one-line error."""
    from assay.data.benchmark import read_benchmark
    from assay.errors import AssayError, ConfigMismatchError, InputError

    if not (path / "manifest.json").is_file():
        raise InputError(f"{path} is a directory without manifest.json; pass a benchmark directory written by "
                         "`assay data build`, or a .jsonl/.csv file")
    try:
        return read_benchmark(path)
    except AssayError:
        raise
    # JSONDecodeError and UnicodeDecodeError are ValueErrors; KeyError/TypeError: rows or manifest lacking fields.
    except (OSError, KeyError, TypeError, ValueError) as err:
        raise ConfigMismatchError(f"{path}: damaged benchmark ({type(err).__name__}: {err}); rebuild it with "
                                  f"`assay data build --force --out {path}` (same --preset and --seed)") from err
