"""`assay experiment ...`: run a whole study with one command."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(help="Run a whole study: data, activations, SAEs, probes, baselines, report.", no_args_is_help=True)


@app.command("harmful-intent")
def harmful_intent(
    preset: str = typer.Option("quick", help="quick (minutes on a laptop CPU) | full (GDM's scale)."),
    model: str = typer.Option("gemma-3-270m", "--model", "-m", help="HF id, local dir, .gguf, or gemma-3-270m."),
    layer: int = typer.Option(9, "--layer", "-l", help="Residual stream after this block (0-indexed)."),
    dtype: str = typer.Option("float32", help="float32 | bfloat16 for every forward pass."),
    seed: int = typer.Option(0),
    data: Optional[str] = typer.Option(None, help="Benchmark directory or user JSONL/CSV (text,label,split) instead of the preset's."),
    subsample: Optional[int] = typer.Option(None, help="At most N examples per split and class (a smoke run)."),
    out: Optional[Path] = typer.Option(None, help="Output folder (default runs/harmful-intent-<preset>)."),
    no_attention: bool = typer.Option(False, "--no-attention", help="Skip the attention probes."),
    no_baselines: bool = typer.Option(False, "--no-baselines", help="Skip the text baselines."),
    sae_width: Optional[int] = typer.Option(None, help="Override the SAEs' number of latents."),
    sae_tokens: Optional[float] = typer.Option(None, help="Override the pretraining and chat SAEs' training tokens."),
) -> None:
    """Do SAE probes beat a dense linear probe at detecting harmful intent, ID and OOD?

    Builds the benchmark, extracts activations, trains (or reuses) three SAEs (pretraining text,
    chat, pretraining finetuned on chat), trains every probe and baseline, and writes one report.
    Rerunning after an interruption continues from the caches.
    """
    from rich import print as rprint

    from assay.experiment import StudyConfig, run_study

    cfg = StudyConfig.preset_config(preset, model=model, layer=layer, dtype=dtype, seed=seed,
                                    attention_probes=not no_attention, baselines=not no_baselines,
                                    data=data, subsample=subsample)
    if sae_width or sae_tokens:
        sae = cfg.sae.model_copy(update={k: v for k, v in {
            "width": sae_width, "pretrain_tokens": int(sae_tokens) if sae_tokens else None,
            "chat_tokens": int(sae_tokens) if sae_tokens else None}.items() if v})
        cfg = cfg.model_copy(update={"sae": sae})
    out = out or Path("runs") / f"harmful-intent-{preset}"
    report = run_study(cfg, out)
    rprint(f"\n[bold]Findings[/] ({out}/report.md, report.html)")
    for note in report.notes:
        rprint(f"- {note}")
