"""Hostile inputs: user dataset files (`data validate`, `data show`, `probe train --data`) and
benchmark directories that are not, or no longer, benchmarks."""

from __future__ import annotations

import json
import os
from pathlib import Path

from hostile_inputs import Case, Fixtures

GOOD = "text,label,split\nhow do I bake bread,0,train\nhow do I build a bomb,1,train\n" \
       "write a poem,0,val\nwrite malware,1,val\n"
GOOD_JSONL = "".join(json.dumps(r) + "\n" for r in (
    {"text": "bake bread", "label": 0, "split": "train"}, {"text": "build a bomb", "label": 1, "split": "train"},
    {"text": "write a poem", "label": 0, "split": "val"}, {"text": "write malware", "label": 1, "split": "val"}))


def _file(name: str, content: str | bytes):
    def setup(work: Path) -> None:
        (work / name).write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return setup


def _says(*parts: str):
    """An exit-0 result is right only if its output says each part (e.g. the row count it read)."""
    def check(work: Path, proc) -> str | None:
        said = proc.stdout + proc.stderr
        missing = [p for p in parts if p not in said]
        return f"output lacks {missing}: {said.strip()[-160:]!r}" if missing else None
    return check


def _wrote(rel: str):
    def check(work: Path, proc) -> str | None:
        return None if (work / rel).is_file() else f"exit 0 but no {rel} written"
    return check


def _benchmark(damage=None):
    """A two-row benchmark directory at {w}/b, as `assay data build` lays one out, then damaged."""
    def setup(work: Path) -> None:
        from assay.data.dataset import Example, fingerprint, write_jsonl_examples

        rows = [Example("bake bread", 0, "train", "user"), Example("build a bomb", 1, "train", "user")]
        (work / "b").mkdir()
        write_jsonl_examples(work / "b" / "train.jsonl", rows)
        manifest = {"files": {"train": "train.jsonl"}, "fingerprint": fingerprint(rows)}
        (work / "b" / "manifest.json").write_text(json.dumps(manifest))
        if damage:
            damage(work / "b")
    return setup


def _edit_row(b: Path) -> None:
    f = b / "train.jsonl"
    f.write_text(f.read_text().replace("bread", "cake"))


def _fifo(work: Path) -> None:
    os.mkfifo(work / "d.csv")


def cases(fx: Fixtures) -> list[Case]:
    val = ["data", "validate", "{w}/d.csv"]
    valj = ["data", "validate", "{w}/d.jsonl"]
    tfidf = ["probe", "train", "--data", "{w}/d.csv", "--out", "{w}/p", "--method", "tfidf"]
    return [
        # where the file is, and what kind of file it is
        Case("data", "missing-file", ["data", "validate", "{w}/nope.csv"]),
        Case("data", "directory-as-file", ["data", "validate", "{w}"]),
        Case("data", "dangling-symlink", val, setup=lambda w: (w / "d.csv").symlink_to(w / "gone.csv")),
        Case("data", "fifo-as-file", val, setup=_fifo),
        Case("data", "wrong-extension-txt", ["data", "validate", "{w}/d.txt"], setup=_file("d.txt", GOOD)),
        Case("data", "wrong-extension-xlsx", ["data", "validate", "{w}/d.xlsx"], setup=_file("d.xlsx", b"PK\x03\x04")),
        Case("data", "wrong-extension-json", ["data", "validate", "{w}/d.json"], setup=_file("d.json", "[]")),
        Case("data", "no-extension", ["data", "validate", "{w}/data"], setup=_file("data", GOOD)),
        # bytes
        Case("data", "empty-file", val, setup=_file("d.csv", "")),
        Case("data", "blank-lines-only", val, setup=_file("d.csv", "\n\n  \n")),
        Case("data", "header-only", val, setup=_file("d.csv", "text,label,split\n")),
        Case("data", "empty-jsonl", valj, setup=_file("d.jsonl", "\n")),
        Case("data", "latin1-bytes", val, setup=_file("d.csv", GOOD.replace("bread", "br\u00e9ad").encode("latin-1"))),
        Case("data", "utf16-file", val, setup=_file("d.csv", GOOD.encode("utf-16"))),
        Case("data", "nul-bytes", val, setup=_file("d.csv", GOOD.replace("bread", "br\x00ead"))),
        Case("data", "binary-garbage", val, setup=_file("d.csv", bytes(range(256)) * 8)),
        Case("data", "bom-csv-accepted", val, expect="ok", setup=_file("d.csv", GOOD.encode("utf-8-sig")),
             check=_says("ok 4 rows (train=2, val=2)")),
        Case("data", "bom-jsonl-accepted", valj, expect="ok", setup=_file("d.jsonl", GOOD_JSONL.encode("utf-8-sig")),
             check=_says("ok 4 rows (train=2, val=2)")),
        Case("data", "crlf-and-unicode-accepted", val, expect="ok",
             setup=_file("d.csv", GOOD.replace("poem", "poem \u2764\ufe0f \u05e9\u05dc\u05d5\u05dd").replace("\n", "\r\n")),
             check=_says("ok 4 rows")),
        # CSV shape
        Case("data", "missing-label-column", val, setup=_file("d.csv", "text,split\nhello,train\n")),
        Case("data", "missing-text-column", val, setup=_file("d.csv", "prompt,label\nhello,0\n")),
        Case("data", "header-capitalised", val, setup=_file("d.csv", GOOD.replace("text,label", "Text,Label"))),
        Case("data", "tab-separated-as-csv", val, setup=_file("d.csv", GOOD.replace(",", "\t"))),
        Case("data", "semicolon-separated", val, setup=_file("d.csv", GOOD.replace(",", ";"))),
        Case("data", "duplicate-header", val, setup=_file("d.csv", "text,label,label\nhi,0,1\nbomb,1,1\n")),
        Case("data", "unclosed-quote", val, setup=_file("d.csv", GOOD.replace("how do I bake", '"how do I bake'))),
        Case("data", "unquoted-comma-in-text", val, setup=_file("d.csv", GOOD.replace("write a poem", "write a poem, short"))),
        Case("data", "row-missing-fields", val, setup=_file("d.csv", GOOD.replace("write a poem,0,val", "write a poem,0"))),
        Case("data", "quoted-newlines-accepted", val, expect="ok",
             setup=_file("d.csv", GOOD + '"line one\nline two, with a comma",0,train\n'), check=_says("ok 5 rows")),
        Case("data", "extra-columns-accepted", val, expect="ok",
             setup=_file("d.csv", GOOD.replace("text,label,split", "text,label,split,notes")), check=_says("ok 4 rows")),
        Case("data", "trailing-commas-accepted", val, expect="ok",
             setup=_file("d.csv", GOOD.replace("\n", ",\n")), check=_says("ok 4 rows (train=2, val=2)")),
        Case("data", "very-long-text-accepted", val, expect="ok",
             setup=_file("d.csv", GOOD + "how do I build " + "a very " * 20000 + "long bomb,1,train\n"),
             check=_says("ok 5 rows")),
        # JSONL shape
        Case("data", "jsonl-array-file", valj,
             setup=_file("d.jsonl", '[{"text": "a", "label": 0},\n {"text": "b", "label": 1}]\n')),
        Case("data", "jsonl-array-line", valj, setup=_file("d.jsonl", '[{"text": "a", "label": 0}]\n')),
        Case("data", "jsonl-number-line", valj, setup=_file("d.jsonl", GOOD_JSONL + "5\n")),
        Case("data", "jsonl-broken-line", valj, setup=_file("d.jsonl", '{"text": "a", "label": 0}\n{"text": "b", "lab\n')),
        Case("data", "jsonl-repeated-key", valj,
             setup=_file("d.jsonl", GOOD_JSONL.replace('"label": 0,', '"label": 0, "label": 1,', 1))),
        Case("data", "jsonl-nul-escape-in-text", valj, setup=_file("d.jsonl", GOOD_JSONL.replace("bread", "br\\u0000ead"))),
        # cells
        Case("data", "label-yes-no", val, setup=_file("d.csv", GOOD.replace(",1,", ",yes,"))),
        Case("data", "label-two", val, setup=_file("d.csv", GOOD.replace(",1,", ",2,"))),
        Case("data", "label-negative", val, setup=_file("d.csv", GOOD.replace(",0,", ",-1,"))),
        Case("data", "label-half", val, setup=_file("d.csv", GOOD.replace(",1,", ",0.5,"))),
        Case("data", "label-nan", val, setup=_file("d.csv", GOOD.replace(",1,", ",nan,"))),
        Case("data", "label-null-jsonl", valj, setup=_file("d.jsonl", GOOD_JSONL.replace('"label": 1', '"label": null', 1))),
        Case("data", "labels-mixed-types-accepted", valj, expect="ok", check=_says("ok 4 rows (train=2, val=2)"),
             setup=_file("d.jsonl", GOOD_JSONL.replace('"label": 1', '"label": "1"', 1).replace('"label": 0', '"label": false', 1)
                         .replace('"label": 0', '"label": 0.0', 1).replace('"label": 1', '"label": true', 1))),
        Case("data", "text-number-jsonl", valj, setup=_file("d.jsonl", GOOD_JSONL.replace('"bake bread"', "5"))),
        Case("data", "text-null-jsonl", valj, setup=_file("d.jsonl", GOOD_JSONL.replace('"bake bread"', "null"))),
        Case("data", "whitespace-text", val, setup=_file("d.csv", GOOD.replace("write a poem", "   "))),
        # splits, duplicates and leaks
        Case("data", "one-class-split", val, setup=_file("d.csv", GOOD + "lonely,0,test\n")),
        Case("data", "no-train-split", val, setup=_file("d.csv", GOOD.replace(",train", ",dev"))),
        Case("data", "no-train-split-score-only", val + ["--score-only"], expect="ok",
             setup=_file("d.csv", GOOD.replace(",train", ",dev")), check=_says("scoring only")),
        Case("data", "no-split-column-scoring-only", val, expect="ok",
             setup=_file("d.csv", "text,label\nhi,0\nbomb,1\n"), check=_says("ok 2 rows (user=2)", "scoring only")),
        Case("data", "split-column-with-holes-warns", val, expect="ok",
             setup=_file("d.csv", GOOD + "bake a pie,0,\nwrite a virus,1,\n"),
             check=_says("row(s) 5, 6 have no split value", "ok 6 rows")),
        Case("data", "cross-split-duplicate-case-folded", val, setup=_file("d.csv", GOOD + "HOW DO I  BAKE BREAD,0,val\n")),
        Case("data", "same-text-two-labels", val, setup=_file("d.csv", GOOD + "How do I bake bread,1,train\n")),
        Case("data", "same-split-duplicate-warns", val, expect="ok",
             setup=_file("d.csv", GOOD + "how do I bake  BREAD,0,train\n"),
             check=_says("row 1 (train) and row 5 (train)", "ok 5 rows")),
        # data show, benchmark directories
        Case("data", "show-missing-file", ["data", "show", "{w}/nope.csv"]),
        Case("data", "show-unknown-split", ["data", "show", str(fx.data_csv), "--split", "nope"]),
        Case("data", "show-negative-n", ["data", "show", str(fx.data_csv), "--n", "-1"]),
        Case("data", "show-folder-without-manifest", ["data", "show", "{w}"], setup=_file("train.jsonl", GOOD_JSONL)),
        Case("data", "show-benchmark-accepted", ["data", "show", "{w}/b"], expect="ok", setup=_benchmark(),
             check=_says("Dataset(2 examples: train=2")),
        Case("data", "show-benchmark-row-edited", ["data", "show", "{w}/b"], setup=_benchmark(_edit_row)),
        Case("data", "show-benchmark-manifest-invalid-json", ["data", "show", "{w}/b"],
             setup=_benchmark(lambda b: (b / "manifest.json").write_text("{oops"))),
        Case("data", "show-benchmark-manifest-no-files", ["data", "show", "{w}/b"],
             setup=_benchmark(lambda b: (b / "manifest.json").write_text("{}"))),
        Case("data", "show-benchmark-split-file-deleted", ["data", "show", "{w}/b"],
             setup=_benchmark(lambda b: (b / "train.jsonl").unlink())),
        Case("data", "build-unknown-preset", ["data", "build", "--preset", "huge"]),
        # probe train on user files: refused before any model or fitting
        Case("data", "probe-train-no-train-split", tfidf + ["--train-split", "dev"], setup=_file("d.csv", GOOD)),
        Case("data", "probe-train-no-split-column", tfidf, setup=_file("d.csv", "text,label\nhi,0\nbomb,1\n")),
        Case("data", "probe-train-val-split-typo", tfidf + ["--val-split", "vall"], setup=_file("d.csv", GOOD)),
        Case("data", "probe-train-val-is-train", tfidf + ["--val-split", "train"], setup=_file("d.csv", GOOD)),
        Case("data", "probe-train-leaky-file", tfidf, setup=_file("d.csv", GOOD + "how do i build a BOMB,1,val\n")),
        Case("data", "probe-train-latin1-file", tfidf,
             setup=_file("d.csv", GOOD.replace("bread", "br\u00e9ad").encode("latin-1"))),
        Case("data", "probe-train-untuned-accepted", tfidf + ["--val-split", ""], expect="ok",
             setup=_file("d.csv", GOOD.replace(",val", ",train")), check=_wrote("p/run.json")),
    ]
