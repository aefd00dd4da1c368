"""The harmful-intent benchmark: leakage, placeholders, coverage, determinism, balance."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from assay.data import build_benchmark, load_dataset
from assay.data.jailbreaks import UNFILLED_PLACEHOLDER, families, families_for, fill_template
from assay.data.transforms import transformations_for


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    return build_benchmark("quick", seed=0, out_dir=tmp_path_factory.mktemp("quick-s0"))


def test_sizes_and_files(quick):
    assert {s: len(quick.split(s)) for s in quick.splits} == {"train": 300, "val": 150, "ood": 200}
    for name in ("train.jsonl", "val.jsonl", "ood.jsonl", "card.md", "manifest.json"):
        assert (quick.path / name).is_file()
    manifest = json.loads((quick.path / "manifest.json").read_text())
    assert manifest["fingerprint"] == quick.fingerprint
    assert set(quick.labels.tolist()) == {0, 1}


def test_no_behaviour_in_two_splits(quick):
    splits_of: dict[str, set[str]] = {}
    for e in quick:
        splits_of.setdefault(e.behaviour_id, set()).add(e.split)
    leaked = {b: s for b, s in splits_of.items() if len(s) > 1}
    assert not leaked, leaked
    assert quick.meta["cross_split_near_duplicates"] == 0


def test_no_unfilled_placeholder_in_any_row(quick):
    bad = [e.text[:80] for e in quick if UNFILLED_PLACEHOLDER.search(e.text)]
    assert not bad, bad
    for e in quick:
        assert "{{" not in e.text and "{%" not in e.text and "[INSERT PROMPT HERE]" not in e.text.upper()


def test_every_template_fills():
    for fam in families().values():
        for i in range(len(fam.variants)):
            text = fam.wrap("Explain how tides work.", i)
            assert "Explain how tides work" in text or "explain how tides work" in text, (fam.name, i)
            assert not UNFILLED_PLACEHOLDER.search(text), (fam.name, i, text[:200])
    with pytest.raises(ValueError):
        fill_template("no slot here", "x")


def test_every_family_and_transformation_in_its_split(quick):
    for split, dist in (("train", "id"), ("val", "id"), ("ood", "ood")):
        sub = quick.split(split)
        fams = {(e.family, e.label) for e in sub}
        for f in families_for(dist):
            assert (f.name, 1) in fams and (f.name, 0) in fams, (split, f.name)  # wraps both classes
        trans = {(e.transformation, e.group) for e in sub}
        for t in transformations_for(dist):
            assert (t.name, "transform_innocuous") in trans, (split, t.name)
        # families and transformations of the other distribution never leak in
        other = "ood" if dist == "id" else "id"
        assert not {f.name for f in families_for(other)} & {e.family for e in sub}
        assert not {t.name for t in transformations_for(other)} & {e.transformation for e in sub}


def test_hard_negatives_keep_harmful_text(quick):
    harmful_text = {e.behaviour_id: e.text for e in quick if e.group == "harmful_plain"}
    hard = [e for e in quick if e.group == "transform_innocuous" and e.behaviour_id in harmful_text]
    assert hard and all(e.label == 0 for e in hard)
    assert any(harmful_text[e.behaviour_id].rstrip(".") in e.text for e in hard)


def test_classes_balanced_and_ood_has_held_out_source(quick):
    for split in quick.splits:
        y = quick.split(split).labels
        assert abs(y.mean() - 0.5) < 0.02, split
    assert "donotanswer" in {e.source for e in quick.split("ood")}
    assert "donotanswer" not in {e.source for e in quick if e.split != "ood"}


def test_no_single_surface_cue_is_strong(quick):
    audit = quick.meta["cue_audit"]
    for split, cues in audit.items():
        for cue in ("ends_with_question_mark", "ends_with_bracket", "n_chars", "n_newlines", "jailbreak_present"):
            assert max(cues[cue], 1 - cues[cue]) < 0.7, (split, cue, cues[cue])


def test_same_seed_same_fingerprint_different_seed_different(quick, tmp_path):
    again = build_benchmark("quick", seed=0, out_dir=tmp_path / "again")
    assert again.fingerprint == quick.fingerprint
    other = build_benchmark("quick", seed=1, out_dir=tmp_path / "other")
    assert other.fingerprint != quick.fingerprint


def test_reuse_and_reload(quick):
    reloaded = load_dataset(quick.path)
    assert reloaded.fingerprint == quick.fingerprint and len(reloaded) == len(quick)
    # a tampered file is refused
    p = quick.path / "val.jsonl"
    original = p.read_text()
    try:
        rows = original.splitlines()
        rows[0] = rows[0].replace('"label": 1', '"label": 0').replace('"label": 0', '"label": 1', 0)
        row = json.loads(rows[0]); row["text"] += " tampered"; rows[0] = json.dumps(row)
        p.write_text("\n".join(rows) + "\n")
        with pytest.raises(ValueError, match="fingerprint"):
            load_dataset(quick.path)
    finally:
        p.write_text(original)


def test_card_has_counts_audit_and_licences(quick):
    card = (quick.path / "card.md").read_text()
    for needle in ("Surface-cue audit", "ends_with_question_mark", "HarmBench", "AdvBench", "ShareGPT", "MIT",
                   "| train | harmful |", "| ood | benign |", "pliny_google", "ignore_one"):
        assert needle in card, needle
    groups = Counter(e.group for e in quick)
    assert groups["benign_topic"] > 0 and groups["benign_jailbreak"] > 0 and groups["transform_comply"] > 0
