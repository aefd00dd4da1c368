"""What holds the study's SAEs back: one TopK SAE per recipe variant, trained on the same cached
Wikipedia activations at the study's layer, each with its held-out curve (FVU on held-out
Wikipedia tokens and on the full benchmark's validation tokens, delta LM loss on held-out
Wikipedia documents) at points during training. Compare a change on the curve, not on one point.

    .venv/bin/python benchmarks/sae_recipe.py [--only NAME,...] [--layer 14] [--dtype bfloat16]
    .venv/bin/python benchmarks/sae_recipe.py --render   # the figure from the results

The corpus is the first 1M tokens of the seeded Wikipedia order (512 tokens per document at most;
about 13 minutes to extract in bfloat16 on a 2-core AVX512-BF16 CPU, then cached), less its last
300 documents, whose tokens are the held-out Wikipedia FVU; the delta LM loss is measured on 32
documents from the other end of the order (never trained on). Each variant appends its result to
`benchmarks/results/sae_recipe.json` (a rerun of one variant replaces its entry), with the commit and
whether the tree was clean.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import torch
from checks import check_args  # benchmarks/checks.py

OUT = Path(__file__).parent / "results" / "sae_recipe.json"
FIGURE = Path(__file__).parent / "results" / "sae_recipe.png"

# name -> (settings, what it tests). The full preset's recipe before this study: batches of 4,096
# at lr 3e-4, k=32 (e0, run here for 4M token-steps; the preset itself ran 1M).
VARIANTS: dict[str, tuple[dict, str]] = {
    "e0-b4096-lr3e-4": ({"batch": 4096, "lr": 3e-4}, "the old full-preset recipe, run longer"),
    "e1-b1024-lr3e-4": ({"batch": 1024, "lr": 3e-4}, "four times the steps per token"),
    "e2-b1024-lr1e-3": ({"batch": 1024, "lr": 1e-3}, "and a larger learning rate"),
    "e3-b1024-lr1e-3-8M": ({"batch": 1024, "lr": 1e-3, "tokens": 8e6}, "twice the token-steps (8 epochs)"),
    "e5-k64-b1024-lr1e-3": ({"batch": 1024, "lr": 1e-3, "k": 64}, "L0 64 instead of 32"),
    # against e5, one change each
    "e6-k64-no-auxk": ({"batch": 1024, "lr": 1e-3, "k": 64, "auxk": 0.0}, "without AuxK"),
    "e7-k64-no-decay": ({"batch": 1024, "lr": 1e-3, "k": 64, "decay": 0.0}, "without the final learning-rate decay"),
    "e8-k64-w8192": ({"batch": 1024, "lr": 1e-3, "k": 64, "width": 8192}, "twice the latents"),
    "e9-k64-quarter-corpus": ({"batch": 1024, "lr": 1e-3, "k": 64, "unique_fraction": 0.25},
                              "a quarter of the unique tokens, four times the epochs (overfitting?)"),
    "e10-k64-standardised": ({"batch": 1024, "lr": 1e-3, "k": 64, "standardise": True},
                             "every dimension scaled to unit variance (the massive dimensions no longer dominate "
                             "the loss), undone after decoding"),
}
DEFAULTS = {"width": 4096, "k": 32, "batch": 4096, "lr": 3e-4, "warmup": 100, "decay": 0.2, "tokens": 4e6,
            "eval_every": 1e6, "auxk": 1 / 32, "unique_fraction": 1.0, "standardise": False}


class Standardised(torch.nn.Module):
    """An SAE trained on per-dimension standardised activations, as a function of raw ones."""

    def __init__(self, sae, mean: torch.Tensor, sd: torch.Tensor):
        super().__init__()
        self.sae, self.mean, self.sd, self.W_enc = sae, mean, sd, sae.W_enc

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.sae.encode((x.float() - self.mean) / self.sd)

    def decode(self, acts: torch.Tensor) -> torch.Tensor:
        return self.sae.decode(acts) * self.sd + self.mean

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


def corpus(lm, layer: int):
    from assay.activations import extract
    from assay.fileio import sha256_json
    from assay.sae.corpus import training_texts

    texts = training_texts("wiki", lm, 1_000_000, 512, 0)
    return extract(lm, texts, [layer], dataset_fingerprint=sha256_json(["wiki", texts]), aggregations=("all.mean",),
                   store_tokens=True, chat=False, max_tokens=512, progress=True, reuse=False)


def benchmark_val_tokens(dtype: str) -> list[torch.Tensor]:
    """The full benchmark's validation tokens at the study's layer (what the quality bar's FVU reads)."""
    from assay.experiment.config import StudyConfig
    from assay.experiment.study import Study

    cfg = StudyConfig.preset_config("full", layer_sweep_from="docs/results/layers-full-bf16/layer_sweep.json",
                                    dtype=dtype)
    study = Study(cfg, "runs/sae-recipe-study", progress=False)
    study.prepare()
    return list(study.benchmark_activations(study.data.idx["val"]).iter_tokens(study.cfg.layer, 8192, mask="all"))


def run(name: str, settings: dict, lm, acts, layer: int, bench: list[torch.Tensor]) -> dict:
    from assay.sae.base import build_sae
    from assay.sae.corpus import held_out_texts
    from assay.sae.metrics import HeldOutLMLoss, reconstruction_stats, text_batches
    from assay.sae.trainer import TrainConfig, Trainer

    a = {**DEFAULTS, **settings}
    n = acts.n
    train = list(range(int((n - 300) * a["unique_fraction"])))
    held = list(acts.iter_tokens(layer, 8192, mask="all", indices=list(range(n - 300, n))))
    lm_loss = HeldOutLMLoss(lm, layer, list(text_batches(lm.tokenizer, held_out_texts("wiki", lm, 32 * 129, 128)[:32],
                                                         128, 8, lm.device)))

    mean = sd = None
    if a["standardise"]:  # per-dimension moments of a sample of the training tokens
        sample = torch.cat(list(itertools.islice(acts.iter_tokens(layer, 8192, mask="all", shuffle_seed=0,
                                                                  indices=train), 8))).double()
        mean, sd = sample.mean(0).float(), sample.std(0).float().clamp_min(1e-6)

    def evaluate(saes):
        sae = saes["sae"] if mean is None else Standardised(saes["sae"], mean, sd)
        wiki, val = reconstruction_stats(sae, held), reconstruction_stats(sae, bench)
        return {"sae": {"fvu": wiki["fvu"], "l0": wiki["l0"], "dead": wiki["dead"], "dense": wiki["dense"],
                        "delta_lm_loss": lm_loss.delta(sae), "bench_fvu": val["fvu"], "bench_dense": val["dense"]}}

    def stream():
        for epoch in itertools.count():
            for chunk in acts.iter_tokens(layer, 8192, mask="all", shuffle_seed=epoch, indices=train):
                yield chunk if mean is None else (chunk - mean) / sd

    sae = build_sae("topk", d_in=lm.d_model, d_sae=a["width"], seed=0, k=a["k"], aux_k_coefficient=a["auxk"])
    cfg = TrainConfig(total_tokens=int(a["tokens"]), batch_size=a["batch"], lr=a["lr"], lr_warmup_steps=a["warmup"],
                      lr_decay_fraction=a["decay"], eval_every_tokens=int(a["eval_every"]), progress=False,
                      search_dtype="bfloat16" if lm.dtype == torch.bfloat16 else None)
    t0 = time.perf_counter()
    trainer = Trainer({"sae": sae}, cfg, None, evaluate=evaluate)
    trainer.fit(stream())
    return {"settings": a, "what": VARIANTS[name][1], "seconds": round(time.perf_counter() - t0, 1),
            "unique_tokens": int(acts.token_counts()[train].sum()),
            "curve": [{"tokens": p["tokens"], **p["sae"]} for p in trainer.state.curve]}


def render() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = json.loads(OUT.read_text())["variants"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for name, r in results.items():
        pts = r["curve"]
        for ax, key in zip(axes, ("bench_fvu", "fvu", "delta_lm_loss")):
            xy = [(p["tokens"] / 1e6, p[key]) for p in pts if p.get(key) is not None]
            ax.plot([x for x, _ in xy], [y for _, y in xy], "o-", ms=3, label=name)
    for ax, key, bar in zip(axes, ("FVU, benchmark validation tokens", "FVU, held-out Wikipedia tokens",
                                   "delta LM loss (nats/token), held-out Wikipedia"), (0.2, None, 0.5)):
        ax.set_xlabel("training token-steps (millions)")
        ax.set_ylabel(key)
        ax.set_yscale("log")
        if bar:
            ax.axhline(bar, color="k", ls="--", lw=1)
    axes[0].legend(fontsize=7)
    fig.suptitle("TopK SAEs at layer 14 of Gemma 3 270M, one per recipe variant (dashed: the quality bar)", fontsize=10)
    fig.tight_layout()
    fig.savefig(FIGURE, dpi=120)
    print(f"wrote {FIGURE}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default=",".join(VARIANTS), help="comma-separated variants: " + ", ".join(VARIANTS))
    ap.add_argument("--layer", type=int, default=14)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--render", action="store_true", help="draw the figure from the results and stop")
    args = ap.parse_args()
    if args.render:
        if not OUT.exists():
            ap.error(f"no results at {OUT}: measure first")
        return render()
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or not names:
        ap.error(f"--only: unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    check_args(ap, layer=args.layer, dtypes=args.dtype, auto_ok=False)

    from assay.models import load
    from assay.provenance import provenance

    lm = load("gemma-3-270m", dtype=args.dtype)
    acts = corpus(lm, args.layer)
    bench = benchmark_val_tokens(args.dtype)
    saved = json.loads(OUT.read_text()) if OUT.exists() else {"variants": {}}
    for name in names:
        print(f"{name}: {VARIANTS[name][1]}", flush=True)
        saved["variants"][name] = {**run(name, VARIANTS[name][0], lm, acts, args.layer, bench),
                                   "provenance": provenance(layer=args.layer, dtype=args.dtype)}
        OUT.write_text(json.dumps(saved, indent=1))
    render()


if __name__ == "__main__":
    main()
