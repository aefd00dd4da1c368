"""`assay experiment ...`: run a whole study with one command."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from assay import options

app = typer.Typer(help="Run a whole study: data, activations, SAEs, probes, baselines, report.", no_args_is_help=True)


@app.command("harmful-intent")
def harmful_intent(
    preset: str = typer.Option("quick", help="demo (what make demo runs: the quick benchmark subsampled, small SAEs) | "
                               "quick (minutes on a laptop CPU) | full (GDM's scale)."),
    model: str = options.MODEL,
    layer: Optional[int] = options.STUDY_LAYER,
    layer_sweep: bool = typer.Option(True, "--layer-sweep/--no-layer-sweep", help="Fit the dense probe at every layer "
                                     "first (and, without --layer, use the layer best on validation)."),
    layer_stride: Optional[int] = typer.Option(None, "--layer-stride", min=1, help="Sweep every N-th block (and always "
                                               "the last, the middle one and a given --layer; default: the preset's)."),
    layer_sweep_from: Optional[Path] = typer.Option(
        None, "--layer-sweep-from", help="Reuse the layer_sweep.json of `assay experiment layers` run with the same "
        "settings instead of sweeping again (the full preset's sweep alone takes most of an hour here)."),
    dtype: str = options.DTYPE,
    seed: int = options.SEED,
    seeds: Optional[int] = typer.Option(None, "--seeds", min=1, help="Train SAEs and stochastic probes with this many seeds (default: the preset's: 1)."),
    data: Optional[str] = typer.Option(None, help="Benchmark directory or user JSONL/CSV (text,label,split) instead of the preset's."),
    subsample: Optional[int] = typer.Option(None, help="At most N examples per split and class (a smoke run)."),
    out: Optional[Path] = typer.Option(None, help="Output folder (default runs/harmful-intent-<preset>)."),
    no_attention: bool = typer.Option(False, "--no-attention", help="Skip the attention probes."),
    no_baselines: bool = typer.Option(False, "--no-baselines", help="Skip the text baselines."),
    sae_width: Optional[int] = typer.Option(None, help="Override the SAEs' number of latents."),
    sae_tokens: Optional[float] = typer.Option(None, help="Override the pretraining and chat SAEs' training tokens."),
) -> None:
    """Do SAE probes beat a dense linear probe at detecting harmful intent, ID and OOD?

    Builds the benchmark, extracts activations, trains (or reuses) four SAEs per seed (pretraining
    text, chat, pretraining finetuned on chat, and its equal-steps control), trains every probe and
    baseline at every aggregation, and writes one report with paired, clustered intervals.
    Rerunning after an interruption continues from the caches.
    """
    from rich import print as rprint

    from assay.distributed import launched_part
    from assay.experiment import StudyConfig, run_study
    from assay.runtime import DTYPES, choose_dtype

    if launched_part() is not None:
        raise typer.BadParameter(
            "the whole study runs as one process; its SAE stage is what runs across ranks: `torchrun "
            "--nproc-per-node N -m assay experiment saes` with the same settings first, then `assay experiment "
            "harmful-intent` (one process) reuses those SAEs", param_hint="torchrun")
    if preset not in ("demo", "quick", "full"):
        raise typer.BadParameter(f"unknown preset {preset!r}: use demo, quick or full", param_hint="--preset")
    if dtype != "auto" and dtype.lower() not in DTYPES:
        raise typer.BadParameter(f"unknown dtype {dtype!r}: use auto, float32 or bfloat16", param_hint="--dtype")

    layer = _check_study_args(model, layer, data, subsample, sae_width, sae_tokens)
    if layer_sweep_from is not None:
        if not layer_sweep:
            raise typer.BadParameter("--layer-sweep-from gives a sweep to use; drop --no-layer-sweep",
                                     param_hint="--layer-sweep-from")
        if not layer_sweep_from.is_file():
            raise typer.BadParameter(f"{layer_sweep_from}: no such file (it is the layer_sweep.json that `assay "
                                     "experiment layers --out DIR` writes in DIR)", param_hint="--layer-sweep-from")
    dtype, why = choose_dtype(dtype)
    if "float32_gflops" in why:
        rprint(f"dtype {dtype} (matmul here: float32 {why['float32_gflops']} GFLOP/s, bfloat16 {why['bfloat16_gflops']} GFLOP/s)")
    from assay.probes.methods import METHODS

    methods = [n for n, m in METHODS.items() if m.study
               and not (no_attention and m.kind == "attention") and not (no_baselines and m.kind == "baseline")]
    # Flags left out keep the preset's value (the demo preset has its own data and subsample).
    given = {k: v for k, v in {"layer_stride": layer_stride, "n_seeds": seeds, "data": data,
                               "subsample": subsample}.items() if v is not None}
    cfg = StudyConfig.preset_config(preset, model=model, layer=layer, dtype=dtype, seed=seed, methods=methods,
                                    layer_sweep=layer_sweep, dtype_choice=why, **given,
                                    layer_sweep_from=str(layer_sweep_from) if layer_sweep_from else None)
    if sae_width or sae_tokens:
        sae = cfg.sae.model_copy(update={k: v for k, v in {
            "width": sae_width, "pretrain_tokens": int(sae_tokens) if sae_tokens else None,
            "chat_tokens": int(sae_tokens) if sae_tokens else None}.items() if v})
        cfg = cfg.model_copy(update={"sae": sae})
    out = out or Path("runs") / f"harmful-intent-{preset}"
    report = run_study(cfg, out)
    rprint(f"\n[bold]Findings[/] ({out}/report.md, report.html)")
    from rich.markup import escape

    for f in report.findings:
        verdict = {True: " (holds)", False: " (does not hold)", None: ""}[f.holds]
        rprint(f"- {escape(f.text)}{verdict}")


def _check_study_args(model: str, layer: int | None, data: str | None, subsample: int | None, sae_width: int | None,
                      sae_tokens: float | None) -> int | None:
    """What can be checked in seconds, before an hour of work starts."""
    # `layer` stays None when not given: the study's layer sweep chooses it on validation.
    for name, value in (("--subsample", subsample), ("--sae-width", sae_width), ("--sae-tokens", sae_tokens)):
        if value is not None and not value >= 1:
            raise typer.BadParameter(f"{value!r} must be at least 1", param_hint=name)
    if subsample is not None and subsample < 4:
        raise typer.BadParameter(f"{subsample} examples per split and class leave nothing to fit and calibrate "
                                 "on; use at least 4", param_hint="--subsample")
    if data is not None and data not in ("quick", "full") and not Path(data).exists():
        raise typer.BadParameter(f"{data}: no such file or directory", param_hint="--data")
    if layer is not None:
        from assay.models.peek import check_layers

        check_layers(model, [layer])
    return layer


@app.command("layers")
def layers(
    preset: str = typer.Option("quick", help="quick | full: the benchmark (and the quick preset's layer stride)."),
    model: str = options.MODEL,
    dtype: str = options.DTYPE,
    seed: int = options.SEED,
    data: Optional[str] = typer.Option(None, help="Benchmark directory or user JSONL/CSV (text,label,split) instead of the preset's."),
    layer_stride: Optional[int] = typer.Option(None, "--layer-stride", min=1, help="Sweep every N-th block (default: the preset's)."),
    out: Optional[Path] = typer.Option(None, help="Output folder (default runs/layers-<preset>)."),
) -> None:
    """The study's layer sweep alone: the dense probe at every layer, the layer chosen on validation.

    The same sweep `harmful-intent` runs first (same data, splits, probe and rule), without the
    rest of the study: writes layer_sweep.json, layer_sweep.png and layer_sweep.md."""
    from rich import print as rprint

    from assay.experiment import StudyConfig
    from assay.experiment.layers import write_sweep
    from assay.experiment.study import Study

    if preset not in ("quick", "full"):
        raise typer.BadParameter(f"unknown preset {preset!r}: use quick or full", param_hint="--preset")
    _check_study_args(model, None, data, None, None, None)
    dtype = options.resolve_dtype_choice(dtype)
    cfg = StudyConfig.preset_config(preset, model=model, dtype=dtype, seed=seed, data=data,
                                    **({"layer_stride": layer_stride} if layer_stride else {}))
    out = out or Path("runs") / f"layers-{preset}"
    study = Study(cfg, out)
    study.prepare()
    text = write_sweep(study.layer_sweep, out, cfg, study.timings)
    rprint(f"{text}\n({out}/layer_sweep.md, layer_sweep.png, layer_sweep.json)")


@app.command("saes")
def saes(
    preset: str = typer.Option("quick", help="quick | full: the SAE recipe and the benchmark whose validation tokens "
                               "measure them."),
    model: str = options.MODEL,
    layer: Optional[int] = options.STUDY_LAYER,
    layer_sweep_from: Optional[Path] = typer.Option(
        None, "--layer-sweep-from", help="The layer_sweep.json of `assay experiment layers` whose chosen layer the "
        "SAEs read (as `harmful-intent --layer-sweep-from` would)."),
    dtype: str = options.DTYPE,
    seed: int = options.SEED,
    seeds: Optional[int] = typer.Option(None, "--seeds", min=1, help="Train every SAE with this many seeds (default: the preset's)."),
    data: Optional[str] = typer.Option(None, help="Benchmark directory or user JSONL/CSV (text,label,split) instead of the preset's."),
    out: Optional[Path] = typer.Option(None, help="Output folder (default runs/saes-<preset>)."),
) -> None:
    """The study's SAEs alone: trained on every seed and measured, as `harmful-intent` would.

    For presets too big to run in one go: `harmful-intent` with the same settings afterwards reuses
    these SAEs and their quality records instead of extracting their corpora and training them, and
    its report names the run that trained them. Writes saes.json and saes.md."""
    from rich import print as rprint

    from assay.distributed import join
    from assay.experiment import StudyConfig
    from assay.experiment.study_saes import run_study_saes

    if preset not in ("quick", "full"):
        raise typer.BadParameter(f"unknown preset {preset!r}: use quick or full", param_hint="--preset")
    if layer is not None and layer_sweep_from is not None:
        raise typer.BadParameter("give --layer or --layer-sweep-from, not both", param_hint="--layer")
    layer = _check_study_args(model, layer, data, None, None, None)
    if layer_sweep_from is not None and not layer_sweep_from.is_file():
        raise typer.BadParameter(f"{layer_sweep_from}: no such file (it is the layer_sweep.json that `assay "
                                 "experiment layers --out DIR` writes in DIR)", param_hint="--layer-sweep-from")
    dtype = options.resolve_dtype_choice(dtype)
    # Without --layer, the layer is chosen as `harmful-intent` chooses it: by the sweep (run here
    # when no file is given), so that the study finds these SAEs.
    cfg = StudyConfig.preset_config(preset, model=model, layer=layer, dtype=dtype, seed=seed, data=data,
                                    layer_sweep=layer is None,
                                    layer_sweep_from=str(layer_sweep_from) if layer_sweep_from else None,
                                    **({"n_seeds": seeds} if seeds else {}))
    out = out or Path("runs") / f"saes-{preset}"
    join()  # under torchrun: the SAEs train with DDP across the ranks
    result = run_study_saes(cfg, out)
    if result is None:  # not rank 0: rank 0 writes and reports
        return
    rprint(f"{len(result['saes'])} SAEs at layer {result['layer']} ({out}/saes.md, saes.json)")


@app.command("readme")
def readme(
    reports: list[Path] = typer.Argument(..., help="report.json files, the main one (e.g. the full preset's) first."),
    readme_file: Path = typer.Option(Path("README.md"), "--readme", help="README to update between its results markers."),
    check: bool = typer.Option(False, help="Only check: exit 1 if the README's results section is not what the reports say."),
) -> None:
    """Regenerate the README's results section from study reports (no number is typed by hand)."""
    from assay.experiment.summary import update_readme
    from assay.fileio import write_text

    for p in reports:
        if not p.is_file():
            raise typer.BadParameter(f"{p}: no such report (run `assay experiment harmful-intent` first)")
    try:
        current, new = update_readme(readme_file, reports)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None
    if check:
        if current != new:
            typer.echo(f"{readme_file}: results section is stale; run `assay experiment readme {' '.join(map(str, reports))}`")
            raise typer.Exit(1)
        typer.echo(f"{readme_file}: results section matches the reports")
        return
    write_text(readme_file, new)
    typer.echo(f"updated {readme_file} from {len(reports)} report(s)")


@app.command("findings")
def refresh_findings(
    report_file: Path = typer.Argument(..., help="A study's report.json."),
) -> None:
    """Regenerate a report's findings from its own numbers (after a change to how findings are
    written) and re-render it beside the JSON; no result, interval or timing changes."""
    from assay.report.render import write_report
    from assay.report.schema import load_report
    from assay.experiment.findings import attach

    if not report_file.is_file():
        raise typer.BadParameter(f"{report_file}: no such report (run `assay experiment harmful-intent` first)")
    try:
        report = load_report(report_file)
    except ValueError as err:  # invalid JSON or not the report schema
        raise typer.BadParameter(f"{report_file}: not a valid report.json ({str(err).splitlines()[0]})") from None
    if not report.results or "headline_k" not in report.diagnostics:
        raise typer.BadParameter(f"{report_file}: not a harmful-intent study report (no study results or headline k)")
    write_report(attach(report), report_file.parent)
    typer.echo(f"{report_file}: {len(report.findings)} findings regenerated")


@app.command("recompute")
def recompute_intervals(
    run_dir: Path = typer.Argument(..., help="A study's output folder, holding report.json and scores.npz."),
) -> None:
    """Recompute every number of the headline rows (AUROC, recall and FPR with their clustered
    intervals, breakdowns, paired comparisons, hard-negative, gap-closed and k-sparse gap
    diagnostics) from the committed per-example scores, and compare with report.json. Exits 1 if
    any differs; needs neither the model nor the caches."""
    from assay.errors import InputError
    from assay.experiment.recompute import TOLERANCE, recompute
    from assay.experiment.score_table import SCORES_FILE, load_scores
    from assay.report.schema import load_report

    report_file, scores_file = run_dir / "report.json", run_dir / SCORES_FILE
    for f, what in ((report_file, "report"), (scores_file, "per-example scores file")):
        if not f.is_file():
            raise typer.BadParameter(f"{f}: no {what} here (a study run with this version of assay writes both into "
                                     "its output folder)", param_hint="RUN_DIR")
    try:
        report = load_report(report_file)
    except ValueError as err:
        raise typer.BadParameter(f"{report_file}: not a valid report.json ({str(err).splitlines()[0]})") from None
    if not report.results or "headline_k" not in report.diagnostics:
        raise typer.BadParameter(f"{report_file}: not a harmful-intent study report (no study results or headline k)")
    try:
        table = load_scores(scores_file)
    except InputError as err:
        raise typer.BadParameter(str(err), param_hint="RUN_DIR") from None
    typer.echo(f"{scores_file}: {len(table.scores)} runs' scores on {sum(len(i) for i in table.idx.values())} rows "
               f"({', '.join(f'{s} {len(i)}' for s, i in table.idx.items())}); recomputing with "
               f"{report.config.get('n_boot')} resamples, seed {report.config.get('seed')} ...")
    sections = recompute(report, table, progress=True)
    bad = 0
    for s in sections:
        typer.echo(f"  {s.name}: {s.values} numbers ({s.intervals} intervals) recomputed, max |difference| "
                   f"{s.max_abs_diff:.1e}, {len(s.mismatches)} differ" + ("" if s.mismatches else " - all match"))
        for path, a, b in s.mismatches[:10]:
            typer.echo(f"    {path}: report {a!r}, recomputed {b!r}")
        bad += len(s.mismatches)
    if bad:
        typer.echo(f"{bad} numbers differ from the report by more than {TOLERANCE:g}", err=True)
        raise typer.Exit(1)
    typer.echo(f"every number matches the report (tolerance {TOLERANCE:g})")


@app.command("sae-frequency")
def sae_frequency(
    preset: str = typer.Option("quick", help="demo (what make demo runs) | quick | full."),
    model: str = options.MODEL,
    layer: Optional[int] = options.LAYER,
    dtype: str = options.DTYPE,
    seed: int = options.SEED,
    out: Optional[Path] = typer.Option(None, help="Output folder (default runs/sae-frequency-<preset>)."),
    targets: Optional[str] = typer.Option(None, help="Comma-separated target L0s, e.g. 16,32,64 (default: the preset's)."),
    width: Optional[int] = typer.Option(None, help="Override the SAEs' number of latents."),
    tokens: Optional[float] = typer.Option(None, help="Override the unique training tokens (of the preset's corpus)."),
    epochs: Optional[int] = typer.Option(None, help="Override the passes over the training tokens."),
    autointerp_latents: Optional[int] = typer.Option(
        None, help="Random live latents per SAE to explain and score (rule-based auto-interpretability, uniform and "
        "frequency-weighted, with shuffled and random-SAE controls); 0 skips it (default: the preset's)."),
    probes: bool = typer.Option(False, "--probes", help="Also fit 1-sparse and k-sparse (k=20) probes on every SAE "
                                "on the harmful-intent benchmark (all.max; val and OOD AUROC)."),
) -> None:
    """Gated vs JumpReLU vs quadratic-frequency JumpReLU (omega_0 0.1, 0.01) vs TopK at matched L0.

    Trains every variant at each target L0 on the same Wikipedia tokens in one pass (penalty
    coefficients tuned to the target during the first part of training, then held), and reports
    per SAE on held-out tokens: L0 against its target, FVU, delta LM loss, dead latents and
    latents firing on more than 10% of tokens, with frequency histograms; then explains and scores
    random latents of every SAE (uniform and frequency-weighted means). Rerunning after an
    interruption resumes the training.
    """
    from assay.errors import InputError
    from assay.experiment.sae_frequency import preset_config, run_sae_frequency

    try:
        levels = tuple(int(t) for t in targets.split(",") if t.strip()) if targets else None
    except ValueError:
        raise typer.BadParameter(f"{targets!r}: give integers separated by commas, e.g. 16,32,64",
                                 param_hint="--targets") from None
    for name, value in (("--width", width), ("--tokens", tokens), ("--epochs", epochs)):
        if value is not None and not value >= 1:
            raise typer.BadParameter(f"{value!r} must be at least 1", param_hint=name)
    if autointerp_latents is not None and autointerp_latents < 0:
        raise typer.BadParameter(f"{autointerp_latents} must be at least 0", param_hint="--autointerp-latents")
    try:
        cfg = preset_config(preset, seed=seed, targets=levels, width=width, epochs=epochs,
                            train_tokens=int(tokens) if tokens else None, autointerp_latents=autointerp_latents)
    except InputError as err:
        raise typer.BadParameter(str(err), param_hint="--preset" if "preset" in str(err) else None) from None
    layer = options.resolve_layer(model, layer)
    out = out or Path("runs") / f"sae-frequency-{preset}"
    report, _ = run_sae_frequency(cfg, out, model=model, layer=layer, dtype=options.resolve_dtype_choice(dtype),
                                  probes=probes)
    typer.echo(f"\nFindings ({out}/report.md):")
    for f in report["findings"]:
        typer.echo(f"- {f['text']}")
