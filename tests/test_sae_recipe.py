"""The SAE recipe both `assay sae` and the study use: start, train, evaluate."""

from __future__ import annotations

import pytest
import torch

from assay.sae import build_sae
from assay.sae.io import save_sae
from assay.sae.recipe import evaluate_sae, initial_saes


def test_evaluate_sae_is_the_metrics_and_a_histogram(tmp_path):
    """The quality record against the metrics computed by hand on all the tokens at once (not against
    `reconstruction_stats`, which `evaluate_sae` calls): an SAE with 10 latents that never fire and
    one that fires on every token, so dead and dense count something."""
    from assay.sae.metrics import DENSE_FREQ

    torch.manual_seed(0)
    sae = build_sae("topk", d_in=16, d_sae=64, k=4).eval()
    with torch.no_grad():
        sae.W_enc[:, :10] = 0.0
        sae.b_enc[:10] = -100.0  # dead: never among the top 4
        sae.W_enc[:, 10] = 0.0
        sae.b_enc[10] = 100.0  # dense: always the largest
        sae.W_dec[10] = 0.0  # (and adds nothing to the reconstruction)
    scale = torch.ones(16)
    scale[:2] = 10.0  # two outlier dimensions that hold most of the variance
    tokens = [torch.randn(300, 16) * scale + 1.0 for _ in range(3)]
    record = evaluate_sae(sae, tokens, tmp_path / "freq.png", "toy", outlier_dims=[0, 1])
    assert (tmp_path / "freq.png").is_file() and record["freq_hist"] == str(tmp_path / "freq.png")
    assert record["architecture"] == "topk" and record["d_sae"] == 64 and "freq" not in record

    x = torch.cat(tokens).double()
    with torch.no_grad():
        z = sae.encode(x.float())
        err = (sae.decode(z).double() - x).pow(2)
    fired = (z > 0).double()
    var = (x - x.mean(0)).pow(2)  # about the mean, per dimension: FVU's denominator
    other = slice(2, None)
    want = {"tokens": 900, "l0": float(fired.sum(1).mean()), "mse": float(err.sum(1).mean()),
            "fvu": float(err.sum() / var.sum()),
            "fvu_outlier_dims": float(err[:, :2].sum() / var[:, :2].sum()),
            "fvu_other_dims": float(err[:, other].sum() / var[:, other].sum()),
            "outlier_variance_share": float(var[:, :2].sum() / var.sum()),
            "dead": int((fired.sum(0) == 0).sum()), "dense": int((fired.mean(0) > DENSE_FREQ).sum()),
            "max_freq": float(fired.mean(0).max())}
    assert want["dead"] >= 10 and want["dense"] >= 1 and want["max_freq"] == 1.0 and want["l0"] == 4.0
    assert 0.8 < want["outlier_variance_share"] < 1  # so the FVUs over the two sets of dimensions differ:
    assert want["fvu_outlier_dims"] != pytest.approx(want["fvu_other_dims"], rel=0.1)
    for key, value in want.items():
        assert record[key] == pytest.approx(value, rel=1e-6), key


def test_initial_saes_fresh_per_architecture_or_a_checked_finetune(tmp_path):
    fresh = initial_saes(8, ["topk", "relu"], 32, 0, {"topk": {"k": 4}, "relu": {}})
    assert sorted(fresh) == ["relu", "topk"] and fresh["topk"].cfg.d_sae == 32
    save_sae(fresh["topk"], tmp_path / "s")
    seen = []
    again = initial_saes(8, ["topk"], 32, 0, {}, finetune_from=tmp_path / "s", resample=0.25, check=seen.append)
    sae = again["topk"]
    assert seen == [sae]  # checked before anything else touches it
    changed = (sae.W_enc != fresh["topk"].W_enc.to(sae.W_enc.dtype)).any(0)
    assert int(changed.sum()) == 8  # a quarter of the latents re-initialised, the rest kept


@pytest.mark.parametrize("preset, n_tokens, want", [
    # (total tokens, warm-up steps, checkpoint every, eval every) as the study trained before the
    # builder was shared (`assay.experiment.saes.recipe`): its pretraining SAE and its finetunes
    ("quick", 100_000, (300_000, 14, 50, 37_500)), ("quick", 50_000, (150_000, 7, 50, 18_750)),
    ("full", 1_900_000, (7_600_000, 100, 371, 950_000)), ("full", 200_000, (800_000, 78, 50, 100_000))])
def test_train_config_gives_the_study_its_recipe(preset, n_tokens, want):
    from assay.experiment.config import StudyConfig
    from assay.sae.recipe import train_config
    from assay.sae.trainer import TrainConfig

    spec = StudyConfig.preset_config(preset).sae
    cfg = train_config(n_tokens, epochs=spec.epochs, batch_size=spec.batch_size, lr=spec.lr, seed=1,
                       lm_dtype=torch.bfloat16, curve_points=spec.curve_points)
    assert (cfg.total_tokens, cfg.lr_warmup_steps, cfg.checkpoint_every, cfg.eval_every_tokens) == want
    assert (cfg.batch_size, cfg.lr, cfg.seed, cfg.search_dtype) == (spec.batch_size, spec.lr, 1, "bfloat16")
    defaults = TrainConfig(total_tokens=1)  # everything else is the trainer's default
    assert all(getattr(cfg, k) == getattr(defaults, k) for k in ("lr_decay_fraction", "buffer_tokens", "betas",
                                                                 "sparsity_warmup_steps", "dead_after_tokens"))
    # what other callers set themselves: a fixed warm-up and cadence, other fields, no bf16 shortlist
    other = train_config(40_000, epochs=3, batch_size=128, lr=5e-4, seed=0, lm_dtype="float32", warmup=100,
                         checkpoint_every=(10, 25), buffer_tokens=1 << 15)
    assert (other.lr_warmup_steps, other.checkpoint_every, other.buffer_tokens, other.search_dtype,
            other.eval_every_tokens) == (100, 93, 1 << 15, None, 0)
    assert train_config(10, epochs=1, batch_size=1, lr=1e-3, seed=0, checkpoint_every=7).checkpoint_every == 7


def test_evaluate_saes_is_each_ones_record_with_the_lm_passes_shared(tmp_path):
    """Several SAEs measured together give each the record it gets alone (`evaluate_sae`, then
    `ce_recovered` on its own); a control gets a record of LM losses only; unplotted, `freq` stays."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from assay.sae.metrics import ce_recovered
    from assay.sae.recipe import evaluate_saes

    torch.manual_seed(0)
    model = Gemma3ForCausalLM(Gemma3TextConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, max_position_embeddings=64, sliding_window=16)).eval()
    lm = type("LM", (), {"model": model, "block": lambda self, layer: model.model.layers[layer]})()
    saes = {"a": build_sae("topk", d_in=32, d_sae=64, k=4).eval(), "b": build_sae("relu", d_in=32, d_sae=64).eval()}
    tokens = [torch.randn(50, 32), torch.randn(30, 32)]
    ids = torch.randint(1, 64, (3, 12))
    batches = [(ids, torch.ones_like(ids))]
    got = evaluate_saes(saes, tokens, {"a": (tmp_path / "a.png", "a")}, outlier_dims=[0], lm=lm, layer=0,
                        ce_batches=batches, controls={"half": lambda h: 0.5 * h}, seed=3)
    assert sorted(got) == ["a", "b", "half"] and (tmp_path / "a.png").is_file()
    assert "freq" not in got["a"] and got["b"]["freq"].shape == (64,) and "freq_hist" not in got["b"]
    for name, sae in saes.items():
        alone = {**evaluate_sae(sae, tokens, outlier_dims=[0]), **ce_recovered(lm, sae, 0, batches, seed=3)}
        alone.pop("freq")
        assert {k: v for k, v in got[name].items() if k not in ("freq", "freq_hist")} == alone, name
    assert got["half"] == ce_recovered(lm, lambda h: 0.5 * h, 0, batches, seed=3)
