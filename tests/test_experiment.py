"""The whole study end to end on the bundled model (a smoke-sized run), and its resumability."""

from __future__ import annotations

import json

import pytest

from assay.experiment import SAESpec, StudyConfig, run_study
from assay.experiment.study import subsample


@pytest.fixture(scope="module")
def smoke_cfg() -> StudyConfig:
    sae = SAESpec(width=256, k=16, pretrain_tokens=6000, chat_tokens=6000, finetune_tokens=3000, max_tokens=128,
                  batch_size=512, eval_texts=4)
    return StudyConfig(preset="quick", subsample=10, ks=[1, 5], n_boot=50, sae=sae,
                       dense_features=["all.max", "resp-5"], sae_features=["all.max"], attention_max_tokens=64)


@pytest.mark.slow
def test_study_end_to_end_then_resumes_from_its_caches(smoke_cfg, tmp_path, monkeypatch):
    report = run_study(smoke_cfg, tmp_path / "run", progress=False)
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"report.json", "report.md", "report.html", "report.schema.json", "figures"} <= files
    kinds = {r.kind for r in report.results}
    assert kinds == {"dense", "attention", "baseline", "sae_sparse", "sae_reconstruction"}
    assert {r.split for r in report.results} == {"train", "val", "ood"}
    assert {r.sae for r in report.results if r.sae} == {"pretrain", "chat", "pretrain+chat-ft"}
    assert {r.k for r in report.results if r.kind == "sae_sparse"} == {1, 5}
    for r in report.results:
        assert r.n_pos == 10 and r.n_neg == 10
        assert 0.0 <= r.auroc <= 1.0 and r.auroc_ci.low <= r.auroc <= r.auroc_ci.high
    assert len(report.sae_quality) == 3 and all(0 < q.l0 <= 16 for q in report.sae_quality)
    assert any("Dense linear probe" in n for n in report.notes)
    saved = json.loads((tmp_path / "run" / "report.json").read_text())
    assert saved["provenance"]["dataset_fingerprint"] == report.provenance.dataset_fingerprint

    # A rerun reuses every stage's cache: no probe is fitted again and the numbers are identical.
    import assay.probes.linear as linear

    monkeypatch.setattr(linear.LogisticProbe, "fit", lambda *a, **k: pytest.fail("refitted a cached probe"))
    again = run_study(smoke_cfg, tmp_path / "run", progress=False)
    assert [r.auroc for r in again.results] == [r.auroc for r in report.results]


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
