"""Training on synthetic activations: dictionary recovery, the QF penalty, one stream for several
SAEs, checkpoint/resume, finetuning with resampled latents."""

import pytest
import torch

from assay.sae.base import build_sae
from assay.sae.io import load_sae
from assay.sae.metrics import reconstruction_stats
from assay.sae.resample import resample_latents_
from assay.sae.synthetic import PlantedDictionary, max_cosine
from assay.sae.trainer import TrainConfig, Trainer


def _cfg(tokens=60_000, **kw):
    base = dict(total_tokens=tokens, batch_size=256, lr=3e-3, lr_warmup_steps=10, progress=False,
                buffer_tokens=4096, dead_after_tokens=5000)
    return TrainConfig(**{**base, **kw})


pytestmark = pytest.mark.usefixtures("one_thread")


SPECS = {
    "relu": {}, "topk": {"k": 3}, "batchtopk": {"k": 3}, "matryoshka": {"k": 3, "prefixes": (16, 64)},
    "jumprelu": {}, "qf_jumprelu": {}, "gated": {},
}


@pytest.mark.parametrize("arch", list(SPECS))
def test_recovers_planted_dictionary(arch):
    data = PlantedDictionary(d_in=32, n_features=64, active=3)
    sae = build_sae(arch, d_in=32, d_sae=128, **SPECS[arch])
    Trainer({arch: sae}, _cfg()).fit(data.stream(70_000))
    assert max_cosine(sae.W_dec, data.dictionary).mean() > 0.9


def test_qf_penalty_removes_high_frequency_latents():
    data = PlantedDictionary(d_in=32, n_features=64, always_on=2.0, seed=1)
    saes = {
        "jumprelu": build_sae("jumprelu", d_in=32, d_sae=128, l0_coefficient=2e-2),
        "qf": build_sae("qf_jumprelu", d_in=32, d_sae=128, l0_coefficient=5e-3, omega_0=0.01),
    }
    trainer = Trainer(saes, _cfg(dead_after_tokens=1_000_000))
    trainer.fit(data.stream(70_000))
    jr, qf = (reconstruction_stats(trainer.folded(n), data.stream(8192)) for n in saes)
    assert abs(jr["l0"] - qf["l0"]) / jr["l0"] < 0.3  # similar sparsity ...
    assert abs(jr["fvu"] - qf["fvu"]) < 0.05  # ... and reconstruction,
    assert qf["max_freq"] < 0.8 * jr["max_freq"]  # but a lower top frequency
    assert qf["dense"] * 2 < jr["dense"]  # and far fewer latents firing on > 10% of tokens


class _Killed(Exception):
    """Stands in for kill -9: the stream dies mid-run, after the last checkpoint was written."""


def _dies_after(chunks, n):
    for i, c in enumerate(chunks):
        if i == n:
            raise _Killed
        yield c


def _make_pair():
    return {"topk": build_sae("topk", d_in=16, d_sae=48, k=3), "relu": build_sae("relu", d_in=16, d_sae=48)}


def test_several_saes_one_stream_and_resume(tmp_path):
    """An interrupted run resumes to exactly the uninterrupted run: same steps, tokens and weights.
    (The old resume skipped the tokens drawn into the shuffle buffer: it ended short, exit 0.)"""
    data = PlantedDictionary(d_in=16, n_features=32, seed=3)
    chunks = list(data.stream(10_240, chunk=500))
    cfg = _cfg(tokens=10_240, checkpoint_every=7, buffer_tokens=2048)
    full = Trainer(_make_pair(), cfg, tmp_path / "full")
    full.fit(chunks)
    assert full.state.step == 40 and full.state.tokens_seen == 10_240
    for kill_at in (9, 15):  # chunks drawn before the kill: mid-buffer, at different steps
        run = tmp_path / f"run{kill_at}"
        with pytest.raises(_Killed):
            Trainer(_make_pair(), cfg, run).fit(_dies_after(chunks, kill_at))
        assert (run / "checkpoint.pt").exists()
        resumed = Trainer(_make_pair(), cfg, run)
        resumed.fit(chunks, resume=True)
        assert (resumed.state.step, resumed.state.tokens_seen) == (40, 10_240)
        for name in ("topk", "relu"):
            a, b = load_sae(tmp_path / "full" / name), load_sae(run / name)
            for key, value in a.state_dict().items():
                assert torch.equal(value, b.state_dict()[key]), (kill_at, name, key)
        assert resumed.state.history == full.state.history


def test_resume_refuses_a_pickle_payload(tmp_path):
    """checkpoint.pt is loaded with weights_only: a crafted pickle is refused before it runs."""
    import os

    from assay.errors import ConfigMismatchError

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (tmp_path / "run").mkdir()
    torch.save({"identity": "x", "state": Payload()}, tmp_path / "run" / "checkpoint.pt")
    trainer = Trainer(_make_pair(), _cfg(tokens=2048), tmp_path / "run")
    with pytest.raises(ConfigMismatchError, match="never unpickles objects"):
        trainer.fit(PlantedDictionary(d_in=16, n_features=32).stream(4096), resume=True)
    assert not marker.exists()


def test_resume_with_other_settings_is_refused(tmp_path):
    """A checkpoint of k=3 is not resumed as k=4 (that silently mixed two configurations)."""
    from assay.errors import ConfigMismatchError

    chunks = list(PlantedDictionary(d_in=16, n_features=32, seed=3).stream(8192, chunk=500))
    cfg = _cfg(tokens=8192, checkpoint_every=4, buffer_tokens=2048)
    with pytest.raises(_Killed):
        Trainer({"topk": build_sae("topk", d_in=16, d_sae=48, k=3)}, cfg, tmp_path).fit(_dies_after(chunks, 13))
    other = Trainer({"topk": build_sae("topk", d_in=16, d_sae=48, k=4)}, cfg, tmp_path)
    with pytest.raises(ConfigMismatchError, match=r"saes.topk.k: checkpoint 3, now 4"):
        other.fit(chunks, resume=True)


def test_short_stream_is_flagged(tmp_path, caplog):
    """Data that runs out before the planned steps: a loud warning and complete: false on disk."""
    import json

    trainer = Trainer({"topk": build_sae("topk", d_in=16, d_sae=48, k=3)}, _cfg(tokens=8192), tmp_path)
    trainer.fit(PlantedDictionary(d_in=16, n_features=32).stream(2048))
    info = json.loads((tmp_path / "training.json").read_text())
    assert info["complete"] is False and info["steps"] < info["steps_planned"] == 32
    assert "SHORT RUN" in caplog.text


@pytest.mark.parametrize("arch,kw", [("topk", {"k": 49}), ("batchtopk", {"k": 48.5}), ("topk", {"k": 0}),
                                     ("matryoshka", {"k": 100}), ("relu", {"l1_coefficient": -1.0}),
                                     ("topk", {"k": 3, "d_sae": 0})])
def test_impossible_sae_settings_are_refused(arch, kw):
    from assay.errors import InputError

    with pytest.raises(InputError):
        build_sae(arch, **{"d_in": 16, "d_sae": 48, **kw})


def test_finetune_with_resampled_latents(tmp_path):
    pretrain = PlantedDictionary(d_in=16, n_features=32, seed=4)
    sae = build_sae("topk", d_in=16, d_sae=64, k=3)
    Trainer({"sae": sae}, _cfg(tokens=20_000), tmp_path / "pre").fit(pretrain.stream(30_000))
    loaded = load_sae(tmp_path / "pre")
    chat = PlantedDictionary(d_in=16, n_features=32, seed=5)  # a shifted distribution
    before = reconstruction_stats(loaded, chat.stream(4096))
    idx = resample_latents_(loaded, 0.25, how="least_used", freq=before["freq"])
    assert len(idx) == 16
    Trainer({"sae": loaded}, _cfg(tokens=20_000), tmp_path / "ft").fit(chat.stream(30_000))
    after = reconstruction_stats(load_sae(tmp_path / "ft"), chat.stream(4096))
    assert after["fvu"] < before["fvu"]


@pytest.mark.parametrize("arch", ["topk", "jumprelu", "relu"])
def test_finetune_starts_from_the_saved_function(tmp_path, arch):
    """One step at lr 0 on data of another norm must leave the SAE's reconstructions unchanged:
    the trainer may not re-estimate the input scale and renormalise the decoder under a saved SAE."""
    data = PlantedDictionary(d_in=16, n_features=32, seed=6)
    sae = build_sae(arch, d_in=16, d_sae=64, **SPECS[arch])
    Trainer({"sae": sae}, _cfg(tokens=5_000), tmp_path / "pre").fit(data.stream(8_000))
    saved = load_sae(tmp_path / "pre")
    x = data.sample(512)
    before = saved(x)
    shifted = (1.5 * c for c in data.stream(1_024, chunk=256))  # new corpus, 1.5x the norm
    ft = Trainer({"sae": saved}, _cfg(tokens=256, lr=0.0, lr_warmup_steps=0), tmp_path / "ft")
    ft.fit(shifted)
    assert ft.state.step == 1
    after = load_sae(tmp_path / "ft")(x)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)


def test_dead_window_scales_with_the_run():
    assert TrainConfig(total_tokens=1_200_000, batch_size=4096).dead_window == 120_000
    assert TrainConfig(total_tokens=10_000, batch_size=1024).dead_window == 4096
    assert TrainConfig(total_tokens=10**9).dead_window == 10_000_000
    assert TrainConfig(total_tokens=10**6, dead_after_tokens=7).dead_window == 7


def test_bf16_shortlist_trains_the_exact_sae():
    """`search_dtype` only shortlists each token's top k in bf16; the values, gradients and Adam stay
    fp32, so while no true top-k latent falls outside the shortlist the weights follow the exact run."""
    data = PlantedDictionary(d_in=32, n_features=64, active=3, seed=2)
    chunks = list(data.stream(8192, chunk=512))
    runs = {}
    for search in (None, "bfloat16"):
        sae = build_sae("topk", d_in=32, d_sae=128, k=3)
        Trainer({"topk": sae}, _cfg(tokens=8192, search_dtype=search)).fit(chunks)
        assert sae.search_dtype == (torch.bfloat16 if search else None)
        runs[search] = sae
    for key, exact in runs[None].state_dict().items():
        torch.testing.assert_close(runs["bfloat16"].state_dict()[key], exact, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype,search", [("bfloat16", "bfloat16"), ("float32", None)])
def test_sae_train_command_shortlists_in_bf16_only_with_a_bf16_model(tiny, tmp_path, monkeypatch, dtype, search):
    """`assay sae train` shortlists as the study does: in bf16 where the model runs in bf16 (which
    `--dtype auto` picks only where bf16 matmuls are faster), exactly in fp32 elsewhere; training.json says which."""
    import json

    from typer.testing import CliRunner

    from assay.sae.cli import app

    monkeypatch.setenv("ASSAY_CACHE", str(tmp_path / "cache"))
    model = tmp_path / "tiny-model"
    tiny.model.save_pretrained(model)
    tiny.tokenizer.save_pretrained(model)
    out = tmp_path / "sae"
    res = CliRunner().invoke(app, ["train", "--model", str(model), "--dtype", dtype, "--layer", "1", "--width", "64",
                                   "--k", "8", "--tokens", "1000", "--batch-size", "250", "--max-tokens", "64",
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "training.json").read_text())["config"]["search_dtype"] == search


def test_sae_train_command_extracts_its_corpus_compiled_with_compile(tiny, tmp_path, monkeypatch):
    """`--compile` extracts the corpus with compiled blocks into their own cache entry, and cfg.json says so."""
    import json

    from typer.testing import CliRunner

    from assay.sae.cli import app

    monkeypatch.setenv("ASSAY_CACHE", str(tmp_path / "cache"))
    model = tmp_path / "tiny-model"
    tiny.model.save_pretrained(model)
    tiny.tokenizer.save_pretrained(model)
    res = CliRunner().invoke(app, ["train", "--model", str(model), "--dtype", "float32", "--layer", "1", "--width",
                                   "64", "--k", "8", "--tokens", "1000", "--batch-size", "250", "--max-tokens", "64",
                                   "--out", str(tmp_path / "sae"), "--compile"])
    assert res.exit_code == 0, res.output
    [entry] = (tmp_path / "cache" / "activations").iterdir()
    assert json.loads((entry / "manifest.json").read_text())["spec"]["compiled"] is True
    assert json.loads((tmp_path / "sae" / "cfg.json").read_text())["metadata"]["activations_compiled"] is True
