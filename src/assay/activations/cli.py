"""`assay activations ...`: extract into the cache, list and remove entries."""

from __future__ import annotations

import time
from typing import Optional

import typer

from assay import options

app = typer.Typer(help="Extract residual-stream activations into the disk cache; list and remove entries.", no_args_is_help=True)


@app.command("extract")
def extract_cmd(
    data: str = options.DATA,
    model: str = options.MODEL,
    layer: Optional[list[int]] = typer.Option(None, "--layer", "-l", help="Residual stream after this block "
                                              "(0-indexed); repeat for several; default: the middle block."),
    split: Optional[str] = typer.Option(None, help="Only this split of the dataset."),
    dtype: str = options.DTYPE,
    aggregation: Optional[list[str]] = typer.Option(None, "--aggregation", "-a", help="An aggregation to pool and "
                                                    "store (repeat for several); default: all.mean, all.max, "
                                                    "all.last, user.*, last8.mean, resp-5."),
    tokens: bool = typer.Option(True, "--tokens/--no-tokens", help="Also store per-token activations."),
    token_budget: Optional[int] = typer.Option(None, help="Padded tokens per forward batch."),
    max_tokens: Optional[int] = typer.Option(None, help="Truncate longer prompts (default: model context)."),
    shard_tokens: int = typer.Option(1 << 15, "--shard-tokens", min=64, help="Real tokens per cache shard: the "
                                     "unit an interrupted run resumes from and parts split the work by."),
    shard: Optional[str] = typer.Option(None, "--shard", help="Extract only part i of n (`i/n`, 0-based), for n "
                                        "independent processes such as a Slurm array; under torchrun each rank "
                                        "takes its part by itself. The last part to finish writes the manifest."),
    device_map: Optional[str] = options.DEVICE_MAP,
    reuse: bool = typer.Option(True, "--reuse/--no-reuse", help="Read prompts another cache entry already holds "
                               "(same model, dtype and tokens; at least these layers and aggregations) from there."),
    compile_: bool = typer.Option(False, "--compile", help="Run the blocks through torch.compile: several "
                                  "times the tokens/s in bf16 on a GPU after a first pass of seconds, so worth it "
                                  "for large extractions (docs/scale.md); less on a CPU, which needs a C++ compiler "
                                  "for it. Its numbers go to their own cache entry."),
) -> None:
    """Extract activations of a dataset (resumes an interrupted run; reuses a finished one).

    Across processes: `torchrun --nproc-per-node N -m assay activations extract ...`, or the same
    command N times with `--shard i/N`."""
    from rich import print as rprint

    from assay.activations import DEFAULT_AGGREGATIONS, extract
    from assay.activations.aggregation import Aggregation
    from assay.data import load_or_build
    from assay.models import load

    # Everything the arguments alone can show is checked before the data or the model is loaded.
    feats = list(dict.fromkeys(aggregation or DEFAULT_AGGREGATIONS))
    for f in feats:
        Aggregation.parse(f)
    for hint, value in (("--token-budget", token_budget), ("--max-tokens", max_tokens)):
        if value is not None and value < 2:
            raise typer.BadParameter(f"{value} must be at least 2 (BOS and one token)", param_hint=hint)
    from assay.distributed import launched_part, local_device, parse_part

    device_map = options.check_device_map(device_map)

    launched = launched_part()
    part = parse_part(shard) if shard is not None else launched
    if shard is not None and launched is not None:
        raise typer.BadParameter("torchrun already gives each rank its part; drop --shard or run without torchrun",
                                 param_hint="--shard")
    layer_list = [options.resolve_layer(model, x) for x in dict.fromkeys(layer or [None])]
    dtype = options.resolve_dtype_choice(dtype)
    options.check_compile(compile_, device_map)
    ds = load_or_build(data)
    if split:
        if split not in ds.splits:
            raise typer.BadParameter(f"no split {split!r}; splits: {', '.join(ds.splits)}", param_hint="--split")
        ds = ds.split(split)
    lm = load(model, dtype=dtype, device=None if device_map else local_device(), device_map=device_map)
    layer_list = [lm.n_layers // 2 if x is None else x for x in layer_list]
    t0 = time.perf_counter()
    acts = extract(
        lm, ds.texts, layer_list, dataset_fingerprint=ds.fingerprint, aggregations=feats, store_tokens=tokens,
        token_budget=token_budget, max_tokens=max_tokens, shard_tokens=shard_tokens, part=part,
        progress=part is None or part[0] == 0,  # one bar per job, not one per rank
        reuse=reuse, compile=compile_,
    )
    if acts is None:
        rprint(f"part {part[0]}/{part[1]} finished in {time.perf_counter() - t0:.1f} s; the other parts' shards are "
               "not all there yet: the last part to finish writes the manifest")
    else:
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
                      "[red]corrupt manifest[/]" if row["corrupt"] else "yes" if row["complete"]
                      else f"[red]no[/] ({row['shards_done']}/{row['shards']} shards)",
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

    from assay.activations.reuse import dependents
    from assay.activations.store import activations_root

    targets = [r["key"] for r in list_entries()] if all_ else (keys or [])
    if not targets:
        raise typer.BadParameter("name entries to remove, or pass --all")
    for key in targets:
        typer.echo(f"removed {remove_entry(key)}")
        left = [d for d in dependents(key, activations_root()) if d not in targets]
        if left:
            typer.echo(f"  {len(left)} other entries reused its prompts ({', '.join(left)}); each extracts them "
                       "again the next time it is asked for")
