"""`assay experiment sae-frequency`: the L0 controller, the quadratic-frequency penalty against a
planted dense feature, report sentences that cite report.json, and CLI errors."""

from __future__ import annotations

import math
import re

import pytest
import torch

from assay.sae.base import build_sae
from assay.sae.calibrate import CalibratingTrainer, L0Controller, start_near_target_
from assay.sae.metrics import reconstruction_stats
from assay.sae.synthetic import PlantedDictionary
from assay.sae.trainer import TrainConfig


def _train(saes, targets, data, steps, tmp_path=None, **ctl):
    cfg = TrainConfig(total_tokens=256 * steps, batch_size=256, lr=3e-3, progress=False, buffer_tokens=4096)
    sample = data.sample(4096)
    for name, t in targets.items():
        start_near_target_(saes[name], sample, t)
    controller = L0Controller(saes, targets, cfg.total_steps, **ctl)
    trainer = CalibratingTrainer(saes, cfg, tmp_path, controller)
    trainer.fit(data.stream(256 * steps))
    return trainer, controller


# JumpReLU's target sits below the L0 it settles at unpenalised on this data (~4): early in
# training the reconstruction term itself raises thresholds, so a penalty can only push L0 down.
@pytest.mark.parametrize("arch,target", [("jumprelu", 3), ("gated", 6)])
def test_controller_brings_l0_within_10_percent_of_its_target(arch, target):
    torch.manual_seed(0)
    data = PlantedDictionary(d_in=32, n_features=64, active=4, seed=0)
    saes = {"s": build_sae(arch, d_in=32, d_sae=128, seed=0)}
    trainer, controller = _train(saes, {"s": target}, data, steps=300)
    held = reconstruction_stats(trainer.folded("s"), [data.sample(8192)])
    summary = controller.summary()["s"]
    assert summary["held"] and summary["coefficient"] != summary["initial_coefficient"]
    # the final SAE carries the one held coefficient
    key = "l0_coefficient" if arch == "jumprelu" else "l1_coefficient"
    assert getattr(saes["s"].cfg, key) == pytest.approx(summary["coefficient"])
    assert abs(held["l0"] / target - 1) <= 0.10, (held["l0"], summary["trace"][-5:])


def test_quadratic_frequency_penalty_removes_a_planted_dense_latent():
    torch.manual_seed(0)
    data = PlantedDictionary(d_in=32, n_features=128, active=4, always_on=1.0, seed=1)
    saes = {"jr": build_sae("jumprelu", d_in=32, d_sae=128, seed=0),
            "qf": build_sae("qf_jumprelu", d_in=32, d_sae=128, seed=0, omega_0=0.01)}
    trainer, _ = _train(saes, {"jr": 6, "qf": 6}, data, steps=300)
    held = [data.sample(8192)]
    dense = {n: reconstruction_stats(trainer.folded(n), held)["dense"] for n in saes}
    assert dense["jr"] >= 1  # the planted always-on direction gets a latent firing on most tokens
    assert dense["qf"] < dense["jr"], dense


def test_controller_state_survives_a_resume(tmp_path):
    def fresh():
        return {"s": build_sae("jumprelu", d_in=16, d_sae=64, seed=0)}

    full, ctl_full = _train(fresh(), {"s": 5}, PlantedDictionary(d_in=16, n_features=64, active=4, seed=0), 40)
    saes = fresh()
    cfg = TrainConfig(total_tokens=256 * 40, batch_size=256, lr=3e-3, progress=False, buffer_tokens=4096,
                      checkpoint_every=10)
    start_near_target_(saes["s"], PlantedDictionary(d_in=16, n_features=64, active=4, seed=0).sample(4096), 5)

    class Stop(Exception):
        pass

    def interrupted(n):
        for i, chunk in enumerate(data.stream(256 * 40)):
            if i == n:
                raise Stop
            yield chunk

    data = PlantedDictionary(d_in=16, n_features=64, active=4, seed=0)
    data.sample(4096)
    trainer = CalibratingTrainer(saes, cfg, tmp_path, L0Controller(saes, {"s": 5}, cfg.total_steps))
    with pytest.raises(Stop):
        trainer.fit(interrupted(6))
    assert (tmp_path / "checkpoint.pt").exists() and (tmp_path / "controller.json").exists()
    saes2 = fresh()
    start_near_target_(saes2["s"], PlantedDictionary(d_in=16, n_features=64, active=4, seed=0).sample(4096), 5)
    data = PlantedDictionary(d_in=16, n_features=64, active=4, seed=0)
    data.sample(4096)
    ctl2 = L0Controller(saes2, {"s": 5}, cfg.total_steps)
    CalibratingTrainer(saes2, cfg, tmp_path, ctl2).fit(data.stream(256 * 40), resume=True)
    assert ctl2.summary()["s"]["coefficient"] == pytest.approx(ctl_full.summary()["s"]["coefficient"], rel=1e-5)
    assert torch.allclose(saes2["s"].threshold, full.saes["s"].threshold, atol=1e-5)


def _rows():
    """A made-up sweep in the shape `evaluate_sweep` returns."""
    from assay.experiment.sae_frequency import VARIANTS, sae_name

    rows = []
    for i, v in enumerate(VARIANTS):
        for t in (16, 32):
            dense = {"gated": 0, "jumprelu": 9, "qf0.1": 3, "qf0.01": 1, "topk": 7}[v.name] * t // 16
            l0 = t * (1.3 if (v.name, t) == ("gated", 16) else 1.02)
            rows.append({"sae": sae_name(v, t), "variant": v.name, "label": v.label, "architecture": v.arch,
                         "target_l0": t, "l0": l0, "l0_matched": abs(l0 / t - 1) <= 0.1, "dense": dense,
                         "dense_share": dense / 512, "fvu": 0.2 - 0.001 * t + 0.01 * i,
                         "delta_lm_loss": 0.3 - 0.002 * t + 0.01 * i, "ce_recovered": 0.9, "dead": i,
                         "coefficient": 0.01, "coefficient_name": "x", "tokens": 1000})
    return rows


def test_report_sentences_cite_the_numbers_in_report_json(tmp_path):
    from assay.experiment.sae_frequency import build_report, findings, preset_config, render_markdown

    rows = _rows()
    found = {f["id"]: f for f in findings(rows, (16, 32))}
    assert "1 of 8" not in found["l0_match"]["text"]
    assert found["l0_match"]["numbers"] == {"matched": 7, "penalised": 8}
    assert "gated-l0_16 (L0 20.8 vs 16)" in found["l0_match"]["text"]  # a miss is named, never hidden
    for f in found.values():  # every cited number appears in its sentence
        for value in f["numbers"].values():
            if isinstance(value, (int, float, str)):
                shown = value if isinstance(value, str) else re.sub(r"\.0$", "", str(value))
                assert shown in f["text"], (f["id"], value, f["text"])
    assert "not at matched L0" in found["dense_by_arch_l0_32"]["text"]
    cfg = preset_config("quick", targets=(16, 32), width=512)
    ai = {"qf0.01-l0_32": _ai(0.30, (0.25, 0.35), 0.28, (0.20, 0.34)),
          "jumprelu-l0_32": _ai(0.12, (0.05, 0.20), -0.05, (-0.10, 0.00))}
    report = build_report(cfg, rows, {}, {"train": 1.0}, {"model": "m", "layer": 9, "train_tokens": 1000},
                          autointerp=ai)
    md = render_markdown(report)
    assert all(f["text"] in md for f in report["findings"]) and "**no**" in md
    assert "| qf0.01-l0_32 | 30 | 0.800 [0.75, 0.85] | 0.780 [0.70, 0.84] |" in md and "+0.300 [+0.25, +0.35]" in md
    assert "git_commit" in report
    with pytest.raises(Exception, match="not in this sweep"):
        build_report(cfg, rows, {}, {}, {}, autointerp={"nope": {}})


def _firing(dense: int, l0: float, d_sae: int = 400, blocks: int = 30, noisy: bool = False, seed: int = 0):
    """Firing counts per block of 256 tokens for an SAE with `dense` latents at frequency 0.5 and the
    rest sharing what is left of `l0`."""
    import numpy as np

    rest = (l0 - 0.5 * dense) / (d_sae - dense)
    freq = np.array([0.5] * dense + [rest] * (d_sae - dense))
    rng = np.random.default_rng(seed)
    return (rng.binomial(256, freq, size=(blocks, d_sae)) if noisy else np.tile(np.round(256 * freq), (blocks, 1)))


def test_families_are_compared_at_matched_l0_by_interpolation():
    """Neither family's SAEs sit at L0 10, yet both bracket it: the dense counts are read off each
    family's line in log L0, the difference gets a paired interval, and the verdict follows it."""
    import numpy as np

    from assay.experiment.sae_frequency_match import compare_at_matched_l0, comparison_levels, interpolate

    assert interpolate([8, 16], [2.0, 4.0], 8 * 2 ** 0.5) == pytest.approx(3.0)  # halfway in log L0
    assert interpolate([8, 16], [2.0, 4.0], 20) is None  # no extrapolation
    saes = {("jumprelu", 8): (6, 8.0), ("jumprelu", 16): (10, 14.0), ("qf0.01", 8): (1, 7.0), ("qf0.01", 16): (3, 13.0),
            ("qf0.1", 8): (6, 8.0), ("qf0.1", 16): (10, 14.0)}  # the same curve as JumpReLU
    rows, fired = [], {}
    for (v, t), (dense, l0) in saes.items():
        fired[f"{v}-{t}"] = _firing(dense, l0, noisy=True, seed=t)
        freq = fired[f"{v}-{t}"].sum(0) / (256 * 30)
        rows.append({"sae": f"{v}-{t}", "variant": v, "l0": float(freq.sum()), "dense": int((freq > 0.1).sum()),
                     "fvu": 0.3, "delta_lm_loss": 1.0})
    levels = comparison_levels(rows, ["jumprelu", "qf0.1", "qf0.01"], [4, 10, 32])
    assert levels == [10]  # the only target inside every family's range
    out = {m["variant"]: m for m in compare_at_matched_l0(rows, fired, np.full(30, 256), "jumprelu",
                                                          ["qf0.01", "qf0.1"], levels, n_boot=200)}
    qf = out["qf0.01"]
    assert 1 < qf["dense"] < 3 and 6 < qf["baseline_dense"] < 10 and qf["verdict"] == "fewer dense latents"
    assert qf["dense_diff_ci"][0] <= qf["dense_diff"] <= qf["dense_diff_ci"][1] < 0
    assert out["qf0.1"]["verdict"] == "no difference in dense latents beyond noise"


def _ai(uniform, uniform_ci, weighted, weighted_ci, off=()):
    """A compact auto-interp record whose margin over its random SAE is the given one (the real
    score is the margin + 0.5, the random SAE at 0.5); `off` names chance controls off chance."""
    margin = {"uniform": uniform, "uniform_ci": list(uniform_ci), "weighted": weighted, "weighted_ci": list(weighted_ci)}
    real = {k: ([x + 0.5 for x in v] if isinstance(v, list) else v + 0.5) for k, v in margin.items()}
    chance = {"uniform": 0.5, "uniform_ci": [0.45, 0.55], "weighted": 0.5, "weighted_ci": [0.45, 0.55]}
    return {"dir": "x", "explainer": "tokens", "scorer": "rule", "n_scored": {"real": 30, "random_sae": 30},
            "real_detection": real, "real_fuzzing": real, "shuffled_detection": chance,
            "unstructured_detection": chance, "random_sae_detection": chance, "margin_detection": margin,
            "controls": {"margin": 0.05, "values": {}, "off_chance": list(off), "at_chance": not off}}


def test_autointerp_verdict_follows_the_intervals_of_the_margins():
    """QF vs JumpReLU by their margin over a random SAE, each weighting: a verdict only where the
    intervals do not overlap, the numbers in the sentence, an unmatched L0 said; no ranking at all
    when a chance control is off chance."""
    from assay.experiment.sae_frequency import autointerp_findings

    rows = _rows()
    ai = {"qf0.01-l0_32": _ai(0.30, (0.25, 0.35), 0.28, (0.20, 0.34)),
          "jumprelu-l0_32": _ai(0.12, (0.05, 0.28), -0.05, (-0.10, 0.00))}
    controls, f = autointerp_findings(rows, ai, (16, 32))
    assert controls["id"] == "autointerp_controls" and "2 of 2 SAEs' runs have both" in controls["text"]
    assert "By the uniform mean, 2 of 2 trained SAEs beat their random SAE beyond noise and 0 fall below" in controls["text"]
    assert "frequency-weighted mean, 1 of 2 trained SAEs beat their random SAE" in controls["text"]
    assert f["id"] == "autointerp_qf_vs_jumprelu_l0_32"
    assert "uniform +0.300 vs +0.120: no clear difference" in f["text"]
    assert "frequency-weighted +0.280 vs -0.050: QF-JumpReLU higher" in f["text"]
    ai["jumprelu-l0_32"] = _ai(0.45, (0.40, 0.49), -0.05, (-0.10, 0.00))
    _, f = autointerp_findings(rows, ai, (16, 32))
    assert "uniform +0.300 vs +0.450: JumpReLU higher" in f["text"]
    by = {r["sae"]: r for r in rows}
    assert ("not matched" in f["text"]) == (not (by["qf0.01-l0_32"]["l0_matched"] and
                                                 by["jumprelu-l0_32"]["l0_matched"]))
    ai["jumprelu-l0_32"] = _ai(0.45, (0.40, 0.49), -0.05, (-0.10, 0.00), off=["shuffled_uniform"])
    (only,) = autointerp_findings(rows, ai, (16, 32))
    assert "off for jumprelu-l0_32 (shuffled_uniform), so no ranking below" in only["text"]
