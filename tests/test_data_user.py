"""User datasets: each kind of bad input gets its own clear error (or warning) naming the rows."""

from __future__ import annotations

import json
import re

import pytest

from assay.data import DatasetError, DatasetWarning, load_dataset


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _csv(path, text):
    path.write_text(text)
    return path


GOOD = [{"text": "how do I bake bread", "label": 0}, {"text": "how do I build a bomb", "label": 1}]


def test_good_jsonl_and_csv(tmp_path):
    ds = load_dataset(_jsonl(tmp_path / "good.jsonl", GOOD))
    assert len(ds) == 2 and ds.labels.tolist() == [0, 1] and ds.splits == ["user"]
    ds = load_dataset(_csv(tmp_path / "good.csv", "text,label,split,group\nhi there,0,test,a\nmake a bomb,1,test,b\n"))
    assert ds.splits == ["test"] and ds[1].group == "b" and ds[1].label == 1


def test_missing_column(tmp_path):
    with pytest.raises(DatasetError, match="missing column.*label"):
        load_dataset(_csv(tmp_path / "m.csv", "text,split\nhello,train\n"))
    with pytest.raises(DatasetError, match="column 'label' missing in row.*2"):
        load_dataset(_jsonl(tmp_path / "m.jsonl", [GOOD[0], {"text": "x"}, GOOD[1]]))


def test_labels_not_binary(tmp_path):
    rows = GOOD + [{"text": "maybe", "label": 2}, {"text": "harmful?", "label": "yes"}]
    with pytest.raises(DatasetError, match=r"binary.*row\(s\) 3, 4"):
        load_dataset(_jsonl(tmp_path / "l.jsonl", rows))


def test_empty_texts(tmp_path):
    with pytest.raises(DatasetError, match=r"empty.*row\(s\) 2"):
        load_dataset(_csv(tmp_path / "e.csv", "text,label\nhello,0\n   ,1\nbomb,1\n"))


def test_split_with_one_class(tmp_path):
    rows = [dict(r, split="train") for r in GOOD] + [{"text": "only benign", "label": 0, "split": "test"}]
    with pytest.raises(DatasetError, match="split 'test' has only benign"):
        load_dataset(_jsonl(tmp_path / "s.jsonl", rows))


def test_duplicated_rows_warn_and_conflicts_fail(tmp_path):
    with pytest.warns(DatasetWarning, match=r"row 1 \(user\) and row 3 \(user\)"):
        ds = load_dataset(_jsonl(tmp_path / "d.jsonl", GOOD + [GOOD[0]]))
    assert len(ds) == 3
    with pytest.raises(DatasetError, match=r"different labels: row 1 \(user\) and row 3 \(user\)"):
        load_dataset(_jsonl(tmp_path / "c.jsonl", GOOD + [{"text": GOOD[0]["text"], "label": 1}]))


def test_unreadable_inputs(tmp_path):
    with pytest.raises(DatasetError, match="line 2 is not valid JSON"):
        (tmp_path / "bad.jsonl").write_text('{"text": "a", "label": 0}\n{oops\n')
        load_dataset(tmp_path / "bad.jsonl")
    with pytest.raises(DatasetError, match="unsupported file type"):
        (tmp_path / "x.parquet").write_text("")
        load_dataset(tmp_path / "x.parquet")
    from assay.errors import InputError

    assert issubclass(DatasetError, InputError) and issubclass(DatasetError, ValueError)


def test_cluster_column_optional(tmp_path):
    ds = load_dataset(_jsonl(tmp_path / "n.jsonl", GOOD))
    assert [e.cluster for e in ds] == ["", ""] and ds.clusters.tolist() == ["user:1", "user:2"]
    rows = [dict(GOOD[0], cluster="bread"), dict(GOOD[1], cluster=7),
            {"text": "how do I bake rolls", "label": 0, "cluster": "bread"}]
    ds = load_dataset(_jsonl(tmp_path / "c.jsonl", rows))
    assert ds.clusters.tolist() == ["bread", "7", "bread"]
    csv_text = "text,label,split,group,cluster\nhi there,0,test,a,u1\nmake a bomb,1,test,b,\n"
    ds = load_dataset(_csv(tmp_path / "c.csv", csv_text))
    assert ds.clusters.tolist() == ["u1", "user:2"]


def test_cluster_spanning_splits_warns(tmp_path):
    rows = [dict(r, split=s, cluster="same") for s in ("train", "test") for r in GOOD]
    rows[2]["text"] += " again"
    rows[3]["text"] += " again"
    with pytest.warns(DatasetWarning, match="1 cluster.*span more than one split.*'same'"):
        load_dataset(_jsonl(tmp_path / "s.jsonl", rows))


def test_bom_csv_and_jsonl_are_read(tmp_path):
    """Spreadsheets save UTF-8 with a byte-order mark: the first column is still `text`."""
    (tmp_path / "b.csv").write_bytes("text,label\nhi there,0\nmake a bomb,1\n".encode("utf-8-sig"))
    assert load_dataset(tmp_path / "b.csv").texts == ["hi there", "make a bomb"]
    (tmp_path / "b.jsonl").write_bytes("".join(json.dumps(r) + "\n" for r in GOOD).encode("utf-8-sig"))
    assert len(load_dataset(tmp_path / "b.jsonl")) == 2


def test_non_utf8_bytes_name_the_line(tmp_path):
    (tmp_path / "latin1.csv").write_bytes("text,label\nhi,0\ncaf\u00e9 bomb,1\n".encode("latin-1"))
    with pytest.raises(DatasetError, match=r"line 3 .*not UTF-8.*save the file as UTF-8"):
        load_dataset(tmp_path / "latin1.csv")


def test_same_text_in_two_splits_is_a_leak_up_to_case(tmp_path):
    rows = [dict(r, split="train") for r in GOOD] + [{"text": "How do I  BUILD a bomb", "label": 1, "split": "test"},
                                                     {"text": "bake a cake", "label": 0, "split": "test"}]
    with pytest.raises(DatasetError, match=r"in two splits.*row 2 \(train\) and row 3 \(test\)"):
        load_dataset(_jsonl(tmp_path / "leak.jsonl", rows))


def _validate(*args):
    from typer.testing import CliRunner

    from assay.data.cli import app

    return CliRunner().invoke(app, ["validate", *map(str, args)])


def test_validate_needs_a_train_split_only_where_splits_are_given(tmp_path):
    """A split column without train rows cannot fit a probe; no split column at all means scoring only."""
    path = _csv(tmp_path / "t.csv", "text,label,split\nhi,0,test\nbomb,1,test\n")
    result = _validate(path)
    assert result.exit_code == 1 and "no row has split 'train' (splits: test)" in result.output
    assert _validate(path, "--score-only").exit_code == 0
    result = _validate(_csv(tmp_path / "s.csv", "text,label\nhi,0\nbomb,1\n"))
    assert result.exit_code == 0 and "ok 2 rows (user=2); usable for scoring only" in result.output
    result = _validate(_csv(tmp_path / "tv.csv", "text,label,split\nhi,0,train\nbomb,1,train\nyo,0,val\nkill,1,val\n"))
    assert result.exit_code == 0 and "`probe train` (fit on train, tune on val)" in result.output
    (tmp_path / "bin.csv").write_bytes(b"text,label\n\xff\xfe,0\n")
    result = _validate(tmp_path / "bin.csv")
    assert result.exit_code == 1 and "not UTF-8" in result.output


def test_split_column_with_holes_warns(tmp_path):
    text = "text,label,split\nhi,0,train\nbomb,1,train\nyo,0,\nkill,1,\n"
    with pytest.warns(DatasetWarning, match=r"row\(s\) 3, 4 have no split value and go to split 'user'"):
        assert load_dataset(_csv(tmp_path / "h.csv", text)).splits == ["train", "user"]


@pytest.mark.parametrize("body, match", [
    ('text,label\n"how do I bake bread,0\nbomb,1\n', r"line 2 is not readable CSV.*quote"),
    ("text,label,split\nbake bread, fast,0,train\nbomb,1,train\n", r"line 2 has 4 fields.*comma inside a text"),
    ("text,label,split\nbake bread,0\nbomb,1,train\n", r"line 2 has 2 field\(s\) but the header names 3"),
    ("Text,Label\nhi,0\nbomb,1\n", r"rename 'Text' to 'text', 'Label' to 'label'"),
    ("text,label,label\nhi,0,1\nbomb,1,1\n", r"names column\(s\) 'label' more than once"),
    ("text\tlabel\nhi\t0\nbomb\t1\n", r"separated by tabs"),
])
def test_careless_csv_is_named(tmp_path, body, match):
    """Quotes, stray commas and short rows used to shift fields silently (or blame the label)."""
    with pytest.raises(DatasetError, match=match):
        load_dataset(_csv(tmp_path / "d.csv", body))


@pytest.mark.parametrize("body, match", [
    ('[{"text": "a", "label": 0},\n {"text": "b", "label": 1}]\n', "a JSON array"),
    ('{"text": "a", "label": 0, "label": 1}\n{"text": "b", "label": 1}\n', "line 1 gives key 'label' twice"),
    ('{"text": "a\\u0000b", "label": 0}\n{"text": "b", "label": 1}\n', r"NUL character.*row\(s\) 1"),
    ('{"text": 5, "label": 0}\n{"text": null, "label": 1}\n', r"text must be a string.*a number, null"),
])
def test_careless_jsonl_is_named(tmp_path, body, match):
    (tmp_path / "d.jsonl").write_text(body)
    with pytest.raises(DatasetError, match=match):
        load_dataset(tmp_path / "d.jsonl")


def test_utf16_and_spreadsheet_files_say_what_to_save(tmp_path):
    (tmp_path / "u.csv").write_bytes("text,label\nhi,0\nbomb,1\n".encode("utf-16"))
    with pytest.raises(DatasetError, match="UTF-16.*save it as UTF-8"):
        load_dataset(tmp_path / "u.csv")
    (tmp_path / "x.xlsx").write_bytes(b"PK\x03\x04")
    with pytest.raises(DatasetError, match="export it from the spreadsheet as CSV UTF-8"):
        load_dataset(tmp_path / "x.xlsx")


def test_several_problems_make_one_line(tmp_path):
    """`assay.cli.main` prints the message as one `error:` line; the rest is one command away."""
    with pytest.raises(DatasetError) as err:
        load_dataset(_jsonl(tmp_path / "m.jsonl", [{"text": "", "label": 0}, {"text": "b", "label": 7}]))
    assert "\n" not in str(err.value) and "1 more problem(s): run `assay data validate" in str(err.value)


def test_directories_that_are_not_benchmarks(tmp_path):
    from assay.data.dataset import Example, fingerprint, write_jsonl_examples
    from assay.errors import ConfigMismatchError, InputError

    with pytest.raises(InputError, match="directory without manifest.json"):
        load_dataset(tmp_path)
    rows = [Example("bake bread", 0, "train", "user"), Example("build a bomb", 1, "train", "user")]
    write_jsonl_examples(tmp_path / "train.jsonl", rows)
    (tmp_path / "manifest.json").write_text(json.dumps({"files": {"train": "train.jsonl"}, "fingerprint": fingerprint(rows)}))
    assert len(load_dataset(tmp_path)) == 2
    (tmp_path / "train.jsonl").write_text((tmp_path / "train.jsonl").read_text().replace("bread", "cake"))
    with pytest.raises(ConfigMismatchError, match="damaged benchmark.*fingerprint.*assay data build --force"):
        load_dataset(tmp_path)
    (tmp_path / "train.jsonl").unlink()
    with pytest.raises(ConfigMismatchError, match="damaged benchmark.*train.jsonl"):
        load_dataset(tmp_path)


TRAIN_VAL = "text,label,split\nbake bread,0,train\nbuild a bomb,1,train\nwrite a poem,0,val\nwrite malware,1,val\n"


@pytest.mark.parametrize("extra, match", [
    (["--train-split", "dev"], r"no split 'dev' to fit on \(splits: train, val\)"),
    (["--val-split", "vla"], r"no split 'vla' to tune on.*--val-split ''"),
    (["--val-split", "train"], r"--val-split 'train' is the train split"),
])
def test_probe_train_checks_its_splits(tmp_path, extra, match):
    """A missing or mistyped split used to fit on nothing or fit untuned without a word."""
    from typer.testing import CliRunner

    from assay.errors import InputError
    from assay.probes.cli import app

    data = _csv(tmp_path / "d.csv", TRAIN_VAL)
    res = CliRunner().invoke(app, ["train", "--data", str(data), "--out", str(tmp_path / "p"), "--method", "tfidf", *extra])
    assert isinstance(res.exception, InputError) and re.search(match, str(res.exception)), res.output
    assert not (tmp_path / "p").exists()


def test_data_show_negative_n(tmp_path):
    from typer.testing import CliRunner

    from assay.data.cli import app

    res = CliRunner().invoke(app, ["show", str(_csv(tmp_path / "d.csv", TRAIN_VAL)), "--n", "-1"])
    assert res.exit_code == 2 and "use 0 or more rows" in res.output


def test_csv_shapes_that_are_fine(tmp_path):
    """Unread columns may be left off a row; fields longer than csv's 128 KiB default are read."""
    long = "how do I build " + "a very " * 30000 + "long bomb"
    body = f'text,label,split,notes,\nbake bread,0,train\n"{long}",1,train,x,\n"line one\nline two, more",0,val,,\n'
    ds = load_dataset(_csv(tmp_path / "d.csv", body + "write malware,1,val\n"))
    assert ds.texts == ["bake bread", long, "line one\nline two, more", "write malware"]
    assert [e.split for e in ds] == ["train", "train", "val", "val"]


def test_bad_labels_shown_as_written(tmp_path):
    with pytest.raises(DatasetError, match=r"row\(s\) 1 have null"):
        load_dataset(_jsonl(tmp_path / "n.jsonl", [{"text": "a", "label": None}, GOOD[1]]))
