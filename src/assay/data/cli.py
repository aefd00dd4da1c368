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
    from assay.data import PRESETS

    if preset not in PRESETS:
        raise typer.BadParameter(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}", param_hint="--preset")
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

    if n < 0:
        raise typer.BadParameter(f"{n}: use 0 or more rows", param_hint="--n")
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
    score_only: bool = typer.Option(False, "--score-only", help="The file is only scored (no train split needed)."),
) -> None:
    """Check a user dataset; exit 1 with the offending rows named if it cannot be used, else say
    what it can be used for. A file with a split column must have a train split (unless
    --score-only); one without is all split 'user', for scoring."""
    from assay.data.user import DatasetError, read_rows, usable_for, validate_rows

    try:
        rows = read_rows(path)
    except DatasetError as err:  # assay.cli.main would say the same; this keeps the sub-app alone clean too
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1)
    has_split = any(str(r.get("split") or "").strip() for r in rows)
    rep = validate_rows(rows, path.name, need_train=has_split and not score_only)
    # Plain echo, not rich: rich wraps long lines at 80 columns and reads [brackets] in texts as markup.
    for w in rep.warnings:
        typer.echo(f"warning: {w}", err=True)
    for e in rep.errors:
        typer.echo(f"error: {e}", err=True)
    if rep.errors:
        if any("row" in e for e in rep.errors + rep.warnings):
            typer.echo("note: rows are counted from 1 at the first data row (a CSV's header line is not a row)", err=True)
        raise typer.Exit(1)
    counts = ", ".join(f"{s}={n}" for s, n in rep.splits.items())
    typer.echo(f"ok {rep.rows} rows ({counts}); usable for {usable_for(rep)}")
