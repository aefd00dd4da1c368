"""`assay models ...`: fetch, convert and describe models."""

from __future__ import annotations

import time

import typer

app = typer.Typer(help="Prepare and inspect models (HF ids, local dirs, GGUF files, the bundled default).", no_args_is_help=True)


@app.command("prepare")
def prepare(
    name: str = typer.Argument("gemma-3-270m", help="HF id, local directory, .gguf file, or 'gemma-3-270m'."),
    dtype: str = typer.Option("float32", help="float32 | bfloat16 | float16."),
) -> None:
    """Load a model once (dequantising a GGUF into the cache) and describe it."""
    from rich import print as rprint

    from assay.models import load

    t0 = time.perf_counter()
    lm = load(name, dtype=dtype)
    rprint(f"[bold]{name}[/]: {type(lm.model).__name__}, {lm.n_layers} blocks, d_model {lm.d_model}, "
           f"{lm.dtype} on {lm.device}; loaded in {time.perf_counter() - t0:.1f} s")
    rprint({k: v for k, v in lm.fingerprint.items()})
