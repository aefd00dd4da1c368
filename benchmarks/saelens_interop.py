"""assay's SAE files against SAELens's own loader and writer, in both directions.

assay -> SAELens: each assay architecture (relu, topk, jumprelu, gated; batchtopk, matryoshka and
qf_jumprelu, which are saved as SAELens "jumprelu") is trained briefly by assay's `Trainer` on
synthetic activations at a non-unit scale (so the input scale is folded into the saved weights),
written by the trainer (`save_sae`), loaded by SAELens's `SAE.load_from_disk`, and compared with the
trained SAE in memory (and with assay's own `load_sae` of the same files).

SAELens -> assay: SAELens SAEs with every parameter moved off its init (thresholds set so that about
a fifth of the latents fire) are written by SAELens: `save_model` for its inference classes,
`save_inference_model` for its training classes (what its training runner writes). assay's
`load_sae` reads them, compared with SAELens's own `load_from_disk` of the same files.

Compared on Gaussian inputs and on the synthetic activations: `encode` (the latent code), `decode`
(of the reference's code) and the forward pass, by largest absolute difference, which must be within
TOLERANCE x max(1, largest reference value); also the reference's L0 (so a pass is not a vacuous
all-zero code) and the fraction of (token, latent) pairs whose on/off differs. Run by the Python of
the SAELens venv (`make saelens`; `make bench` runs it):

    .venv-saelens/bin/python benchmarks/saelens_interop.py [--out benchmarks/results/saelens_interop.json]

Exits 1 if any case fails (or cannot be run).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # the work tree's assay: it is not installed in the SAELens venv

import torch  # noqa: E402

from assay.provenance import provenance  # noqa: E402
from assay.sae import TrainConfig, Trainer, build_sae, load_sae  # noqa: E402
from assay.sae.base import sparsity_kwargs  # noqa: E402
from assay.sae.synthetic import PlantedDictionary  # noqa: E402

TOLERANCE = 1e-4  # relative to max(1, largest |reference value|); float32 throughout
D_IN, D_SAE, K = 64, 256, 16
ASSAY_ARCHS = ["relu", "topk", "jumprelu", "gated", "batchtopk", "matryoshka", "qf_jumprelu"]


def inputs(seed: int = 1) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    planted = PlantedDictionary(d_in=D_IN, n_features=128, active=4, always_on=1.0, seed=seed)
    return {"gaussian": 2.0 * torch.randn(512, D_IN, generator=gen), "synthetic": 3.0 * planted.sample(512)}


def dense(t: torch.Tensor) -> torch.Tensor:
    return t.to_dense() if t.is_sparse else t


@torch.no_grad()
def compare(ref, other, xs: dict[str, torch.Tensor]) -> dict:
    """Largest |difference| of encode, decode (of ref's code) and forward, on each input set."""
    out, ok = {}, True
    for name, x in xs.items():
        a_ref, a_oth = dense(ref.encode(x)), dense(other.encode(x))
        y_ref, y_oth = ref.decode(a_ref), other.decode(a_ref)
        f_ref, f_oth = ref(x), other(x)
        row = {"l0_reference": float((a_ref != 0).sum(-1).float().mean()),
               "l0_other": float((a_oth != 0).sum(-1).float().mean()),
               "active_set_mismatch_fraction": float(((a_ref != 0) != (a_oth != 0)).float().mean())}
        for what, r, o in (("encode", a_ref, a_oth), ("decode", y_ref, y_oth), ("forward", f_ref, f_oth)):
            diff, scale = float((r - o).abs().max()), float(r.abs().max())
            row[f"{what}_max_abs_diff"], row[f"{what}_max_abs_reference"] = diff, scale
            ok &= diff <= TOLERANCE * max(1.0, scale)
        ok &= row["l0_reference"] > 0
        out[name] = row
    return {"inputs": out, "pass": bool(ok)}


def assay_to_saelens(work: Path, xs: dict[str, torch.Tensor]) -> dict:
    from sae_lens import SAE

    saes = {a: build_sae(a, d_in=D_IN, d_sae=D_SAE, **sparsity_kwargs(a, k=K)) for a in ASSAY_ARCHS}
    planted = PlantedDictionary(d_in=D_IN, n_features=128, active=4, always_on=1.0, seed=0)
    cfg = TrainConfig(total_tokens=200 * 256, batch_size=256, lr=1e-3, lr_warmup_steps=10, buffer_tokens=2048,
                      scale_batches=2, progress=False, log_every=10**9)
    trainer = Trainer(saes, cfg, out_dir=work / "assay",
                      metadata={"hook_name": "blocks.9.hook_resid_post", "model_name": "gemma-3-270m"})
    trainer.fit(3.0 * x for x in planted.stream(cfg.total_tokens))  # x3: a non-unit input scale to fold in
    cases = {}
    for arch in ASSAY_ARCHS:
        path = work / "assay" / arch
        case = {"written_by": "assay Trainer (save_sae)", "read_by": "sae_lens SAE.load_from_disk"}
        try:
            case["saelens_architecture"] = json.loads((path / "cfg.json").read_text())["architecture"]
            mem = trainer.folded(arch)
            lens = SAE.load_from_disk(str(path), device="cpu").eval()
            case["saelens_class"] = type(lens).__name__
            case.update(compare(mem, lens, xs))
            case["assay_reload_vs_memory"] = compare(mem, load_sae(path), xs)
            case["pass"] = case["pass"] and case["assay_reload_vs_memory"]["pass"]
        except Exception as err:  # a failure to load is a result to record, not a crash
            case.update({"pass": False, "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()})
        cases[arch] = case
    return cases


@torch.no_grad()
def randomise(sae, x: torch.Tensor, seed: int) -> None:
    """Every parameter off its init; thresholds at each latent's 80th percentile of pre-activation."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in sae.named_parameters():
        if name in ("threshold", "log_threshold"):
            continue
        scale = 0.2 if name in ("W_enc", "W_dec") else 0.1  # decoder rows of norm ~1.6, not 1: folding shows
        p.copy_(torch.randn(p.shape, generator=gen) * scale)
    sae_in = x - sae.b_dec if sae.cfg.apply_b_dec_to_input else x
    pre = sae_in @ sae.W_enc + (sae.b_gate if hasattr(sae, "b_gate") else sae.b_enc)
    thr = pre.quantile(0.8, dim=0).clamp_min(1e-3)
    if hasattr(sae, "log_threshold"):
        sae.log_threshold.copy_(thr.log())
    if hasattr(sae, "threshold") and isinstance(sae.threshold, torch.nn.Parameter):
        sae.threshold.copy_(thr)
    if hasattr(sae, "topk_threshold"):  # BatchTopK's running global threshold: its saved JumpReLU threshold
        sae.topk_threshold.fill_(float(thr.median()))


def saelens_to_assay(work: Path, xs: dict[str, torch.Tensor]) -> dict:
    import sae_lens as sl

    x = xs["gaussian"]
    made = {
        "standard": lambda: sl.StandardSAE(sl.StandardSAEConfig(d_in=D_IN, d_sae=D_SAE)),
        "topk": lambda: sl.TopKSAE(sl.TopKSAEConfig(d_in=D_IN, d_sae=D_SAE, k=K)),
        "topk_rescale_acts_by_decoder_norm": lambda: sl.TopKSAE(
            sl.TopKSAEConfig(d_in=D_IN, d_sae=D_SAE, k=K, rescale_acts_by_decoder_norm=True)),
        "jumprelu": lambda: sl.JumpReLUSAE(sl.JumpReLUSAEConfig(d_in=D_IN, d_sae=D_SAE)),
        "gated": lambda: sl.GatedSAE(sl.GatedSAEConfig(d_in=D_IN, d_sae=D_SAE)),
        "training_standard": lambda: sl.StandardTrainingSAE(sl.StandardTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE)),
        "training_topk_rescale_acts_by_decoder_norm": lambda: sl.TopKTrainingSAE(sl.TopKTrainingSAEConfig(
            d_in=D_IN, d_sae=D_SAE, k=K, rescale_acts_by_decoder_norm=True)),
        "training_jumprelu": lambda: sl.JumpReLUTrainingSAE(sl.JumpReLUTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE)),
        "training_gated": lambda: sl.GatedTrainingSAE(sl.GatedTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE)),
        "training_batchtopk": lambda: sl.BatchTopKTrainingSAE(sl.BatchTopKTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k=K)),
        "training_matryoshka_batchtopk": lambda: sl.MatryoshkaBatchTopKTrainingSAE(sl.MatryoshkaBatchTopKTrainingSAEConfig(
            d_in=D_IN, d_sae=D_SAE, k=K, matryoshka_widths=[D_SAE // 4, D_SAE])),
    }
    cases = {}
    for i, (name, make) in enumerate(made.items()):
        path = work / "saelens" / name
        training = name.startswith("training_")
        case = {"written_by": f"sae_lens {'save_inference_model' if training else 'save_model'}",
                "read_by": "assay load_sae"}
        try:
            sae = make()
            case["saelens_class"] = type(sae).__name__
            randomise(sae, x, seed=100 + i)
            sae.eval()
            (sae.save_inference_model if training else sae.save_model)(str(path))
            case["saelens_architecture"] = json.loads((path / "cfg.json").read_text())["architecture"]
            lens = sl.SAE.load_from_disk(str(path), device="cpu").eval()  # the reference: SAELens's reading
            mine = load_sae(path)
            case["assay_loaded_as"] = mine.architecture
            case.update(compare(lens, mine, xs))
            if not training:  # SAELens's own round trip, for scale (should be exact)
                case["saelens_reload_vs_memory"] = compare(sae, lens, xs)
        except Exception as err:
            case.update({"pass": False, "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()})
        cases[name] = case
    return cases


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "saelens_interop.json"))
    args = ap.parse_args()
    import sae_lens

    torch.manual_seed(0)
    xs = inputs()
    with tempfile.TemporaryDirectory() as tmp:
        forward = assay_to_saelens(Path(tmp), xs)
        reverse = saelens_to_assay(Path(tmp), xs)
    failed = [f"assay->saelens:{k}" for k, v in forward.items() if not v["pass"]] + \
             [f"saelens->assay:{k}" for k, v in reverse.items() if not v["pass"]]
    result = provenance(
        benchmark="saelens_interop", sae_lens_version=sae_lens.__version__, dtype="float32", device="cpu",
        d_in=D_IN, d_sae=D_SAE, k=K, tolerance=f"max abs diff <= {TOLERANCE} x max(1, max |reference|)",
        inputs={k: list(v.shape) for k, v in xs.items()},
        assay_to_saelens=forward, saelens_to_assay=reverse, failed=failed, passed=not failed,
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    for direction, cases in (("assay -> SAELens", forward), ("SAELens -> assay", reverse)):
        for name, c in cases.items():
            worst = max((r.get(f"{w}_max_abs_diff", 0.0) for r in c.get("inputs", {}).values()
                         for w in ("encode", "decode", "forward")), default=float("nan"))
            l0 = min((r["l0_reference"] for r in c.get("inputs", {}).values()), default=float("nan"))
            print(f"{direction:17s} {name:44s} {c.get('saelens_architecture', '?'):9s} "
                  f"{'PASS' if c['pass'] else 'FAIL'}  max|diff| {worst:.2e}  min L0 {l0:.1f}"
                  + (f"  {c['error']}" if "error" in c else ""))
    print(f"wrote {out}: {'all passed' if not failed else 'FAILED: ' + ', '.join(failed)}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
