"""`assay data`: build the harmful-intent benchmark, show a dataset, validate a user dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(help="Harmful-intent benchmark data: build, show, validate.", no_args_is_help=True)


@app.command()
def build(
    preset: str = typer.Option("quick", help="quick (a few hundred rows per split) or full (GDM's scale)."),
    seed: int = typer.Option(0, help="Seed: split assignment and sampling."),
    out: Optional[Path] = typer.Option(None, help="Output directory (default: cache_dir()/data/harmful-intent-{preset}-s{seed})."),
    force: bool = typer.Option(False, help="Rebuild even if a complete build exists."),
) -> None:
    """Build the benchmark: {split}.jsonl, card.md, manifest.json."""
    from rich.console import Console

    from assay.data.benchmark import build_benchmark

    console = Console()
    with console.status(f"building {preset} (seed {seed})..."):
        ds = build_benchmark(preset, seed, out, force=force)
    console.print(f"[green]built[/green] {ds!r}\n  at {ds.path}\n  fingerprint {ds.fingerprint}")
    strong = ds.meta.get("strong_cues", {})
    flagged = [f"{s}:{c}={a:.3f}" for s, cues in strong.items() for c, a in cues.items()]
    if flagged:
        console.print(f"[yellow]surface cues with AUROC strength >= 0.7:[/yellow] {', '.join(flagged)}")


@app.command()
def show(
    path: Optional[Path] = typer.Argument(None, help="Benchmark directory or user JSONL/CSV (default: quick, seed 0)."),
    split: Optional[str] = typer.Option(None, help="Only this split."),
    n: int = typer.Option(5, help="How many example rows to print."),
    seed: int = typer.Option(0, help="Row sampling seed."),
) -> None:
    """Counts per split, class and group, and a few rows."""
    import random
    from collections import Counter

    from rich.console import Console
    from rich.table import Table

    from assay.data.benchmark import build_benchmark, default_out_dir
    from assay.data.dataset import load_dataset

    ds = load_dataset(path) if path else build_benchmark("quick", 0, default_out_dir("quick", 0))
    if split:
        ds = ds.split(split)
    console = Console()
    console.print(f"{ds!r}\n{ds.path}")
    counts = Table(title="rows per split x group x label")
    for col in ("split", "group", "harmful", "benign"):
        counts.add_column(col, justify="right" if col in ("harmful", "benign") else "left")
    c = Counter((e.split, e.group, e.label) for e in ds)
    for s, g in sorted({(s, g) for s, g, _ in c}, key=lambda k: (ds.splits.index(k[0]), k[1])):
        counts.add_row(s, g, str(c[(s, g, 1)]), str(c[(s, g, 0)]))
    console.print(counts)
    rows = Table(title=f"{n} random rows", show_lines=True)
    for col in ("split", "label", "source", "family", "transformation", "text"):
        rows.add_column(col, overflow="fold")
    for e in random.Random(seed).sample(ds.examples, min(n, len(ds))):
        text = e.text if len(e.text) < 300 else e.text[:300] + " ..."
        rows.add_row(e.split, str(e.label), e.source, e.family, e.transformation, text)
    console.print(rows)


@app.command()
def validate(
    path: Path = typer.Argument(..., help="User dataset: .jsonl or .csv with text,label[,split,group,cluster]."),
) -> None:
    """Check a user dataset; exit 1 with the offending rows named if it cannot be used."""
    from rich.console import Console

    from assay.data.user import DatasetError, read_rows, validate_rows

    console = Console()
    try:
        rep = validate_rows(read_rows(path), path.name)
    except DatasetError as err:
        console.print(f"[red]error[/red] {err}")
        raise typer.Exit(1)
    for w in rep.warnings:
        console.print(f"[yellow]warning[/yellow] {w}")
    for e in rep.errors:
        console.print(f"[red]error[/red] {e}")
    if rep.errors:
        raise typer.Exit(1)
    console.print(f"[green]ok[/green] {rep.rows} rows")
