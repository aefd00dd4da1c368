"""Results schema, evaluation protocol and rendering (markdown, HTML, PNG) on synthetic results."""

import json
import re

import numpy as np
import pydantic
import pytest

from assay.report import Report, evaluate_method, load_report, report_json_schema
from assay.report.evaluate import SplitScores
from assay.metrics import threshold_at_fpr
from assay.report.render import render_html, render_markdown, write_report  # noqa: F401
from assay.report.synthetic import synthetic_report


@pytest.fixture(scope="module")
def report():
    return synthetic_report(seed=0, n=300, n_boot=100)


@pytest.fixture(scope="module")
def written(report, tmp_path_factory):
    """Figures are the slow part: render every format once for the tests below."""
    out = tmp_path_factory.mktemp("report")
    return out, write_report(report, out)


def test_every_schema_field_describes_itself():
    schema = report_json_schema()
    missing = []
    for name, model in schema["$defs"].items():
        for field, spec in model["properties"].items():
            if not spec.get("title") or not spec.get("description"):
                missing.append(f"{name}.{field}")
    assert not missing, missing


def test_report_round_trips_through_json(report, tmp_path):
    path = tmp_path / "r.json"
    path.write_text(report.model_dump_json())
    again = load_report(path)
    assert again == report
    assert again.provenance.git_commit == report.provenance.git_commit
    assert again.provenance.model == "synthetic" and again.provenance.layer == 9


def test_schema_rejects_bad_results(report):
    bad = json.loads(report.model_dump_json())
    bad["results"][0]["auroc"] = "high"
    with pytest.raises(pydantic.ValidationError, match=r"results\.0\.auroc"):
        Report.model_validate(bad)


def test_evaluate_method_calibrates_on_benign_val():
    rng = np.random.default_rng(0)
    mk = lambda n, sep: SplitScores(np.r_[rng.normal(sep, 1, n), rng.normal(0, 1, n)], np.r_[np.ones(n), np.zeros(n)].astype(int),
                                    {"family": ["x"] * n + ["none"] * n})
    splits = {"val": mk(500, 3.0), "ood": mk(300, 1.0)}
    res = {r.split: r for r in evaluate_method("m", splits, features="all.max", n_boot=100)}
    t = threshold_at_fpr(splits["val"].scores[splits["val"].y == 0], 0.01)
    assert res["val"].threshold == res["ood"].threshold == t
    assert res["val"].fpr_reached <= 0.01
    assert res["val"].auroc_ci.low <= res["val"].auroc <= res["val"].auroc_ci.high
    assert res["ood"].recall_at_fpr < res["val"].recall_at_fpr
    fam = {g.group: g for g in res["ood"].breakdown}
    assert fam["x"].n_neg == 0 and fam["x"].recall == pytest.approx(res["ood"].recall_at_fpr)


def test_markdown_has_tables_for_every_split(report):
    md = render_markdown(report)
    assert md.startswith("# assay report")
    for title in ("### AUROC", "### Recall at 1% FPR", "### ood: by family", "### ood: by transformation",
                  "### SAE quality", "### Published (GDM)", "## Provenance"):
        assert title in md
    # k-sparse rows sort by k numerically
    ks = [int(k) for k in re.findall(r"k-sparse k=(\d+) \(l1\)", md.split("### AUROC")[1].split("### Recall")[0])]
    assert len(ks) >= 1
    assert ks == sorted(ks)


def test_html_is_self_contained(written):
    page = written[1]["html"].read_text()
    assert "<title>assay report (synthetic scores)</title>" in page
    assert page.count("<table") >= 6 and page.count('src="data:image/png;base64,') >= 3
    assert not re.search(r"(src|href)=[\"']?(https?:)?//", page)  # nothing fetched from outside
    assert "<script" not in page


def test_write_report_writes_every_format(report, written):
    tmp_path, written = written
    assert load_report(written["json"]) == report
    assert json.loads(written["schema"].read_text())["title"] == "Report"
    pngs = sorted(p.name for p in (tmp_path / "figures").glob("*.png"))
    assert {"roc_val.png", "roc_ood.png", "k_sweep.png"} <= set(pngs)
    assert all((tmp_path / "figures" / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert "figures/roc_ood.png" in written["md"].read_text()


def test_a_rewrite_of_the_same_report_keeps_its_figures(report, written, tmp_path, monkeypatch):
    """Writing a report whose figures' inputs are unchanged takes the PNGs already there (same
    pages, byte for byte); a changed result draws them again."""
    import shutil

    import assay.report.render as render

    first, files = written
    out = tmp_path / "again"
    shutil.copytree(first, out)
    monkeypatch.setattr(render, "report_figures", lambda *a, **k: pytest.fail("drew the figures again"))
    again = write_report(report, out)
    for fmt in ("md", "html"):
        assert again[fmt].read_bytes() == files[fmt].read_bytes()

    changed = report.model_copy(deep=True)
    changed.results[0].auroc = 0.5 if changed.results[0].auroc != 0.5 else 0.6
    with pytest.raises(pytest.fail.Exception, match="drew the figures again"):
        write_report(changed, out)


def test_ood_split_by_kind_of_negative_with_clustered_intervals():
    """A method that separates harmful prompts from ordinary benign ones perfectly but scores the hard
    negatives like the harmful ones: its split AUROC hides that; the slices show it, with intervals
    that resample clusters; per-group intervals resample clusters too when the split has them."""
    from assay.report.breakdown import group_breakdown, negative_slices

    rng = np.random.default_rng(0)
    n = 60
    groups = ["harmful_plain"] * n + ["benign_plain"] * (3 * n) + ["transform_innocuous"] * (n // 2)
    y = np.array([1] * n + [0] * (3 * n) + [0] * (n // 2))
    s = np.concatenate([rng.uniform(0.6, 1.0, n), rng.uniform(0.0, 0.4, 3 * n), rng.uniform(0.6, 1.0, n // 2)])
    units = [f"h{i // 3}" for i in range(n)] + [f"b{i}" for i in range(3 * n)] + [f"h{i // 3}" for i in range(n // 2)]
    data = SplitScores(scores=s, y=y, groups={"group": groups}, units=units)
    (res,) = [r for r in evaluate_method("m", {"ood": data}, features="x", calibrate_on="ood", n_boot=300)]
    by = {x.kind: x for x in res.hard_negatives}
    assert set(by) == {"hard", "ordinary", "benign_plain", "transform_innocuous"}
    assert by["ordinary"].auroc == 1.0 and abs(by["hard"].auroc - 0.5) < 0.15 and res.auroc > 0.85
    assert by["hard"].n_pos == n and by["hard"].n_neg == n // 2 and by["hard"].groups == ["transform_innocuous"]
    assert by["hard"].auroc_ci.low < by["hard"].auroc < by["hard"].auroc_ci.high
    # group rates resample clusters: the twins share clusters with their harmful rows in threes
    (twins,) = [g for g in group_breakdown(s, y, groups, 0.5, by="group", units=units, n_boot=300)
                if g.group == "transform_innocuous"]
    (rows,) = [g for g in group_breakdown(s, y, groups, 0.5, by="group", n_boot=300) if g.group == "transform_innocuous"]
    assert twins.fpr == rows.fpr == 1.0 and twins.auroc_vs_rest_ci is not None and rows.auroc_vs_rest_ci is None
    assert negative_slices(s[:n], y[:n], groups[:n], units[:n]) == []  # one class: nothing to slice
