"""`assay sae train | eval`: train SAEs on a model's residual stream, evaluate saved ones."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from assay import options

app = typer.Typer(help="Sparse autoencoders: train (pretraining or chat data, or finetune), evaluate.",
                  no_args_is_help=True)


def _arch_kwargs(arch: str, k: float, l1: float | None, l0: float | None, omega: float) -> dict:
    from assay.sae.base import sparsity_kwargs

    try:
        return sparsity_kwargs(arch, k, l1, l0, omega)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None


def _check_train_args(archs: list[str], k: float, width: int, layer: int | None, corpus: str, n_tokens: int, epochs: int,
                      batch_size: int, lr: float, resample: float, resample_how: str, max_tokens: int, dtype: str,
                      l1: float | None, l0: float | None, omega: float, finetune_from: Path | None) -> None:
    """Everything checkable without the model, checked before loading it (seconds to minutes)."""
    import math

    from assay.runtime import resolve_dtype
    from assay.sae.base import build_sae
    from assay.sae.corpus import CORPORA

    if not archs:
        raise typer.BadParameter("name at least one architecture", param_hint="--arch")
    if len(set(archs)) < len(archs):
        raise typer.BadParameter(f"architecture listed twice in {','.join(archs)}", param_hint="--arch")
    if corpus not in CORPORA:
        raise typer.BadParameter(f"{corpus!r}; choose one of {', '.join(CORPORA)}", param_hint="--corpus")
    for name, value, ok in (("--layer", layer, layer is None or layer >= 0), ("--tokens", n_tokens, n_tokens > 0),
                            ("--epochs", epochs, epochs >= 1), ("--batch-size", batch_size, batch_size >= 1),
                            ("--lr", lr, math.isfinite(lr) and lr > 0), ("--max-tokens", max_tokens, max_tokens >= 2),
                            ("--resample", resample, 0 <= resample < 1)):
        if not ok:
            raise typer.BadParameter(f"{value!r} is out of range", param_hint=name)
    if n_tokens * epochs < batch_size:
        raise typer.BadParameter(f"{n_tokens * epochs} training tokens make less than one batch of {batch_size}",
                                 param_hint="--tokens")
    if resample_how not in ("random", "least_used"):
        raise typer.BadParameter(f"{resample_how!r}; choose random or least_used", param_hint="--resample-how")
    if dtype != "auto":
        resolve_dtype(dtype)
    if finetune_from is not None:
        if len(archs) > 1:
            raise typer.BadParameter("finetune one SAE at a time", param_hint="--arch")
        if not (finetune_from / "cfg.json").is_file():
            raise typer.BadParameter(f"{finetune_from} is not a saved SAE (no cfg.json)", param_hint="--finetune-from")
        return
    for a in archs:  # builds a throwaway SAE at d_in 1: checks the name, width, k and coefficients
        build_sae(a, d_in=1, d_sae=width, **_arch_kwargs(a, k, l1, l0, omega))


@app.command("train")
def train(
    arch: str = typer.Option("topk", help="relu|topk|batchtopk|gated|jumprelu|qf_jumprelu|matryoshka; "
                                          "comma-separated trains several on one pass over the data"),
    k: float = typer.Option(32, help="active latents (TopK; average for BatchTopK/Matryoshka)"),
    width: int = typer.Option(4096, help="number of latents (d_sae)"),
    layer: Optional[int] = options.LAYER,
    corpus: str = typer.Option("pretrain", help="pretrain (Wikipedia and a dictionary, half each) | wiki | chat | "
                                                "chat-user"),
    tokens: float = typer.Option(2e6, help="unique training tokens (extracted once, then cached)"),
    epochs: int = typer.Option(1, help="passes over those tokens (extraction costs far more than training)"),
    model: str = options.MODEL,
    finetune_from: Optional[Path] = typer.Option(None, help="SAE directory to finetune (e.g. on chat data)"),
    resample: float = typer.Option(0.0, help="fraction of latents to re-initialise before finetuning"),
    resample_how: str = typer.Option("least_used", help="random | least_used"),
    out: Optional[Path] = typer.Option(None, help="output directory (default: cache/sae/<run name>)"),
    batch_size: int = typer.Option(4096),
    lr: float = typer.Option(3e-4),
    l1: Optional[float] = typer.Option(None, help="L1 coefficient (relu, gated)"),
    l0_coeff: Optional[float] = typer.Option(None, help="L0 / QF coefficient lambda (jumprelu, qf_jumprelu)"),
    omega: float = typer.Option(0.1, help="omega_0 of the quadratic-frequency penalty"),
    sparsity_warmup: int = typer.Option(0, help="steps of linear warm-up of the sparsity coefficient"),
    max_tokens: int = typer.Option(1024, help="tokens per document at most"),
    dtype: str = options.DTYPE,
    device: Optional[str] = typer.Option(None),
    device_map: Optional[str] = options.DEVICE_MAP,
    seed: int = options.SEED,
    resume: bool = typer.Option(False, help="continue from OUT/checkpoint.pt"),
    checkpoint_every: int = typer.Option(200, min=1, help="steps between checkpoints (resumable with --resume)"),
    compile_: bool = typer.Option(False, "--compile", help="extract the corpus with the model's blocks compiled, "
                                  "as `assay activations extract --compile`: worth it on a GPU for large corpora"),
) -> None:
    """Train SAEs on a model's residual-stream activations.

    Under `torchrun --nproc-per-node N -m assay sae train ...` the ranks extract the corpus together
    and train with DDP (the batch size is the global batch); rank 0 writes the SAEs."""
    import torch

    from assay.distributed import is_main, join, world_size
    from assay.models import load
    from assay.models.loading import check_layer
    from assay.runtime import cache_dir
    from assay.sae.checks import check_sae_fits
    from assay.sae.corpus import activation_stream
    from assay.sae.recipe import evaluate_sae, initial_saes, sae_metadata, train_config, train_saes

    archs = [a.strip() for a in arch.split(",") if a.strip()]
    n_tokens = int(tokens)
    _check_train_args(archs, k, width, layer, corpus, n_tokens, epochs, batch_size, lr, resample, resample_how,
                      max_tokens, dtype, l1, l0_coeff, omega, finetune_from)
    layer = options.resolve_layer(model, layer)
    run = f"{Path(model).name}-L{layer}-{corpus}-{'+'.join(archs)}-w{width}-s{seed}" + ("-ft" if finetune_from else "")
    out = out or cache_dir() / "sae" / run
    if (out / "checkpoint.pt").exists() and not resume:
        raise typer.BadParameter(f"{out} holds an interrupted run (checkpoint.pt): pass --resume to continue it, "
                                 "or choose another --out", param_hint="--out")
    join()  # under torchrun: DDP across the ranks
    if batch_size % world_size():
        raise typer.BadParameter(f"{batch_size} is not a multiple of the {world_size()} ranks: each rank takes an "
                                 "equal share of every batch", param_hint="--batch-size")
    device_map = options.check_device_map(device_map)
    options.check_compile(compile_, device_map, device)
    lm = load(model, dtype=options.resolve_dtype_choice(dtype), device=device, device_map=device_map)
    if layer is None:  # a model whose config was not local: its middle block, now that it is loaded
        layer = lm.n_layers // 2
        out = out if out != cache_dir() / "sae" / run else cache_dir() / "sae" / run.replace("-LNone-", f"-L{layer}-")
    check_layer(layer, lm.n_layers)
    if is_main():
        typer.echo(f"model {lm.name}: {lm.n_layers} layers, d_model {lm.d_model}; writing to {out}")

    def stream():
        return activation_stream(lm, corpus, layer, n_tokens, seed=seed, max_tokens=max_tokens, epochs=epochs,
                                 compile=compile_)

    def least_used(sae):  # firing frequencies on the first 64k tokens, to re-initialise the rarest
        sample = []
        for chunk in stream():
            sample.append(chunk.to(lm.device))
            if sum(len(c) for c in sample) >= 65536:
                break
        return evaluate_sae(sae, sample)["freq"]

    saes = initial_saes(lm.d_model, archs, width, seed, {a: _arch_kwargs(a, k, l1, l0_coeff, omega) for a in archs}
                        if not finetune_from else {}, finetune_from=finetune_from, resample=resample,
                        resample_how=resample_how, freq=least_used if resample_how == "least_used" else None,
                        check=lambda sae: check_sae_fits(sae, lm.d_model, layer, str(finetune_from)),
                        device=str(lm.device))
    if finetune_from and resample > 0:
        typer.echo(f"re-initialised {int(round(resample * next(iter(saes.values())).cfg.d_sae))} latents ({resample_how})")
    meta = sae_metadata(lm, layer, corpus, max_tokens, finetuned_from=str(finetune_from) if finetune_from else None,
                        resampled_fraction=resample, **({"activations_compiled": True} if compile_ else {}))
    cfg = train_config(n_tokens, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, lm_dtype=lm.dtype,
                       warmup=100, checkpoint_every=checkpoint_every, progress=True,
                       sparsity_warmup_steps=sparsity_warmup)
    torch.manual_seed(seed)
    trainer = train_saes(saes, stream(), out, cfg, meta, device=lm.device, resume=resume)
    if not is_main():
        return
    if trainer.state.step < cfg.total_steps:
        typer.secho(f"warning: SHORT RUN, {trainer.state.step} of {cfg.total_steps} steps: the corpus ran out "
                    f"({trainer.state.tokens_seen} tokens trained on); training.json says complete: false",
                    err=True, fg="yellow")
    for name in saes:
        last = next((h[name] for h in reversed(trainer.state.history) if name in h), {})
        typer.echo(f"{name}: L0 {last.get('l0', float('nan')):.1f}  FVU {last.get('fvu', float('nan')):.3f}  "
                   f"dead {last.get('dead', 0)}  -> {out / name if len(saes) > 1 else out}")


@app.command("eval")
def evaluate(
    dirs: list[Path] = typer.Argument(..., help="SAE directories (several: also a reconstruction-vs-L0 plot)"),
    tokens: float = typer.Option(2e5, help="held-out tokens for L0/FVU/frequencies"),
    ce_texts: int = typer.Option(32, help="held-out texts for CE loss recovered (0 = skip)"),
    corpus: Optional[str] = typer.Option(None, help="evaluation corpus (default: the training corpus)"),
    model: Optional[str] = typer.Option(None, help="model (default: the SAE's model_name)"),
    device: Optional[str] = typer.Option(None),
    seed: int = typer.Option(0),
) -> None:
    """L0, FVU, MSE, CE loss recovered, dead/dense latents and plots; writes DIR/eval.json."""
    from assay.errors import ConfigMismatchError
    from assay.fileio import write_json
    from assay.models import load
    from assay.models.peek import check_layers
    from assay.provenance import provenance
    from assay.sae.checks import check_sae_fits, sae_layer
    from assay.sae.corpus import CORPORA, activation_stream, held_out_texts
    from assay.sae.io import load_sae
    from assay.sae.metrics import plot_sweep, text_batches
    from assay.sae.recipe import evaluate_saes

    if tokens < 1 or ce_texts < 0:
        raise typer.BadParameter(f"--tokens {tokens} must be >= 1 and --ce-texts {ce_texts} >= 0")
    points, lms = [], {}
    for d in dirs:
        sae = load_sae(d)
        meta = sae.metadata
        name = model or meta.get("model_name") or "gemma-3-270m"
        layer = sae_layer(sae)
        if layer is None:
            raise ConfigMismatchError(f"{d}/cfg.json names no layer (metadata.assay_layer or hook_name "
                                      "'blocks.L.hook_resid_post'); add one")
        check_layers(name, [layer])
        corp = corpus or meta.get("corpus") or "wiki"
        if corp not in CORPORA:
            raise typer.BadParameter(f"{corp!r}; choose one of {', '.join(CORPORA)}", param_hint="--corpus")
        lm = lms.get(name) or lms.setdefault(name, load(name, device=device))
        check_sae_fits(sae, lm.d_model, layer, str(d))
        sae = sae.to(lm.device)
        texts = held_out_texts(corp, lm.tokenizer, int(tokens), 256, seed=seed)
        held = list(activation_stream(lm, corp, layer, int(tokens), texts=texts, seed=seed, max_tokens=256))
        ce_batches = None
        if ce_texts:
            ce_src = held_out_texts(corp, lm.tokenizer, ce_texts * 129, 128, seed=seed, skip=len(texts))[:ce_texts]
            ce_batches = text_batches(lm.tokenizer, ce_src, 128, 8, lm.device)
        stats = evaluate_saes({"sae": sae}, [c.to(lm.device) for c in held],
                              {"sae": (d / "freq_hist.png", f"{sae.architecture} L{layer}")}, lm=lm, layer=layer,
                              ce_batches=ce_batches)["sae"]
        write_json(d / "eval.json", provenance(sae=str(d), layer=layer, corpus=corp, **stats))
        typer.echo(f"{d}: " + "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in stats.items()))
        points.append({"arch": sae.architecture, **stats})
    if len(dirs) > 1:
        typer.echo(f"sweep plot: {plot_sweep(points, dirs[0].parent / 'sweep_fvu_vs_l0.png')}")
