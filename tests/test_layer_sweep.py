"""The layer sweep: which layers it reads, how it chooses (validation only), and that the study
then reads the layer it chose."""

from __future__ import annotations

import json

import pytest
import torch

from assay.experiment.layers import best_layers, choose_layer, sweep_layers


def _rows(val: dict[int, list[float]], ood: dict[int, list[float]]) -> list[dict]:
    return [{"layer": layer, "aggregation": f"a{j}", "val_auroc": v, "ood_auroc": ood[layer][j]}
            for layer, vs in val.items() for j, v in enumerate(vs)]


def test_sweep_layers_takes_the_stride_and_always_the_last_block():
    assert sweep_layers(18) == list(range(18))
    assert sweep_layers(18, 2) == [0, 2, 4, 6, 8, 10, 12, 14, 16, 17]
    assert sweep_layers(18, 17) == [0, 17]
    assert sweep_layers(1, 4) == [0]
    with pytest.raises(ValueError, match="stride"):
        sweep_layers(18, 0)


def test_choice_reads_validation_only_and_averages_the_aggregations():
    # layer 2 has the best single validation AUROC but the worse mean; layer 3 is best on OOD
    val = {1: [0.80, 0.90], 2: [0.95, 0.70], 3: [0.60, 0.60]}
    ood = {1: [0.50, 0.50], 2: [0.50, 0.50], 3: [0.99, 0.99]}
    assert choose_layer(_rows(val, ood)) == 1
    # changing OOD numbers changes nothing
    assert choose_layer(_rows(val, {k: [0.0, 0.0] for k in ood})) == 1
    # the concatenated probe's row is not a layer to choose
    rows = _rows(val, ood) + [{"layer": "concat", "aggregation": "a0", "val_auroc": 1.0, "ood_auroc": 1.0}]
    assert choose_layer(rows) == 1
    assert best_layers(rows, 2) == [1, 2]


def test_ties_go_to_the_shallower_layer():
    val = {4: [0.9, 0.9], 2: [0.9, 0.9], 7: [0.8, 0.8]}
    assert choose_layer(_rows(val, val)) == 2
    assert best_layers(_rows(val, val), 2) == [2, 4]


def test_study_reads_the_layer_its_sweep_chose(tmp_path, monkeypatch, tiny):
    """With no layer given, the study extracts its token activations at the sweep's choice; with a
    layer given, at that layer, and the sweep is still reported with what it would have chosen."""
    import assay.activations
    from assay.experiment import StudyConfig
    from assay.experiment.study import Study

    from conftest import toy_benchmark

    data = toy_benchmark(tmp_path)

    real_extract = assay.activations.extract
    seen: dict[str, list[int]] = {}

    class Stop(Exception):
        pass

    def extract(lm, texts, layers, **kw):
        if len(layers) == 1:  # the study's own extraction (the sweep reads several): record its layer, stop
            seen["layers"] = list(layers)
            raise Stop
        return real_extract(lm, texts, layers, progress=False, **{k: v for k, v in kw.items() if k != "progress"})

    monkeypatch.setattr(assay.activations, "extract", extract)
    monkeypatch.setattr("assay.models.load", lambda *a, **k: tiny)
    sweeps = {}
    for given in (None, 0):
        cfg = StudyConfig(data=str(data), layer=given, aggregations=["all.mean", "all.max"], n_boot=20,
                          methods=["dense-logistic"])
        study = Study(cfg, tmp_path / f"run-{given}", progress=False)
        with pytest.raises(Stop):
            study.run()
        sweep = sweeps[given] = study.layer_sweep
        assert sweep["layers"] == list(range(tiny.n_layers))
        assert sweep["chosen"] == choose_layer(sweep["rows"])
        assert seen["layers"] == [sweep["chosen"] if given is None else given]
        assert sweep["used"] == seen["layers"][0] and sweep["how"] == ("validation" if given is None else "given")
        assert len(sweep["rows"]) == (tiny.n_layers + 1) * 2  # every layer and the concatenation, per aggregation
        assert {c["split"] for c in sweep["comparisons"]} == {"calib", "ood"}
        for r in sweep["rows"]:
            assert 0 <= r["val_auroc"] <= 1 and r["val_auroc_ci"][0] <= r["val_auroc_ci"][1]

    # the sweep on its own (`assay experiment layers`): its files, and a finding that quotes its numbers
    from assay.experiment.layers import write_sweep

    text = write_sweep(sweep, tmp_path / "alone", cfg, {"layer sweep": 1.0})
    used = next(r for r in sweep["rows"] if r["layer"] == sweep["used"] and r["aggregation"] in text)
    assert f"layer {sweep['used']} of {tiny.n_layers}" in text and f"{used['val_auroc']:.3f}" in text
    assert "leads layer" in text  # how far the choice is ahead on the score it was chosen by
    assert text in (tmp_path / "alone" / "layer_sweep.md").read_text()
    assert (tmp_path / "alone" / "layer_sweep.png").stat().st_size > 1000
    assert json.loads((tmp_path / "alone" / "layer_sweep.json").read_text())["chosen"] == sweep["chosen"]

    # a study that reuses the sweep's file reads the layer it chose, reports where the sweep came
    # from, and refuses a file of another setting, naming what differs
    from assay.errors import InputError
    from assay.experiment.diagnostic_findings import layer_finding

    cfg = cfg.model_copy(update={"layer": None})
    write_sweep(sweeps[None], tmp_path / "chosen", cfg, {"layer sweep": 1.0})
    reuse = Study(cfg.model_copy(update={"layer_sweep_from": str(tmp_path / "chosen" / "layer_sweep.json")}),
                  tmp_path / "reuse", progress=False)
    with pytest.raises(Stop):
        reuse.run()
    assert seen["layers"] == [sweeps[None]["chosen"]] and reuse.layer_sweep["rows"] == sweeps[None]["rows"]
    assert reuse.layer_sweep["source"]["checked"] == "data and model fingerprints"
    assert "its own command" in layer_finding(reuse.layer_sweep).text
    for update, message in (({"seed": 1}, "seed"), ({"aggregations": ["all.mean"]}, "aggregations"),
                            ({"layer": sweeps[None]["chosen"] + 1}, "this study is given")):
        other = Study(reuse.cfg.model_copy(update={"layer": None, **update}), tmp_path / "other", progress=False)
        with pytest.raises(InputError, match=message):
            other.run()
    # a file of other data (same settings otherwise) is refused on its fingerprint
    other_data = json.loads((tmp_path / "chosen" / "layer_sweep.json").read_text())
    other_data["dataset_fingerprint"] = "0" * 64
    (tmp_path / "other_data.json").write_text(json.dumps(other_data))
    with pytest.raises(InputError, match="dataset fingerprint: differs"):
        Study(cfg.model_copy(update={"layer_sweep_from": str(tmp_path / "other_data.json")}), tmp_path / "d",
              progress=False).run()
    # a file older than its fingerprints is checked on the clusters of each split it compared
    legacy = json.loads((tmp_path / "chosen" / "layer_sweep.json").read_text())
    del legacy["dataset_fingerprint"], legacy["model_fingerprint"]
    legacy["comparisons"][0]["n_units"] += 1
    (tmp_path / "legacy.json").write_text(json.dumps(legacy))
    with pytest.raises(InputError, match="clusters in"):
        Study(cfg.model_copy(update={"layer_sweep_from": str(tmp_path / "legacy.json")}), tmp_path / "l",
              progress=False).run()
    (tmp_path / "junk.json").write_text("{}")
    with pytest.raises(InputError, match="not a layer sweep"):
        Study(cfg.model_copy(update={"layer_sweep_from": str(tmp_path / "junk.json")}), tmp_path / "j",
              progress=False).run()


def test_layers_command_refuses_bad_input_before_loading_anything(tmp_path):
    from typer.testing import CliRunner

    from assay.cli import app

    for args, message in ((["--preset", "huge"], "unknown preset"), (["--data", str(tmp_path / "no.jsonl")], "no such file"),
                          (["--layer-stride", "0"], "layer-stride")):
        res = CliRunner().invoke(app, ["experiment", "layers", *args, "--out", str(tmp_path / "o")],
                                 env={"COLUMNS": "400", "NO_COLOR": "1"})
        assert res.exit_code == 2 and message in res.output.lower(), (args, res.output)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("cap", [None, 0])
def test_the_study_reads_its_tokens_from_the_sweeps_pass(tmp_path, monkeypatch, tiny, cap):
    """Under the size cap the sweep keeps every swept layer's tokens, and the study's extraction at
    the chosen layer borrows them without running the model; over it the sweep pools only and the
    study extracts its layer itself. Either way the study reads the same numbers."""
    import assay.activations
    import assay.activations.extraction as extraction
    import assay.experiment.layers as layers_mod
    from assay.experiment import StudyConfig
    from assay.experiment.study import Study

    from conftest import toy_benchmark

    monkeypatch.setenv("ASSAY_CACHE", str(tmp_path / "cache"))  # every extraction below runs the model
    if cap is not None:
        monkeypatch.setattr(layers_mod, "SWEEP_TOKEN_BYTES", cap)
    real_extract, real_shard = assay.activations.extract, extraction._extract_shard
    forwards: list[int] = []
    got: dict[str, object] = {}

    class Stop(Exception):
        pass

    def counting_shard(lm, prompts, rows, layers, *a, **k):
        forwards.append(len(layers))
        return real_shard(lm, prompts, rows, layers, *a, **k)

    def extract(lm, texts, layers, **kw):
        acts = real_extract(lm, texts, layers, **kw)
        if len(layers) == 1:
            got["study"] = acts
            raise Stop
        got["sweep"] = acts
        return acts

    monkeypatch.setattr(extraction, "_extract_shard", counting_shard)
    monkeypatch.setattr(assay.activations, "extract", extract)
    monkeypatch.setattr("assay.models.load", lambda *a, **k: tiny)
    cfg = StudyConfig(data=str(toy_benchmark(tmp_path)), aggregations=["all.mean", "all.max"], n_boot=20,
                      methods=["dense-logistic"])
    with pytest.raises(Stop):
        Study(cfg, tmp_path / "run", progress=False).run()
    sweep, study = got["sweep"], got["study"]
    assert sweep.spec["store_tokens"] is (cap is None)
    swept = [n for n in forwards if n > 1]
    assert swept and all(n == len(sweep.spec["layers"]) for n in swept)
    assert len(forwards) == len(swept) + (0 if cap is None else len(study.manifest["shards"]))
    [layer] = study.spec["layers"]
    assert int(study.token_counts().sum()) > 0
    for i in range(0, study.n, 7):
        x = study.example_tokens(layer, i)[0]
        if cap is None:
            torch.testing.assert_close(x, sweep.example_tokens(layer, i)[0], rtol=0, atol=0)
        assert x.shape[0] == int(study.token_counts()[i])
