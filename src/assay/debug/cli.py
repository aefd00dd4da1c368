"""`assay debug ...`: find spurious cues in a dataset through the SAE latents a sparse probe uses."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from assay import options

app = typer.Typer(help="Dataset debugging: the SAE latents a sparse probe relies on, and the surface cues behind them.",
                  no_args_is_help=True)


@app.command("latents")
def latents_cmd(
    sae_dir: Path = typer.Argument(..., help="SAE directory (assay or SAELens format)."),
    data: str = options.DATA,
    model: str = options.MODEL,
    layer: Optional[int] = options.LAYER,
    dtype: str = options.DTYPE,
    k: int = options.K,
    select: str = options.SELECT,
    aggregation: Optional[str] = options.AGGREGATION,
    split: str = typer.Option("train", help="Split the probe is fitted and the latents are explained on."),
    top: int = typer.Option(5, help="Top tokens and examples shown per latent."),
    out: Optional[Path] = typer.Option(None, help="Write the full report as JSON here."),
) -> None:
    """Fit a k-sparse probe on SAE latents, then explain and flag each latent it uses."""
    import numpy as np
    from rich.console import Console
    from rich.table import Table

    from assay.activations import extract
    from assay.data import load_or_build
    from assay.debug import explain_latents, rank_probe_latents
    from assay.fileio import write_json
    from assay.models import load
    from assay.probes import InputSpec, Inputs, make_probe
    from assay.probes.sparse import SELECTORS
    from assay.sae import load_sae

    from assay.activations.aggregation import Aggregation
    from assay.sae.checks import check_sae_fits

    if k < 1 or top < 1:
        raise typer.BadParameter(f"--k {k} / --top {top}: use at least 1")
    if select not in SELECTORS:
        raise typer.BadParameter(f"{select!r}: use mean_diff or l1", param_hint="--select")
    aggregation = str(Aggregation.parse(aggregation or "all.max"))
    sae = load_sae(sae_dir)  # a broken SAE fails before the model loads
    layer = options.resolve_layer(model, layer)
    ds = load_or_build(data)
    if split not in ds.splits:
        raise typer.BadParameter(f"no split {split!r}; splits: {ds.splits}", param_hint="--split")
    lm = load(model, dtype=options.resolve_dtype_choice(dtype))
    layer = lm.n_layers // 2 if layer is None else layer
    check_sae_fits(sae, lm.d_model, layer, str(sae_dir))
    sae = sae.to(lm.device)
    acts = extract(lm, ds.texts, [layer], dataset_fingerprint=ds.fingerprint, store_tokens=True)
    idx = np.flatnonzero(np.array([e.split for e in ds.examples]) == split)
    if not len(idx):
        raise typer.BadParameter(f"split {split!r} is empty; splits: {ds.splits}")
    y = ds.labels
    spec = InputSpec.for_method("k-sparse", aggregation=aggregation, layer=layer, model=lm.name, sae=str(sae_dir))
    Z = Inputs(acts, layer=layer, aggregations=[aggregation]).read(spec, sae)[0][idx]
    probe = make_probe("k-sparse", k=k, select=select).fit(Z, y[idx])
    chosen = [int(i) for i in probe.meta["latents"]]
    ranked = rank_probe_latents(Z, chosen, probe.head.direction().cpu().numpy())
    reports = explain_latents(acts, sae, layer, ranked, Z, ds.texts, y, lm.tokenizer, indices=idx.tolist(),
                              top_n=top)
    table = Table("rank", "latent", "weight", "mean harmful", "mean benign", "top tokens", "flags",
                  title=f"{k}-sparse probe ({select}, {aggregation}) on {split}")
    for r in reports:
        toks = " ".join(repr(t["token"]) for t in r.top_tokens[:top])
        table.add_row(str(r.rank), str(r.latent), f"{r.weight:+.3f}", f"{r.mean_harmful:.2f}", f"{r.mean_benign:.2f}",
                      toks, "[red]" + ", ".join(r.flags) + "[/]" if r.flags else "")
    Console().print(table)
    if out:
        write_json(out, [r.as_dict() for r in reports])
        typer.echo(f"wrote {out}")
