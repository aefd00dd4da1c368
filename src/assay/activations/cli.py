"""`assay activations ...`: extract into the cache, list and remove entries."""

from __future__ import annotations

import time
from typing import Optional

import typer

app = typer.Typer(help="Extract residual-stream activations into the disk cache; list and remove entries.", no_args_is_help=True)


def _parse_layers(layers: str) -> list[int]:
    try:
        return [int(x) for x in layers.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"layers must be comma-separated integers, got {layers!r}") from None


@app.command("extract")
def extract_cmd(
    data: str = typer.Argument(..., help="A benchmark preset (quick|full), a benchmark directory, or a JSONL/CSV with a `text` column."),
    model: str = typer.Option("gemma-3-270m", "--model", "-m", help="HF id, local dir, .gguf, or gemma-3-270m."),
    layers: str = typer.Option("9", "--layers", "-l", help="Comma-separated layers (L = output of block L)."),
    split: Optional[str] = typer.Option(None, help="Only this split of the dataset."),
    dtype: str = typer.Option("float32", help="float32 | bfloat16 (the CPU's AMX runs bf16 much faster)."),
    features: Optional[str] = typer.Option(None, help="Comma-separated features, e.g. user.mean,all.max,resp-5."),
    tokens: bool = typer.Option(True, "--tokens/--no-tokens", help="Also store per-token activations."),
    token_budget: Optional[int] = typer.Option(None, help="Padded tokens per forward batch."),
    max_tokens: Optional[int] = typer.Option(None, help="Truncate longer prompts (default: model context)."),
) -> None:
    """Extract activations of a dataset (resumes an interrupted run; reuses a finished one)."""
    from rich import print as rprint

    from assay.activations import DEFAULT_FEATURES, extract
    from assay.activations.features import Feature
    from assay.data import load_or_build
    from assay.models import load
    from assay.models.peek import check_layers
    from assay.runtime import resolve_dtype

    # Everything the arguments alone can show is checked before the data or the model is loaded.
    layer_list = _parse_layers(layers)
    if not layer_list:
        raise typer.BadParameter("name at least one layer", param_hint="--layers")
    feats = list(dict.fromkeys(f.strip() for f in features.split(",") if f.strip())) if features is not None \
        else list(DEFAULT_FEATURES)
    if not feats:
        raise typer.BadParameter("name at least one feature", param_hint="--features")
    for f in feats:
        Feature.parse(f)
    for hint, value in (("--token-budget", token_budget), ("--max-tokens", max_tokens)):
        if value is not None and value < 2:
            raise typer.BadParameter(f"{value} must be at least 2 (BOS and one token)", param_hint=hint)
    resolve_dtype(dtype)
    check_layers(model, layer_list)
    ds = load_or_build(data)
    if split:
        if split not in ds.splits:
            raise typer.BadParameter(f"no split {split!r}; splits: {', '.join(ds.splits)}", param_hint="--split")
        ds = ds.split(split)
    lm = load(model, dtype=dtype)
    t0 = time.perf_counter()
    acts = extract(
        lm, ds.texts, layer_list, dataset_fingerprint=ds.fingerprint, features=feats, store_tokens=tokens,
        token_budget=token_budget, max_tokens=max_tokens,
    )
    rprint(f"{acts} in {time.perf_counter() - t0:.1f} s -> {acts.path}")


@app.command("list")
def list_cmd() -> None:
    """List cache entries."""
    from rich.console import Console
    from rich.table import Table

    from assay.activations import list_entries

    table = Table("key", "model", "layers", "dtype", "examples", "dataset", "complete", "MiB")
    rows = list_entries()
    for row in rows:
        table.add_row(row["key"], row["model"], ",".join(map(str, row["layers"])), row["dtype"],
                      str(row["n_examples"]), row["dataset"],
                      "[red]corrupt manifest[/]" if row["corrupt"] else "yes" if row["complete"] else "[red]no[/]",
                      f"{row['bytes'] / 2**20:.1f}")
    Console().print(table)
    if any(row["corrupt"] for row in rows):
        typer.echo("corrupt entries are rebuilt by the next extraction of the same data; "
                   "`assay activations rm KEY` removes one now")


@app.command("rm")
def rm_cmd(
    keys: list[str] = typer.Argument(None, help="Keys of entries to remove."),
    all_: bool = typer.Option(False, "--all", help="Remove every entry."),
) -> None:
    """Remove cache entries."""
    from assay.activations import list_entries, remove_entry

    targets = [r["key"] for r in list_entries()] if all_ else (keys or [])
    if not targets:
        raise typer.BadParameter("name entries to remove, or pass --all")
    for key in targets:
        typer.echo(f"removed {remove_entry(key)}")
