"""The whole study end to end on the bundled model (a smoke-sized run), and its resumability."""

from __future__ import annotations

import json

import pytest

from assay.experiment import run_study
from assay.experiment.context import subsample, with_calibration_split


@pytest.mark.slow
def test_study_end_to_end(smoke_run):
    """Every method at every aggregation, four SAEs x two seeds, CE on `eval_texts` documents (not
    one), clustered intervals calibrated on the calib split, and the code that computed each part."""
    report, out = smoke_run
    files = {p.name for p in out.iterdir()}
    assert {"report.json", "report.md", "report.html", "report.schema.json", "figures", "parts"} <= files
    kinds = {r.kind for r in report.results}
    assert kinds == {"dense", "attention", "baseline", "sae_sparse", "sae_reconstruction", "sae_error"}
    assert {r.split for r in report.results} == {"train", "val", "calib", "ood"}
    saes = {"pretrain", "chat", "pretrain+chat-ft", "pretrain+pretrain-ft"}
    assert {r.sae for r in report.results if r.sae} == saes
    # like for like: every SAE method at every aggregation the dense probe is fitted on
    for method in ("1-sparse", "k-sparse", "reconstruction", "error"):
        assert {r.features for r in report.results if r.method == method} == {"all.max", "resp-5"}, method
    assert {r.k for r in report.results if r.method == "k-sparse"} == {1, 5}
    assert {r.seed for r in report.results if r.sae} == {0, 1}
    primary = [r for r in report.results if r.auroc_ci is not None]
    for r in primary:
        assert r.n_pos == 10 and r.n_neg == 10 if r.split != "calib" else r.n_pos + r.n_neg > 0
        assert 0.0 <= r.auroc <= 1.0 and r.auroc_ci.low <= r.auroc <= r.auroc_ci.high
        assert r.calibrated_on == "calib" and r.computed_by
    assert any(r.seed_auroc_sd is not None for r in report.results if r.method == "k-sparse")
    assert {c.kind for c in report.comparisons} == {"same_aggregation", "family_best"}
    assert len(report.sae_quality) == 8 and all(0 < q.l0 <= 16 for q in report.sae_quality)
    first = [q for q in report.sae_quality if q.seed == 0]
    assert all(q.delta_lm_loss is not None and q.ce_texts == 4 and q.delta_lm_loss_ci is not None for q in first)
    assert next(q for q in first if q.sae == "pretrain").random_same_norm_delta_lm_loss is not None
    assert all(q.dead_in_training is not None and q.dead_fraction is not None for q in report.sae_quality)
    assert report.findings and report.notes[0] == report.findings[0].text
    assert report.diagnostics["latent_stability"] and report.diagnostics["diff_of_means"]
    saved = json.loads((out / "report.json").read_text())
    assert saved["provenance"]["dataset_fingerprint"] == report.provenance.dataset_fingerprint
    assert "base" in saved["provenance"]["model_description"]


@pytest.mark.slow
def test_study_rerun_reuses_every_part(smoke_cfg, smoke_run, monkeypatch):
    """A rerun refits nothing, evaluates nothing again (the memo holds every run's results), and
    gives identical results, every field of every row."""
    report, out = smoke_run
    import assay.probes.linear as linear
    import assay.probes.sparse as sparse
    import assay.report.evaluate as evaluate

    monkeypatch.setattr(linear.LogisticProbe, "fit", lambda *a, **k: pytest.fail("refitted a cached probe"))
    monkeypatch.setattr(sparse.KSparseProbe, "fit", lambda *a, **k: pytest.fail("refitted a cached probe"))
    monkeypatch.setattr(evaluate, "evaluate_method", lambda *a, **k: pytest.fail("evaluated a memoised run again"))
    again = run_study(smoke_cfg, out, progress=False)
    assert [r.model_dump_json() for r in again.results] == [r.model_dump_json() for r in report.results]


def test_subsample_keeps_n_per_split_and_class():
    from assay.data import Dataset, Example

    rows = [Example(text=f"t{i}", label=i % 2, split=("train", "val")[i % 4 // 2], source="s", family="none",
                    transformation="none", behaviour_id=str(i), group="g") for i in range(40)]
    ds = subsample(Dataset(rows), 3, seed=0)
    counts = {}
    for e in ds.examples:
        counts[(e.split, e.label)] = counts.get((e.split, e.label), 0) + 1
    assert counts == {("train", 0): 3, ("train", 1): 3, ("val", 0): 3, ("val", 1): 3}
    assert [e.text for e in ds.examples] == sorted((e.text for e in ds.examples), key=lambda t: int(t[1:]))


def test_calibration_split_is_carved_from_whole_validation_clusters():
    from assay.data import Dataset, Example

    rows = [Example(text=f"t{i}", label=i % 2, split="val" if i < 30 else "train", source="s",
                    behaviour_id=f"b{i // 3}", cluster=f"c{i // 6}") for i in range(40)]
    ds = with_calibration_split(Dataset(rows), "calib", seed=0)
    by_cluster = {}
    for e in ds.examples:
        by_cluster.setdefault(e.cluster, set()).add(e.split)
    assert all(len(s) == 1 for s in by_cluster.values())
    assert {e.split for e in ds.examples} == {"train", "val", "calib"}
    assert with_calibration_split(ds, "calib", seed=0).examples == ds.examples  # already there: unchanged


def _resolve(report, cite):
    """The number a citation points at, looked up independently of the findings code."""
    keys = ("method", "features", "sae", "k", "selector", "seed")
    same = lambda x, ref: all(getattr(x, k) == getattr(ref, k) for k in keys)  # noqa: E731
    if cite.source == "result":
        row = next(r for r in report.results if r.split == cite.split and same(r, cite.ref))
        return getattr(row, cite.metric)
    if cite.source == "comparison":
        c = next(c for c in report.comparisons if c.split == cite.split and same(c.a, cite.versus) and same(c.b, cite.ref))
        return getattr(c, cite.metric)
    if cite.source == "sae_quality":
        q = next(q for q in report.sae_quality if q.sae == cite.ref.method and q.seed == cite.ref.seed)
        return getattr(q, cite.metric)
    node = report.diagnostics
    for part in cite.metric.split("/"):
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


@pytest.mark.slow
def test_every_number_in_the_findings_is_the_row_it_names(smoke_cfg, smoke_run):
    """Each quoted number equals the value of the row, comparison or record it cites; the text shows
    it (rounded) and names that row; k-sparse citations are at the headline k, never another."""
    from assay.experiment.writing import label

    report, _ = smoke_run
    assert sum(len(f.cites) for f in report.findings) > 20
    for f in report.findings:
        for c in f.cites:
            assert _resolve(report, c) == pytest.approx(c.value), (f.text, c)
            shown = f"{c.value:.0%}" if "fraction" in c.metric or "share" in c.metric else f"{c.value:.3f}"
            assert shown.lstrip("+") in f.text.replace("+", ""), (shown, f.text)
            if c.source in ("result", "comparison") and c.ref.sae:
                assert label(c.ref) in f.text or c.ref.sae in f.text
            if c.ref is not None and c.ref.method == "k-sparse":
                assert c.ref.k == smoke_cfg.headline_k


@pytest.mark.slow
def test_no_choice_looks_at_ood(smoke_run):
    """Scrambling every OOD number changes no configuration the findings choose or cite."""
    import random

    from assay.experiment.families import family_best
    from assay.experiment.findings import findings

    report, _ = smoke_run
    scrambled = report.model_copy(deep=True)
    ood = [r for r in scrambled.results if r.split == "ood"]
    values = [r.auroc for r in ood]
    random.Random(0).shuffle(values)
    for r, v in zip(ood, values):
        r.auroc = v
    cfg = report.config
    assert family_best(scrambled.results, cfg) == family_best(report.results, cfg)
    refs = lambda rep: [(c.source, c.ref, c.versus, c.split, c.metric) for f in findings(rep) for c in f.cites]  # noqa: E731
    assert refs(scrambled) == refs(report)


@pytest.mark.slow
def test_one_part_per_run(smoke_run):
    report, out = smoke_run
    runs = {(r.method, r.features, r.sae, r.k, r.selector, r.seed) for r in report.results}
    parts = [p for p in (out / "parts").glob("*.json") if p.name != "evaluation.json"]  # the memo is no part
    assert len(parts) == len(runs) and (out / "parts" / "evaluation.json").is_file()


@pytest.mark.slow
def test_a_part_from_older_code_is_recomputed(smoke_cfg, smoke_run, monkeypatch):
    """Changing the code that computes a part changes its key, so the part is fitted again."""
    import assay.probes.linear as linear
    import assay.provenance as provenance
    from assay.probes.methods import METHODS

    report, out = smoke_run
    real = provenance.code_fingerprint
    monkeypatch.setattr(provenance, "code_fingerprint",
                        lambda *m: real(*m) + ("-edited" if "assay.probes.linear" in m else ""))
    fits = []
    fit = linear.DiffMeanProbe.fit
    monkeypatch.setattr(linear.DiffMeanProbe, "fit", lambda self, *a, **k: fits.append(1) or fit(self, *a, **k))
    dense = [n for n in smoke_cfg.methods if n != "dense-logistic" and METHODS[n].kind == "dense"]
    run_study(smoke_cfg.model_copy(update={"methods": ["dense-logistic", *dense]}), out, progress=False)
    assert len(fits) == len(smoke_cfg.aggregations) * len(dense) == 6


@pytest.mark.slow
def test_sae_quality_from_older_metrics_code_is_measured_again(smoke_cfg, smoke_run, monkeypatch):
    """SAE quality records are keyed on the code that measures them: a rerun reads them, and after an
    edit to that code every SAE is measured again (its SAE is not retrained)."""
    import time
    import uuid
    from pathlib import Path

    import assay.provenance as provenance
    import assay.sae.recipe as recipe

    report, out = smoke_run
    measured = []  # the directories of the SAEs measured: evaluate_sae(sae, tokens, <dir>/freq_hist.png, ...)
    evaluate = recipe.evaluate_sae
    monkeypatch.setattr(recipe, "evaluate_sae", lambda *a, **k: measured.append(Path(a[2]).parent) or evaluate(*a, **k))
    cfg = smoke_cfg.model_copy(update={"methods": ["dense-logistic"]})
    rerun = run_study(cfg, out, progress=False)
    assert measured == [] and not any(m["trained_in_this_run"] for m in rerun.diagnostics["sae_provenance"])
    real = provenance.code_fingerprint
    # A fresh "edit" each run: the SAEs live in the shared cache, so a fixed suffix would find the
    # records an earlier run of this test wrote for the same source and measure nothing.
    edit = f"-edited-{uuid.uuid4().hex}"
    monkeypatch.setattr(provenance, "code_fingerprint",
                        lambda *m: real(*m) + (edit if "assay.sae.metrics" in m else ""))
    started = time.time()
    try:
        edited = run_study(cfg, out, progress=False)
    finally:  # the records for an edit that never happened are litter in the user's cache
        for p in {p for d in measured for p in d.glob("study-quality-*.json") if p.stat().st_mtime >= started}:
            p.unlink()
    assert len(measured) == len(report.sae_quality) > 0
    assert not any(m["trained_in_this_run"] for m in edited.diagnostics["sae_provenance"])


def test_code_fingerprint_follows_the_source(tmp_path):
    import shutil
    from pathlib import Path

    import assay
    from assay.provenance import _code_fingerprint, code_fingerprint

    root = tmp_path / "assay"
    shutil.copytree(Path(assay.__file__).parent, root)
    before = code_fingerprint("assay.probes.linear", "assay.sae", root=root)
    (root / "report" / "render.py").write_text("# unrelated edit\n")
    _code_fingerprint.cache_clear()  # read once per process; a new process sees the edit
    assert code_fingerprint("assay.probes.linear", "assay.sae", root=root) == before
    (root / "sae" / "trainer.py").write_text((root / "sae" / "trainer.py").read_text() + "\n# edit\n")
    _code_fingerprint.cache_clear()
    assert code_fingerprint("assay.probes.linear", "assay.sae", root=root) != before


@pytest.mark.slow
def test_findings_regenerate_from_the_report_alone(smoke_run, tmp_path):
    """`assay experiment findings` rebuilds, from report.json alone, the findings the run computed
    in memory, and refuses a file that is not a study report."""
    from typer.testing import CliRunner

    from assay.experiment.cli import app
    from assay.experiment.findings import scale_notes
    from assay.report.schema import load_report

    _, out = smoke_run  # other tests rerun the study into `out`: compare with the file, not the fixture
    written = load_report(out / "report.json")
    assert written.findings
    stripped = json.loads((out / "report.json").read_text())
    stripped["findings"], stripped["notes"] = [], []
    (tmp_path / "report.json").write_text(json.dumps(stripped))
    res = CliRunner().invoke(app, ["findings", str(tmp_path / "report.json")])
    assert res.exit_code == 0, res.output
    again = load_report(tmp_path / "report.json")
    assert [f.text for f in again.findings] == [f.text for f in written.findings]
    # notes: the findings' texts, then what a reduced run is (the smoke study reads a subsample)
    scale = scale_notes(written)
    assert len(scale) == 1 and "at most" in scale[0]
    assert again.notes == written.notes == [f.text for f in written.findings] + scale and (tmp_path / "report.md").exists()
    (tmp_path / "bad.json").write_text("{}")
    res = CliRunner().invoke(app, ["findings", str(tmp_path / "bad.json")])
    assert res.exit_code == 2 and "Invalid value" in res.output  # a clear usage error, not a traceback


def test_the_evaluation_memo_gives_back_what_it_was_given(tmp_path):
    """A run's MethodResults come back from the memo field for field, and only under the same
    scores, settings and split layout."""
    import numpy as np

    from assay.experiment.evaluation import EvaluationMemo
    from assay.report.evaluate import SplitScores, evaluate_method

    rng = np.random.default_rng(0)
    y = (rng.random(300) < 0.4).astype(int)
    s = rng.normal(size=300) + 1.5 * y
    fam = rng.choice(["aim", "dan", "plain"], 300).tolist()
    splits = {name: SplitScores(scores=s[i], y=y[i], groups={"family": [fam[j] for j in i]}, units=[str(j // 3) for j in i])
              for name, i in (("val", np.arange(150)), ("ood", np.arange(150, 300)))}
    kwargs = {"features": "all.mean", "n_boot": 40, "seed": 0, "detail": True, "kind": "dense"}
    rows = evaluate_method("dense-logistic", splits, **kwargs)
    memo = EvaluationMemo(tmp_path / "evaluation.json", "layout")
    assert memo.get(memo.key("dense-logistic", s, kwargs)) is None
    memo.put(memo.key("dense-logistic", s, kwargs), rows)
    memo.save()
    again = EvaluationMemo(tmp_path / "evaluation.json", "layout")
    back = again.get(again.key("dense-logistic", s, kwargs))
    assert back is not None and [r.model_dump_json() for r in back] == [r.model_dump_json() for r in rows]
    assert again.get(again.key("dense-logistic", s + 1e-12, kwargs)) is None
    assert again.get(again.key("dense-logistic", s, kwargs | {"seed": 1})) is None
    other = EvaluationMemo(tmp_path / "evaluation.json", "another layout")
    assert other.get(other.key("dense-logistic", s, kwargs)) is None


@pytest.mark.slow
def test_recompute_checks_the_committed_numbers_from_the_scores_file(smoke_run, tmp_path):
    """The study writes its headline rows' per-example scores; `assay experiment recompute` gets every
    number of those rows back from them, and fails (exit 1) on a report whose interval was changed,
    and with a clear error on a folder without a scores file."""
    import re
    import shutil

    from typer.testing import CliRunner

    from assay.experiment.cli import app

    _, out = smoke_run
    assert (out / "scores.npz").is_file()
    res = CliRunner().invoke(app, ["recompute", str(out)])
    assert res.exit_code == 0, res.output
    assert "every number matches the report" in res.output and "0 differ" in res.output
    shutil.copy(out / "scores.npz", tmp_path / "scores.npz")
    report = json.loads((out / "report.json").read_text())
    row = next(r for r in report["results"] if r["auroc_ci"] and r["split"] == "ood")
    row["auroc_ci"]["high"] = row["auroc_ci"]["high"] - 0.02
    (tmp_path / "report.json").write_text(json.dumps(report))
    res = CliRunner().invoke(app, ["recompute", str(tmp_path)])
    assert res.exit_code == 1 and "auroc_ci/high" in res.output, res.output
    (tmp_path / "scores.npz").unlink()
    res = CliRunner().invoke(app, ["recompute", str(tmp_path)])
    said = re.sub(r"[\s│╭╮╰╯─]+", " ", res.output)  # the rich error box wraps the message
    assert res.exit_code == 2 and "no per-example scores file here" in said, res.output
