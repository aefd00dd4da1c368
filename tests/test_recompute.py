"""The committed per-example scores recompute every number of the headline rows, and a changed
number or score is caught: the scores file round-trips, `recompute` matches a report built by the
study's own evaluation code, and breaking a report interval or one score fails it."""

from __future__ import annotations

import numpy as np
import pytest

from assay.experiment.config import StudyConfig
from assay.experiment.evaluation import Evaluator
from assay.experiment.families import detailed, family_best
from assay.experiment.recompute import recompute
from assay.experiment.config import SAE_NAMES
from assay.experiment.score_table import ScoreTable, headline_runs, load_scores, save_scores
from assay.experiment.parts import Run
from assay.report.evaluate import evaluate_method
from assay.report.schema import Provenance, Report
from assay.provenance import provenance

GROUPS = {1: ["harmful_plain", "harmful_jailbreak"], 0: ["benign_plain", "benign_topic", "transform_innocuous"]}


def _table(seed: int = 0) -> tuple[ScoreTable, StudyConfig]:
    """Four splits of clustered rows (3 rows a cluster), dense probes at two aggregations, a k-sparse
    probe on every study SAE at two seeds, and TF-IDF; the SAE probes are weaker out of distribution."""
    rng = np.random.default_rng(seed)
    sizes = {"train": 90, "val": 60, "calib": 60, "ood": 90}
    split = np.concatenate([[s] * n for s, n in sizes.items()])
    n = len(split)
    units = np.array([f"u{i // 3}" for i in range(n)], dtype=object)
    y = np.repeat(rng.integers(0, 2, n // 3), 3)
    group = np.array([rng.choice(GROUPS[int(v)]) for v in y], dtype=object)
    cfg = StudyConfig(n_boot=50, n_seeds=2, aggregations=["all.max", "resp-5"], headline_k=5, calibrate_on="calib")
    ood = split == "ood"
    scores = {Run("dense-logistic", "all.max"): rng.normal(size=n) + 2.5 * y,
              Run("dense-logistic", "resp-5"): rng.normal(size=n) + 2.0 * y,
              Run("tfidf", "text"): rng.normal(size=n) + 1.0 * y}
    for j, sae in enumerate(SAE_NAMES):
        for s in cfg.seeds:
            for feats in cfg.aggregations:
                scores[Run("k-sparse", feats, sae, 5, "l1", s)] = rng.normal(size=n) + y * np.where(ood, 0.5 + 0.2 * j, 2.0)
    idx = {s: np.flatnonzero(split == s) for s in sizes}
    groups = {"family": np.array(["none"] * n, dtype=object), "transformation": np.array(["none"] * n, dtype=object),
              "source": np.array(["synthetic"] * n, dtype=object), "group": group}
    return ScoreTable(scores=scores, idx=idx, y=y, units=units, groups=groups, splits=list(sizes)), cfg


def _report(table: ScoreTable, cfg: StudyConfig) -> Report:
    """What `build_report` computes from a study's scores, here from the table's."""
    ev = Evaluator(table, cfg)
    kinds = {"dense-logistic": "dense", "tfidf": "baseline", "k-sparse": "sae_sparse"}
    rows = []
    for run, s in table.scores.items():
        res = evaluate_method(run.method, table.split_scores(s), features=run.features, calibrate_on=cfg.calibrate_on,
                              target_fpr=cfg.target_fpr, n_boot=cfg.n_boot, seed=cfg.seed, detail=detailed(run, cfg),
                              kind=kinds[run.method], sae=run.sae, k=run.k, selector=run.selector)
        for r in res:
            r.seed = run.seed
        rows += res
    ev._seed_summaries(rows)
    comparisons, chosen = ev.comparisons(rows)
    return Report(provenance=Provenance(**provenance(model="synthetic", layer=1, dataset_fingerprint="x", seed=0)),
                  config=cfg.model_dump(), results=rows, comparisons=comparisons,
                  diagnostics={"headline_k": cfg.headline_k, **chosen, "gap_closed": ev.gap_closed(rows),
                               "ksparse_gaps": ev.ksparse_gaps(rows)})


@pytest.fixture(scope="module")
def committed(tmp_path_factory):
    table, cfg = _table()
    report = _report(table, cfg)
    path = save_scores(tmp_path_factory.mktemp("scores") / "scores.npz", table, headline_runs(table, report.results, cfg))
    return report, path, cfg


def test_the_scores_file_recomputes_every_number_of_the_headline_rows(committed):
    report, path, cfg = committed
    table = load_scores(path)
    best = family_best(report.results, cfg)
    # each family's choice at every seed, dense at every aggregation, pretrain's configuration on every SAE
    assert {Run(**r.model_dump()) for r in best.values() if r.seed is None} <= set(table.scores)
    pre = best[f"k-sparse k={cfg.headline_k} [pretrain]"]
    assert all(Run(pre.method, pre.features, s, pre.k, pre.selector, seed) in table.scores
               for s in SAE_NAMES for seed in cfg.seeds)
    sections = {s.name: s for s in recompute(report, table)}
    assert set(sections) == {"results", "comparisons", "hard_negatives", "gap_closed", "ksparse_gaps"}
    for s in sections.values():
        assert s.values > 0 and not s.mismatches, (s.name, s.mismatches[:3])
    assert sections["results"].intervals > 50 and sections["comparisons"].intervals > 10
    assert sections["gap_closed"].intervals == 2 * len(report.diagnostics["gap_closed"])


def test_a_changed_interval_or_score_is_caught(committed):
    report, path, _ = committed
    table = load_scores(path)
    broken = report.model_copy(deep=True)
    row = next(r for r in broken.results if r.auroc_ci is not None and r.split == "ood")
    row.auroc_ci.low += 0.01
    broken.diagnostics["ksparse_gaps"][0]["gap_difference"]["ci"][1] += 0.01
    bad = {s.name: s.mismatches for s in recompute(broken, table)}
    assert [m[0].rsplit("/", 2)[-2:] for m in bad["results"]] == [["auroc_ci", "low"]]
    assert [m[0] for m in bad["ksparse_gaps"]] == ["ksparse_gaps/0/gap_difference/ci/1"]
    assert not bad["comparisons"] and not bad["gap_closed"]
    run = next(iter(table.scores))
    table.scores[run] = table.scores[run].copy()
    table.scores[run][table.idx["ood"][0]] += 5.0  # one prompt's score
    assert any(s.mismatches for s in recompute(report, table))


def test_gap_closed_reports_both_configuration_rules_and_ksparse_the_difference_of_gaps(committed):
    report, _, cfg = committed
    rows = report.diagnostics["gap_closed"]
    assert {(g["rule"], g["split"]) for g in rows} == {(r, s) for r in ("pretrain_config", "own_config")
                                                       for s in ("calib", "ood")}
    best = family_best(report.results, cfg)
    for g in rows:
        other = best[f"k-sparse k={cfg.headline_k} [{g['sae']}]"] if g["rule"] == "own_config" else \
            best[f"k-sparse k={cfg.headline_k} [pretrain]"]
        assert (g["config_other"]["features"], g["config_other"]["sae"]) == (other.features, g["sae"])
    # the synthetic SAE probes fit calib (gap ~ 0) and fall behind OOD: GDM's pattern, with the gap
    # intervals equal to the paired comparisons' (calib and OOD share no cluster here)
    for g in report.diagnostics["ksparse_gaps"]:
        c = next(c for c in report.comparisons if c.kind == "family_best" and c.split == "ood" and c.b.sae == g["sae"])
        assert g["ood_gap"]["value"] == pytest.approx(c.diff) and g["ood_gap"]["ci"] == pytest.approx([c.ci.low, c.ci.high])
        assert g["gap_difference"]["value"] == pytest.approx(g["ood_gap"]["value"] - g["calib_gap"]["value"])
    assert any(g["gdm_pattern"] for g in report.diagnostics["ksparse_gaps"])


def test_a_file_that_is_not_a_scores_file_is_refused(tmp_path):
    from assay.errors import InputError

    (tmp_path / "scores.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="not a scores file"):
        load_scores(tmp_path / "scores.npz")
    np.savez_compressed(tmp_path / "other.npz", a=np.arange(3))
    with pytest.raises(InputError, match="not a scores file"):
        load_scores(tmp_path / "other.npz")
