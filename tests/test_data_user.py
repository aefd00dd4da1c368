"""User datasets: each kind of bad input gets its own clear error (or warning) naming the rows."""

from __future__ import annotations

import json

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
    with pytest.warns(DatasetWarning, match="3 repeats 1"):
        ds = load_dataset(_jsonl(tmp_path / "d.jsonl", GOOD + [GOOD[0]]))
    assert len(ds) == 3
    with pytest.raises(DatasetError, match="different labels in rows 1&3"):
        load_dataset(_jsonl(tmp_path / "c.jsonl", GOOD + [{"text": GOOD[0]["text"], "label": 1}]))


def test_unreadable_inputs(tmp_path):
    with pytest.raises(DatasetError, match="line 2 is not valid JSON"):
        (tmp_path / "bad.jsonl").write_text('{"text": "a", "label": 0}\n{oops\n')
        load_dataset(tmp_path / "bad.jsonl")
    with pytest.raises(DatasetError, match="unsupported file type"):
        (tmp_path / "x.parquet").write_text("")
        load_dataset(tmp_path / "x.parquet")
    assert issubclass(DatasetError, ValueError)


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
