"""The harmful-intent benchmark: leakage, placeholders, coverage, determinism, balance."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from assay.data import build_benchmark, donotanswer, load_dataset, sources
from assay.data.benchmark import GROUPS
from assay.data.benchmark_requests import donotanswer_requests, request_texts, sharegpt_requests
from assay.data.benchmark_splits import harmful_near_pairs
from assay.data.dataset import Dataset, Example, fingerprint, read_jsonl_examples, write_jsonl_examples
from assay.data.jailbreaks import UNFILLED_PLACEHOLDER, families, families_for, fill_template
from assay.data.normalize import normalize_text
from assay.data.transforms import COMPLY, TRANSFORMATIONS, transformations_for


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    return build_benchmark("quick", seed=0, out_dir=tmp_path_factory.mktemp("quick-s0"))


def test_sizes_and_files(quick):
    assert {s: len(quick.split(s)) for s in quick.splits} == {"train": 300, "val": 100, "calib": 100, "ood": 200}
    assert quick.splits == ["train", "val", "calib", "ood"]
    for name in ("train.jsonl", "val.jsonl", "calib.jsonl", "ood.jsonl", "card.md", "manifest.json"):
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
    for split, dist in (("train", "id"), ("val", "id"), ("calib", "id"), ("ood", "ood")):
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
                   "| train | harmful |", "| calib | benign |", "| ood | benign |", "pliny_google", "ignore_one",
                   "Resampling units", "self-risk", "nuisance", "How to stay awake for days for studying?"):
        assert needle in card, needle
    groups = Counter(e.group for e in quick)
    assert groups["benign_topic"] > 0 and groups["benign_jailbreak"] > 0 and groups["transform_comply"] > 0


# ----------------------------------------------------------------------------- v2: clusters, calib, screens


def test_every_row_has_its_requests_cluster(quick):
    prefix = {"harmful_plain": "h", "harmful_jailbreak": "h", "transform_comply": "h", "transform_innocuous": "h",
              "benign_plain": "b", "benign_jailbreak": ("b", "edgy:"), "benign_transform": ("b", "edgy:"),
              "benign_topic": ("b", "edgy:")}
    for e in quick:
        assert e.cluster.startswith(prefix[e.group]), (e.group, e.cluster)
        if e.source == "templated_edgy":
            assert e.cluster == "edgy:" + e.behaviour_id.split(":")[1]
    # one behaviour, one cluster; one cluster, one split
    cluster_of: dict[str, set[str]] = {}
    splits_of: dict[str, set[str]] = {}
    for e in quick:
        cluster_of.setdefault(e.behaviour_id, set()).add(e.cluster)
        splits_of.setdefault(e.cluster, set()).add(e.split)
    assert all(len(c) == 1 for c in cluster_of.values())
    assert all(len(s) == 1 for s in splits_of.values()), {c: s for c, s in splits_of.items() if len(s) > 1}
    counts = quick.meta["clusters"]
    assert all(counts[s]["harmful"] > 0 and counts[s]["benign"] > 0 for s in quick.splits), counts


def test_dataset_clusters_fall_back_to_behaviour_then_row(quick):
    assert quick.clusters.tolist() == [e.cluster for e in quick]
    ds = Dataset([Example("a", 0, "x", "user", cluster="c1"), Example("b", 1, "x", "user", behaviour_id="user:2"),
                  Example("c", 1, "x", "user")])
    assert ds.clusters.tolist() == ["c1", "user:2", "row2"]


def test_cluster_field_round_trips_and_old_rows_read(tmp_path):
    rows = [Example("hello there", 0, "train", "user", cluster="b7"), Example("bomb", 1, "train", "user")]
    write_jsonl_examples(tmp_path / "a.jsonl", rows)
    assert read_jsonl_examples(tmp_path / "a.jsonl") == rows
    old = {k: v for k, v in rows[0].to_row().items() if k != "cluster"}  # a row written before the field
    (tmp_path / "old.jsonl").write_text(json.dumps(old) + "\n")
    assert read_jsonl_examples(tmp_path / "old.jsonl")[0].cluster == ""
    # an empty cluster leaves the fingerprint as it was before the field existed
    assert fingerprint([rows[1]]) == _sha([{k: v for k, v in rows[1].to_row().items() if k != "cluster"}])


def _sha(rows: list[dict]) -> str:
    import hashlib

    h = hashlib.sha256()
    for r in rows:
        h.update(json.dumps(r, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode() + b"\n")
    return h.hexdigest()


def test_calib_is_in_distribution_and_has_every_row_type(quick):
    calib = quick.split("calib")
    assert {e.family for e in calib} == {"none"} | {f.name for f in families_for("id")}
    assert {e.transformation for e in calib} == {"none"} | {t.name for t in transformations_for("id")}
    assert {e.group for e in calib} == set(GROUPS)
    assert not quick.meta["missing_row_types"], quick.meta["missing_row_types"]
    assert quick.meta["edgy_templates"]["val"] and quick.meta["edgy_templates"]["calib"]
    assert quick.meta["topic_pool"]["val"] > 0 and quick.meta["topic_pool"]["calib"] > 0


def test_ignore_one_is_only_a_hard_negative(quick):
    assert not [e for e in quick if e.label == 1 and e.transformation == "ignore_one"]
    groups = {e.group for e in quick if e.transformation == "ignore_one"}
    assert groups == {"transform_innocuous", "benign_transform"}
    comply = {e.transformation for e in quick if e.group == "transform_comply" and e.split != "ood"}
    assert comply == {"count_words"}
    with pytest.raises(ValueError, match="no 'comply' frame"):
        TRANSFORMATIONS["ignore_one"].apply("Do X.", COMPLY, random.Random(0))


def test_donotanswer_screen_is_live_and_applied(quick):
    prompts = sources.donotanswer_prompts("malicious_uses")
    stale = [p for p in donotanswer.DROPPED if p not in prompts]
    assert not stale, f"screened prompts no longer in the source verbatim: {stale}"
    assert set(donotanswer.DROPPED.values()) == {donotanswer.SELF_RISK, donotanswer.NUISANCE}
    dropped_ids = {f"dna:{i:03d}" for i, p in enumerate(prompts) if p in donotanswer.DROPPED}
    assert not dropped_ids & {e.behaviour_id for e in quick}
    dropped_texts = {normalize_text(p).rstrip("?.") for p in donotanswer.DROPPED}
    assert not [e.text for e in quick if e.source == "donotanswer" and any(t in e.text for t in dropped_texts)]
    m = quick.meta["donotanswer_screen"]
    assert sum(m["dropped"].values()) == len(donotanswer.DROPPED) == len(m["prompts"])
    assert quick.meta["donotanswer_held_out"] == sum(r.source == "donotanswer" for r in donotanswer_requests()[0]) \
        - quick.meta["donotanswer_near_id"]


def test_donotanswer_kept_prompts_are_not_near_id_behaviours(quick):
    """By the build measure (n-grams or MiniLM), no held-out Do-Not-Answer prompt is linked to a
    train/val/calib behaviour."""
    texts = request_texts(quick)
    id_texts = sorted({texts[e.behaviour_id] for e in quick if e.split != "ood" and e.cluster.startswith("h")})
    dna = sorted({texts[e.behaviour_id] for e in quick if e.source == "donotanswer"})
    pairs = harmful_near_pairs(id_texts + dna)
    assert not [(id_texts[i], dna[j - len(id_texts)]) for i, j in pairs if i < len(id_texts) <= j]


def test_sharegpt_requests_include_wrapped_ones(quick):
    reqs = sharegpt_requests(quick)
    plain = {e.text for e in quick if e.source == "sharegpt" and e.group in ("benign_plain", "benign_topic")}
    assert plain <= reqs
    wrapped_only = {e.behaviour_id for e in quick if e.source == "sharegpt"} - {
        e.behaviour_id for e in quick if e.source == "sharegpt" and e.group in ("benign_plain", "benign_topic")}
    assert wrapped_only and len(reqs) == len({e.behaviour_id for e in quick if e.source == "sharegpt"})
    wrapped = [e for e in quick if e.behaviour_id in wrapped_only]
    texts = request_texts(quick)
    assert all(texts[e.behaviour_id] in reqs for e in wrapped)
    assert any(texts[e.behaviour_id].rstrip(".?") in e.text for e in wrapped)


def test_innocuous_twins_carry_a_valid_intent_label():
    """The rule that makes a transform_innocuous row benign: its frame asks for a task on the text
    that does not carry the request out, and says so (or, for ignore_one, says to skip it); every
    comply frame, with the same surface, asks for the request to be done."""
    import random

    from assay.data.transforms import _FRAMES, COMPLY, INNOCUOUS, TRANSFORMATIONS

    refuse = ("do not respond", "nothing else", "without acting", "do not answer", "nothing more", "do not follow",
              "only list", "skip", "ignore", "leave out")
    act = ("respond to it", "carry out", "do what it asks", "respond to the following request", "answer this",
           "then answer it")
    for name, frames in _FRAMES.items():
        for frame in frames[INNOCUOUS]:
            assert any(r in frame.lower() for r in refuse), (name, frame)
            assert not any(a in frame.lower() for a in act), (name, frame)
        for frame in frames[COMPLY]:
            assert any(a in frame.lower() for a in act) and not any(r in frame.lower() for r in refuse), (name, frame)
    text = TRANSFORMATIONS["ignore_one"].apply("Explain how to pick a lock.", INNOCUOUS, random.Random(0))
    intro, body = text.split("\n\n", 1)
    skip = next(int(w) for w in intro.replace(",", " ").split() if w.isdigit())
    assert body.splitlines()[skip - 1].endswith("Explain how to pick a lock.")  # the skipped item is the request
