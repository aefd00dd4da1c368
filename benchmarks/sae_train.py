"""Tokens/s of assay's TopK trainer versus SAELens's TopK training step, on the same activations.

Same width, k, batch size and dtype; Adam on both sides. assay runs its full `Trainer` (shuffle
buffer, dead-latent tracking, decoder-norm constraint, AuxK) over an in-memory stream; SAELens
runs `TopKTrainingSAE.training_forward_pass` + backward + Adam step (its core step, without the
activation store around it), with and without its sparse-activation option. Run with a Python that
has sae-lens (not an assay dependency):

    /work/saelens-venv/bin/python benchmarks/sae_train.py [--steps 8] [--width 4096] [--k 32]

Writes benchmarks/results/sae_train.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

from assay.provenance import provenance  # noqa: E402
from assay.sae import TrainConfig, Trainer, build_sae  # noqa: E402


def bench_assay(x: torch.Tensor, args) -> float:
    sae = build_sae("topk", d_in=x.shape[1], d_sae=args.width, k=args.k)
    n_tok = args.steps * args.batch
    cfg = TrainConfig(total_tokens=n_tok, batch_size=args.batch, progress=False, scale_batches=1,
                      buffer_tokens=2 * args.batch, dead_after_tokens=args.batch * 2, log_every=10**9)
    warm = Trainer({"w": build_sae("topk", d_in=x.shape[1], d_sae=args.width, k=args.k)},
                   TrainConfig(**{**cfg.__dict__, "total_tokens": 2 * args.batch}))
    warm.fit([x[: 2 * args.batch]])
    t0 = time.perf_counter()
    Trainer({"topk": sae}, cfg).fit(x[i:i + args.batch] for i in range(0, n_tok + 2 * args.batch, args.batch))
    return n_tok / (time.perf_counter() - t0)


def bench_saelens(x: torch.Tensor, args, sparse: bool) -> float:
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.saes.sae import TrainStepInput

    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=x.shape[1], d_sae=args.width, k=args.k,
                                                use_sparse_activations=sparse))
    opt = torch.optim.Adam(sae.parameters(), lr=3e-4)
    dead = torch.zeros(args.width, dtype=torch.bool)
    dead[: args.width // 8] = True  # AuxK active, as in ours after the dead window

    def step(batch):
        out = sae.training_forward_pass(TrainStepInput(sae_in=batch, coefficients={}, dead_neuron_mask=dead,
                                                       n_training_steps=0, is_logging_step=False))
        opt.zero_grad()
        out.loss.backward()
        opt.step()

    step(x[: args.batch])  # warm-up
    t0 = time.perf_counter()
    for i in range(args.steps):
        step(x[i * args.batch:(i + 1) * args.batch])
    return args.steps * args.batch / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--width", type=int, default=4096)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--d-in", type=int, default=640)  # Gemma 3 270M's d_model
    args = p.parse_args()
    import sae_lens

    torch.manual_seed(0)
    x = torch.randn((args.steps + 4) * args.batch, args.d_in)
    rows = {"assay_topk_trainer": bench_assay(x, args), "saelens_topk_step": bench_saelens(x, args, sparse=False)}
    notes = {}
    try:
        rows["saelens_topk_step_sparse_activations"] = bench_saelens(x, args, sparse=True)
    except Exception as err:  # sae-lens's sparse mode has no backward for some sparse ops on CPU
        notes["saelens_topk_step_sparse_activations"] = f"failed: {type(err).__name__}: {str(err)[:160]}"
    best_lens = max(v for k, v in rows.items() if k.startswith("saelens"))
    result = provenance(
        benchmark="sae_train", dtype="float32", device="cpu", threads=torch.get_num_threads(),
        sae_lens_version=sae_lens.__version__, config=vars(args), activations="random normal, in memory",
        tokens_per_s={k: round(v, 1) for k, v in rows.items()},
        speedup_vs_saelens=round(rows["assay_topk_trainer"] / best_lens, 2), notes=notes,
    )
    out = ROOT / "benchmarks" / "results" / "sae_train.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["tokens_per_s"], indent=2), "speedup", result["speedup_vs_saelens"])


if __name__ == "__main__":
    main()
