"""Cheap checks come first: a bad layer, architecture, width or k is refused before the model
(seconds to minutes) is loaded or anything is extracted."""

import pytest
from typer.testing import CliRunner

from assay.cli import app
from assay.errors import InputError


@pytest.fixture
def model_dir(tiny, tmp_path):
    tiny.model.config.save_pretrained(tmp_path / "m")  # the config is all the checks read
    return str(tmp_path / "m")


@pytest.fixture
def no_model_load(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr("assay.models.load", refuse)
    monkeypatch.setattr("assay.models.loading.load", refuse)


def _fails_cleanly(args, match):
    result = CliRunner().invoke(app, args)
    assert result.exit_code != 0
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        assert isinstance(result.exception, InputError), repr(result.exception)
        assert match in str(result.exception)
    else:
        assert match in result.output


@pytest.mark.parametrize("extra,match", [
    (["--layer", "4"], "layers run 0..3"),
    (["--layer", "-1"], "out of range"),
    (["--arch", "batchtopk", "--k", "100"], "(0, 64]"),
    (["--arch", "topk", "--k", "0"], "(0, 64]"),
    (["--width", "0"], "d_sae must be a positive integer"),
    (["--arch", "nope"], "unknown SAE architecture"),
    (["--corpus", "reddit"], "reddit"),
])
def test_sae_train_checks_before_loading(model_dir, no_model_load, tmp_path, extra, match):
    base = ["sae", "train", "--model", model_dir, "--out", str(tmp_path / "o"), "--width", "64", "--layer", "1"]
    _fails_cleanly(base + extra, match)


@pytest.mark.parametrize("extra,match", [
    (["--layer", "9"], "layers run 0..3"),
    (["--aggregation", "all.median"], "unknown aggregation"),
    (["--method", "k-sparse", "--k", "0"], "use at least 1"),
    (["--method", "k_sparse"], "unknown method 'k_sparse'"),
    (["--sae", "/nonexistent"], "not a saved SAE"),
])
def test_probe_train_checks_before_loading(model_dir, no_model_load, tmp_path, extra, match):
    data = tmp_path / "d.csv"
    data.write_text("text,label,split\na,1,train\nb,0,train\nc,1,val\nd,0,val\n")
    _fails_cleanly(["probe", "train", "--data", str(data), "--out", str(tmp_path / "p"), "--model", model_dir] + extra,
                   match)


@pytest.mark.parametrize("extra,match", [(["--layer", "4"], "layers run 0..3"), (["--subsample", "2"], "at least 4")])
def test_study_checks_before_loading(model_dir, no_model_load, monkeypatch, tmp_path, extra, match):
    monkeypatch.setattr("assay.runtime.choose_dtype", lambda *a, **k: pytest.fail("measured matmuls before checking"))
    _fails_cleanly(["experiment", "harmful-intent", "--model", model_dir, "--out", str(tmp_path / "r")] + extra, match)


def test_sae_train_refuses_a_checkpoint_without_resume(model_dir, no_model_load, tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "checkpoint.pt").write_bytes(b"")
    _fails_cleanly(["sae", "train", "--model", model_dir, "--out", str(tmp_path / "o"), "--width", "64",
                    "--layer", "1", "--k", "8"], "pass --resume")


def test_an_explicit_bfloat16_that_is_slow_here_is_kept_with_a_warning(monkeypatch, caplog):
    """On an AVX2-only CPU bf16 matmuls ran ~50x slower than fp32 (0.34 vs 18 GFLOP/s): `auto` picks
    float32 there, and an explicit bfloat16 is honoured but warned about, with the numbers."""
    import logging

    import torch

    import assay.runtime as runtime

    monkeypatch.setattr(runtime, "matmul_gflops", lambda dtype, device, **kw: 18.0 if dtype == torch.float32 else 0.34)
    with caplog.at_level(logging.WARNING, logger="assay.runtime"):
        assert runtime.choose_dtype("auto", "cpu")[0] == "float32"
        assert not caplog.records
        name, why = runtime.choose_dtype("bfloat16", "cpu")
    assert name == "bfloat16" and why["bfloat16_gflops"] == 0.3
    assert "slower than float32" in caplog.text and "0.3 GFLOP/s" in caplog.text
    caplog.clear()
    monkeypatch.setattr(runtime, "matmul_gflops", lambda dtype, device, **kw: 100.0 if dtype == torch.float32 else 600.0)
    with caplog.at_level(logging.WARNING, logger="assay.runtime"):
        assert runtime.choose_dtype("bfloat16", "cpu")[0] == "bfloat16"
        assert runtime.choose_dtype("auto", "cpu")[0] == "bfloat16"
    assert not caplog.records


@pytest.mark.parametrize("small,full,chosen,probes", [
    (0.4, None, "float32", ["32 rows"]),  # AVX2-only: the quick probe settles it, no 7 s full-size bf16 matmul
    (40.0, 600.0, "bfloat16", ["32 rows", "1024 rows"]),  # a small matmul understates bf16: the full probe decides
    (40.0, 120.0, "float32", ["32 rows", "1024 rows"]),  # not 1.5x faster at full size: float32
    # an AMX CPU's 50 ms quick probe slowed to a tenth of fp32 by a busy machine: still the full probe
    (10.0, 600.0, "bfloat16", ["32 rows", "1024 rows"]),
])
def test_auto_dtype_skips_the_full_bfloat16_probe_only_where_bfloat16_is_hopeless(monkeypatch, small, full, chosen,
                                                                                 probes):
    import torch

    import assay.runtime as runtime

    ran = []

    def fake(dtype, device, seconds=0.3, rows=1024):
        if dtype == torch.float32:
            return 100.0
        ran.append(f"{rows} rows")
        return small if rows < 1024 else full

    monkeypatch.setattr(runtime, "matmul_gflops", fake)
    name, why = runtime.choose_dtype("auto", "cpu")
    assert (name, ran, why["bfloat16_probe"]) == (chosen, probes, probes[-1])
    # a GPU always gets the full-size probe: a 32-row matmul there times kernel launches
    ran.clear()
    assert runtime.bfloat16_gflops(100.0, "cuda")[1] == "1024 rows"
    assert ran == ["1024 rows"]


@pytest.mark.parametrize("extra,data,subsample", [
    (["--preset", "demo"], "quick", 30),  # the demo preset's own: the quick benchmark, subsampled
    (["--preset", "demo", "--subsample", "10"], "quick", 10),
    (["--preset", "demo", "--data", "full"], "full", 30),
    (["--preset", "quick"], None, None),  # the quick preset reads its own benchmark whole
    (["--preset", "quick", "--subsample", "6"], None, 6),
])
def test_study_presets_keep_their_data_unless_told(monkeypatch, tmp_path, extra, data, subsample):
    """`make demo` runs `--preset demo`; a flag left out must not erase what the preset sets."""
    seen = {}

    def capture(cfg, out, progress=True):
        seen["cfg"] = cfg
        raise SystemExit(0)

    monkeypatch.setattr("assay.runtime.choose_dtype", lambda *a, **k: ("float32", {"requested": "float32"}))
    monkeypatch.setattr("assay.experiment.run_study", capture)
    result = CliRunner().invoke(app, ["experiment", "harmful-intent", "--out", str(tmp_path / "r")] + extra)
    assert result.exit_code == 0, result.output
    cfg = seen["cfg"]
    assert (cfg.data, cfg.subsample) == (data, subsample)
    if cfg.preset == "demo":
        assert cfg.headline_k in cfg.ks and cfg.sae.width == 1024 and cfg.layer is None and cfg.layer_sweep
