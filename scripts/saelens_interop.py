"""Check that SAE files cross between assay and SAELens with identical reconstructions.

Run with a Python that has sae-lens installed (sae-lens is NOT an assay dependency):

    python3 -m venv /work/saelens-venv
    /work/saelens-venv/bin/pip install torch==2.13.0 && /work/saelens-venv/bin/pip install sae-lens
    /work/saelens-venv/bin/python scripts/saelens_interop.py

assay is imported from this checkout's src/ (its own dependencies: torch, safetensors, typer, rich).
Exits non-zero on any mismatch.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402
from sae_lens import SAE as LensSAE  # noqa: E402
from sae_lens import __version__ as lens_version  # noqa: E402

from assay.sae import build_sae, load_sae, save_sae  # noqa: E402

D_IN, D_SAE = 32, 128
ASSAY_ARCHS = {"relu": {}, "topk": {"k": 8}, "batchtopk": {"k": 8}, "matryoshka": {"k": 8}, "jumprelu": {},
               "qf_jumprelu": {}, "gated": {}}


def perturbed(sae):
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(0.05 * torch.randn_like(p))
        if hasattr(sae, "threshold"):
            sae.threshold.copy_(torch.rand_like(sae.threshold) * 0.3) if sae.threshold.ndim else sae.threshold.fill_(0.2)
    return sae.eval()


def assay_to_saelens(tmp: Path, x: torch.Tensor) -> list[str]:
    lines = []
    for arch, kw in ASSAY_ARCHS.items():
        sae = perturbed(build_sae(arch, d_in=D_IN, d_sae=D_SAE, **kw))
        path = tmp / f"assay-{arch}"
        save_sae(sae, path, metadata={"hook_name": "blocks.9.hook_resid_post", "model_name": "gemma-3-270m"})
        lens = LensSAE.load_from_disk(str(path))
        with torch.no_grad():
            diff = (lens(x) - sae(x)).abs().max().item()
            acts = (lens.encode(x) - sae.encode(x)).abs().max().item()
        ok = diff < 1e-5 and acts < 1e-5
        lines.append(f"assay {arch:12s} -> sae-lens {type(lens).__name__:14s} max|dx_hat| {diff:.2e} max|dacts| {acts:.2e} {'OK' if ok else 'FAIL'}")
    return lines


def saelens_to_assay(tmp: Path, x: torch.Tensor) -> list[str]:
    from sae_lens import (
        GatedTrainingSAE, GatedTrainingSAEConfig, JumpReLUSAE, JumpReLUSAEConfig, StandardSAE, StandardSAEConfig,
        TopKTrainingSAE, TopKTrainingSAEConfig,
    )

    cases = {
        "standard": StandardSAE(StandardSAEConfig(d_in=D_IN, d_sae=D_SAE)),
        "jumprelu": JumpReLUSAE(JumpReLUSAEConfig(d_in=D_IN, d_sae=D_SAE)),
        "topk (trained with rescale_acts_by_decoder_norm)": TopKTrainingSAE(
            TopKTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k=8, rescale_acts_by_decoder_norm=True)),
        "gated": GatedTrainingSAE(GatedTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE)),
    }
    lines = []
    for name, lens in cases.items():
        with torch.no_grad():
            for p in lens.parameters():
                p.add_(0.05 * torch.randn_like(p))
            if hasattr(lens, "threshold"):
                lens.threshold.copy_(torch.rand_like(lens.threshold) * 0.3)
        lens.eval()
        path = tmp / f"lens-{name.split()[0]}"
        if hasattr(lens, "save_inference_model"):
            lens.save_inference_model(str(path))
        else:
            lens.save_model(str(path))
        ours = load_sae(path)
        with torch.no_grad():
            diff = (lens(x) - ours(x)).abs().max().item()
        ok = diff < 1e-5
        lines.append(f"sae-lens {name:48s} -> assay {type(ours).__name__:12s} max|dx_hat| {diff:.2e} {'OK' if ok else 'FAIL'}")
    return lines


def main() -> int:
    torch.manual_seed(0)
    x = torch.randn(256, D_IN) * 3
    with tempfile.TemporaryDirectory() as d:
        lines = assay_to_saelens(Path(d), x) + saelens_to_assay(Path(d), x)
    print(f"sae-lens {lens_version}, torch {torch.__version__}")
    print("\n".join(lines))
    return 0 if all(line.endswith("OK") for line in lines) else 1


if __name__ == "__main__":
    sys.exit(main())
