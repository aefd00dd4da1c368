"""`assay experiment saes`: the study's SAEs trained as their own command, then reused by the
study, which neither extracts their corpora nor trains them again and says where they came from."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_study_reuses_the_saes_command_and_says_so(tmp_path, monkeypatch, tiny):
    import assay.experiment.saes as saes_mod
    from assay.experiment import SAESpec, StudyConfig, run_study
    from assay.experiment.study_saes import run_study_saes
    from assay.sae.trainer import Trainer
    from conftest import toy_benchmark

    monkeypatch.setenv("ASSAY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("assay.models.load", lambda *a, **k: tiny)
    sae = SAESpec(width=64, k=8, pretrain_tokens=1500, chat_tokens=1500, finetune_tokens=600, max_tokens=64,
                  batch_size=256, eval_texts=2, eval_max_tokens=16)
    cfg = StudyConfig(data=str(toy_benchmark(tmp_path)), layer=1, layer_sweep=False, aggregations=["all.max"], n_boot=20,
                      methods=["dense-logistic", "1-sparse"], sae=sae, autointerp_latents=0, autointerp_lm_latents=0)

    result = run_study_saes(cfg, tmp_path / "saes", progress=False)
    assert {(r["sae"], r["seed"]) for r in result["saes"]} == {
        (n, 0) for n in ("pretrain", "chat", "pretrain+chat-ft", "pretrain+pretrain-ft")}
    assert all(r["trained"]["trained_in_this_run"] and r["trained"]["train_seconds"] >= 0 for r in result["saes"])
    assert all(r["trained"]["corpus_seconds"] >= 0 for r in result["saes"])  # extraction timed apart from training
    md = (tmp_path / "saes" / "saes.md").read_text()
    assert "| pretrain | 0 | pretrain |" in md and "Wall time per stage" in md
    assert (tmp_path / "saes" / "figures" / "freq_hist-chat.png").exists()
    saved = json.loads((tmp_path / "saes" / "saes.json").read_text())
    assert saved["layer"] == 1
    # every SAE's held-out curve, its last point the saved SAE (its quality record's FVU); finetunes
    # continue their parent's token axis; a random tiny model's SAEs miss the bar, and the report says so
    by_sae = {r["sae"]: r for r in saved["saes"]}
    for c in saved["curves"]:
        assert len(c["points"]) >= 2 and c["points"][-1]["fvu"] == pytest.approx(by_sae[c["sae"]]["fvu"], rel=1e-5)
        assert c["points"][-1]["delta_lm_loss"] == pytest.approx(by_sae[c["sae"]]["delta_lm_loss"], rel=1e-5)
        assert c["points"][0]["tokens"] > c["offset_tokens"] == (by_sae["pretrain"]["training_tokens"] if c["parent"] else 0)
    assert (tmp_path / "saes" / "figures" / "curves.png").exists() and "figures/curves.png" in md
    assert saved["bar"]["text"].startswith("0 of the 4 SAEs meet the quality bar") and "Quality bar" in md

    # the study: no corpus extracted, no SAE trained, quality records read from beside the SAEs
    monkeypatch.setattr(saes_mod.Corpora, "activations", lambda *a: pytest.fail("extracted an SAE corpus again"))
    monkeypatch.setattr(Trainer, "fit", lambda *a, **k: pytest.fail("trained an SAE again"))
    report = run_study(cfg, tmp_path / "study", progress=False)
    made = report.diagnostics["sae_provenance"]
    assert len(made) == 4 and not any(m["trained_in_this_run"] for m in made)
    by_sae = {r["sae"]: r for r in result["saes"]}
    for q in report.sae_quality:
        assert q.fvu == pytest.approx(by_sae[q.sae]["fvu"]) and q.l0 == pytest.approx(by_sae[q.sae]["l0"])
    text = next(f.text for f in report.findings if "trained before this run" in f.text)
    assert "4 of the 4 SAEs" in text and "measured before this run as well" in text and " min there" in text


def test_sae_source_sentence_only_for_reused_saes():
    from assay.experiment.findings import sae_source_text

    fresh = {"sae": "chat", "seed": 0, "trained_in_this_run": True, "run_started": 10.0, "quality_measured": 11.0}
    assert sae_source_text([fresh]) == ""
    old = {"sae": "pretrain", "seed": 0, "trained_in_this_run": False, "git_commit": "abcdef123", "train_seconds": 600,
           "corpus_seconds": 1200, "run_started": 10.0, "quality_measured": 11.0}
    text = sae_source_text([fresh, old])
    assert text.startswith("1 of the 2 SAEs") and "abcdef1" in text and "10 min" in text and "20 min" in text
    assert "measured before" not in text  # its quality was measured in this run
    untimed = {**old, "train_seconds": None, "quality_measured": 5.0}
    assert "took" not in sae_source_text([untimed]) and "measured before" in sae_source_text([untimed])


def test_saes_command_refuses_bad_input_before_loading_anything(tmp_path):
    from typer.testing import CliRunner

    from assay.cli import app

    runner = CliRunner(env={"COLUMNS": "400", "NO_COLOR": "1"})
    res = runner.invoke(app, ["experiment", "saes", "--preset", "huge"])
    assert res.exit_code == 2 and "unknown preset" in res.output
    res = runner.invoke(app, ["experiment", "saes", "--layer-sweep-from", str(tmp_path / "none.json")])
    assert res.exit_code == 2 and "no such file" in res.output
    res = runner.invoke(app, ["experiment", "saes", "--layer", "3", "--layer-sweep-from", str(tmp_path / "x.json")])
    assert res.exit_code == 2 and "not both" in res.output


def test_readme_says_what_ran_as_separate_commands():
    from types import SimpleNamespace

    from assay.experiment.summary import _elsewhere

    assert _elsewhere(SimpleNamespace(diagnostics={})) == ""
    sweep = {"source": {"provenance": {"timings_seconds": {"layer sweep": 2799.0}}}}
    made = [{"trained_in_this_run": False, "train_seconds": 300.0, "corpus_seconds": 1500.0},
            {"trained_in_this_run": False, "train_seconds": 300.0, "corpus_seconds": 0.0},
            {"trained_in_this_run": True, "train_seconds": 1.0}]
    text = _elsewhere(SimpleNamespace(diagnostics={"layer_sweep": sweep, "sae_provenance": made}))
    assert text == "; its layer sweep (47 min) and its 2 SAEs (corpus extraction and training, 35 min) ran as separate commands"
    made[1]["train_seconds"] = None  # an SAE older than trained.json: no time claimed
    assert _elsewhere(SimpleNamespace(diagnostics={"sae_provenance": made})) == "; its 2 SAEs ran as separate commands"


def test_a_subsampled_run_says_how_small_it_is():
    from types import SimpleNamespace

    from assay.experiment.findings import scale_notes

    splits = {"train": {"rows": 80, "units": 56}, "ood": {"rows": 80, "units": 59}}
    sae = {"width": 1024, "pretrain_tokens": 12000, "chat_tokens": 12000}
    report = SimpleNamespace(config={"preset": "demo", "subsample": 40, "sae": sae},
                             provenance=SimpleNamespace(splits=splits))
    (text,) = scale_notes(report)
    assert "at most 40 rows per split and class" in text and "(train 80, ood 80)" in text
    assert "1,024 latents" in text and "12,000 pretraining (Wikipedia and dictionary)" in text and "demo preset" in text
    report.config = {**report.config, "preset": "quick"}
    assert "demo preset" not in scale_notes(report)[0]
    report.config = {**report.config, "subsample": None}
    assert scale_notes(report) == []


def test_training_cost_is_summed_from_the_records_that_trained_the_saes():
    from assay.experiment.study_saes import cost_text

    rows = [{"trained": {"train_seconds": 600.0, "corpus_seconds": 1800.0, "git_commit": "abc1234ffff"}},
            {"trained": {"train_seconds": 200.0, "corpus_seconds": 0.0, "git_commit": "abc1234ffff"}}]
    text = cost_text(rows)
    assert "corpus extraction 1800 s" in text and "training with held-out curves 800 s" in text
    assert "0.72 h in all" in text and "(abc1234)" in text
    rows[1]["trained"]["train_seconds"] = None  # a record without its time: no sum pretends to be whole
    assert cost_text(rows) == "Training cost: not recorded for every SAE."
