"""`assay monitor build | score | eval | serve`: a probe shipped as a calibrated detector."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from assay import options

app = typer.Typer(help="Monitors: build a calibrated probe bundle, score and evaluate files with it, serve it "
                       "over HTTP (OpenAI moderation shape).", no_args_is_help=True)

BUNDLE = typer.Argument(..., help="A monitor bundle directory written by `assay monitor build`.")
SERVE_MODEL = typer.Option(None, "--model", "-m", help="Where the bundle's model lives, if not where it was built "
                           "from (its weights must hash the same).")
MONITOR_DTYPE = typer.Option(None, "--dtype", help="float32 | bfloat16; default: the dtype the bundle was calibrated in.")


def _load(bundle: Path, model: Optional[str], dtype: Optional[str], max_tokens: Optional[int] = None):
    from assay.monitor.scorer import SERVE_MAX_TOKENS, Monitor

    return Monitor.load(str(bundle), model=model, dtype=dtype, max_tokens=max_tokens or SERVE_MAX_TOKENS)


@app.command()
def build(
    data: str = typer.Option("full", "--data", "-d", help="A benchmark preset (quick|full), a benchmark directory, or "
                             "a labelled user file with `split` (a `calib` split of benign prompts) and `group`."),
    out: Path = typer.Option(..., "--out", "-o", help="Bundle directory to write (replaced atomically)."),
    model: str = options.MODEL,
    layer: Optional[List[int]] = typer.Option(None, "--layer", "-l", help="Candidate layer; repeat to let the "
                                              "selection choose among several (default: a third, half and two "
                                              "thirds of the way up)."),
    method: Optional[List[str]] = typer.Option(None, "--method", help="Candidate method; repeat for several "
                                               "(default: dense-logistic, diff-of-means-std and located-logistic). "
                                               "Pooled, attention and token-level methods only."),
    aggregation: Optional[List[str]] = typer.Option(None, "--aggregation", "-a", help="Candidate aggregation for "
                                                    "pooled methods; repeat (default: resp-5, all.mean, all.max)."),
    token_pooling: Optional[List[str]] = typer.Option(None, "--token-pooling", help="Candidate pooling of a "
                                                      "token-level probe's token logits: rmaxN (max of rolling means "
                                                      "over N tokens), max or mean; repeat (default: rmax10, rmax20)."),
    mix: Optional[List[str]] = typer.Option(None, "--mix", help="Candidate training data: 'all' (every split but "
                                            "calib) or 'id' (train and val); repeat (default: both)."),
    dtype: str = options.DTYPE,
    inner_k: int = typer.Option(4, "--inner-folds", min=2, help="Grouped folds that choose the candidate inside each "
                                "held-out collection's training rows (the card's nested estimate)."),
    default_fpr: float = typer.Option(0.01, "--default-fpr", help="The threshold `flagged` means: 0.001, 0.01 or 0.05."),
    min_calibration: int = typer.Option(100, "--min-calibration", min=1, help="Fewest benign `calib` prompts to set "
                                        "thresholds on (the quick preset has 50: its 1% threshold is then coarse)."),
    seed: int = options.SEED,
) -> None:
    """Train, choose by leave-one-collection-out, calibrate, and write a monitor bundle with its card."""
    from assay.monitor.build import DEFAULT_AGGREGATIONS, DEFAULT_METHODS, DEFAULT_MIXES, TOKEN_POOLINGS, build_monitor

    path = build_monitor(data, out, model=model, layers=layer or None, methods=method or DEFAULT_METHODS,
                         aggregations=aggregation or DEFAULT_AGGREGATIONS, mixes=mix or DEFAULT_MIXES,
                         token_poolings=token_pooling or TOKEN_POOLINGS, dtype=dtype, inner_k=inner_k,
                         default_fpr=default_fpr, seed=seed,
                         min_calibration=min_calibration)
    typer.echo((path / "card.md").read_text(encoding="utf-8"))
    typer.echo(f"bundle written to {path}\nserve it: assay monitor serve {path}\n"
               f"check it on your own labelled prompts: assay monitor eval {path} --data FILE")


@app.command()
def score(
    bundle: Path = BUNDLE,
    input: Path = typer.Option(..., "--input", "-i", help="Prompts: JSONL with a `text` field or CSV with a `text` "
                               "column (optional `id`)."),
    out: Path = typer.Option(..., "--out", "-o", help="JSONL to write: id, score, probability, flagged per threshold."),
    model: Optional[str] = SERVE_MODEL,
    dtype: Optional[str] = MONITOR_DTYPE,
) -> None:
    """Score a file of prompts with a bundle."""
    from assay.monitor.evaluate import read_prompts, score_file

    read_prompts(input)  # a bad file fails before the model loads
    n = score_file(_load(bundle, model, dtype), input, out)
    typer.echo(f"scored {n} prompts -> {out}")


@app.command()
def calibrate(
    bundle: Path = BUNDLE,
    benign: Path = typer.Option(..., "--benign", help="Your own benign prompts (JSONL with a `text` field or CSV with "
                                "a `text` column): the thresholds are set where they flag 0.1%, 1% and 5% of them."),
    out: Path = typer.Option(..., "--out", "-o", help="Bundle directory to write (may be BUNDLE itself: it is "
                             "replaced atomically)."),
    min_benign: int = typer.Option(100, "--min-benign", min=1, help="Fewest benign prompts to set thresholds on."),
    model: Optional[str] = SERVE_MODEL,
    dtype: Optional[str] = MONITOR_DTYPE,
) -> None:
    """Re-set a bundle's thresholds on your own benign traffic (no labels beyond 'benign')."""
    from assay.monitor.calibrate import recalibrate
    from assay.monitor.evaluate import read_prompts

    n = len(read_prompts(benign))  # a bad file fails before the model loads
    if n < min_benign:
        raise typer.BadParameter(f"{benign} has {n} prompts; thresholds at 1% FPR need at least {min_benign}",
                                 param_hint="--benign")
    path = recalibrate(_load(bundle, model, dtype), benign, out, min_benign=min_benign)
    typer.echo((path / "card.md").read_text(encoding="utf-8").split("## Recalibrated", 1)[-1].strip())
    typer.echo(f"bundle written to {path}")


@app.command("eval")
def evaluate(
    bundle: Path = BUNDLE,
    data: Path = typer.Option(..., "--data", "-d", help="Labelled prompts (JSONL/CSV with text,label[,group]) or a "
                              "benchmark directory."),
    split: Optional[str] = typer.Option(None, "--split", help="Only this split of the data (e.g. ood)."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory for eval.json and eval.md."),
    model: Optional[str] = SERVE_MODEL,
    dtype: Optional[str] = MONITOR_DTYPE,
) -> None:
    """AUROC, AUPRC, and recall and FPR at the bundle's own thresholds, overall and per group."""
    from assay.data import load_dataset
    from assay.monitor.evaluate import evaluate_file

    ds = load_dataset(data)  # a bad file or split fails before the model loads
    if split is not None:
        ds.split(split)
    evaluate_file(_load(bundle, model, dtype), data, out, split=split)
    typer.echo((out / "eval.md").read_text(encoding="utf-8"))


@app.command()
def serve(
    bundle: Path = BUNDLE,
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind (loopback by default: expose it on "
                             "purpose, with ASSAY_MONITOR_KEY set)."),
    port: int = typer.Option(8000, "--port", min=1, max=65535),
    model: Optional[str] = SERVE_MODEL,
    dtype: Optional[str] = MONITOR_DTYPE,
    max_tokens: int = typer.Option(4096, "--max-tokens", min=8, help="Longest prompt accepted, in tokens; longer "
                                   "ones get a 413."),
    max_batch_tokens: int = typer.Option(8192, "--max-batch-tokens", min=64, help="Tokens per micro-batch."),
    max_wait_ms: float = typer.Option(5.0, "--max-wait-ms", min=0.0, help="Longest a request waits for others to "
                                      "batch with."),
    threshold: Optional[str] = typer.Option(None, "--threshold", help="Which threshold `flagged` means "
                                            "(e.g. 'fpr=1%'); default: the bundle's."),
    generate: bool = typer.Option(False, "--generate", help="Also serve /v1/chat/completions with the bundle's "
                                  "model; every answer carries the monitor's verdict, read from its own prefill."),
    refuse_when_flagged: bool = typer.Option(False, "--refuse-when-flagged", help="With --generate: answer a "
                                             "flagged prompt with a fixed refusal (finish_reason content_filter) "
                                             "instead of generating."),
    max_new_tokens: int = typer.Option(512, "--max-new-tokens", min=1, help="With --generate: the most tokens a "
                                       "request may generate (its default max_tokens)."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Scoring threads sharing the model, each "
                                          "with its share of the cores (default: 2 on a CPU with 2+ cores, else 1; "
                                          "1 with --generate)."),
    max_queue_tokens: int = typer.Option(131072, "--max-queue-tokens", min=1, help="Tokens waiting to be scored "
                                         "before new requests get a 429 with Retry-After."),
    max_request_tokens: int = typer.Option(16384, "--max-request-tokens", min=1, help="Tokens one request may hold "
                                           "in all; more get a 413 (so one client cannot hold every worker)."),
    limit_concurrency: int = typer.Option(256, "--limit-concurrency", min=1, help="Open connections at most; more "
                                          "get a 503 (bounds sockets and memory under a flood)."),
) -> None:
    """Serve a bundle over HTTP: /v1/moderations, /v1/score, /v1/models, /healthz, /metrics, and with
    --generate /v1/chat/completions. Set ASSAY_MONITOR_KEY to require `Authorization: Bearer <key>`."""
    from assay.monitor.server import run

    if refuse_when_flagged and not generate:
        raise typer.BadParameter("--refuse-when-flagged needs --generate (it decides whether to generate)",
                                 param_hint="--refuse-when-flagged")
    if generate and workers is not None and workers > 1:
        raise typer.BadParameter("--generate serves with one scoring thread (generation hooks the model for its "
                                 "own forward pass); drop --workers or set it to 1", param_hint="--workers")
    _check_before_loading(bundle, threshold)
    monitor = _load(bundle, model, dtype, max_tokens)
    generator = None
    if generate:
        from assay.monitor.generate import Generator

        generator = Generator(monitor, threshold=threshold, refuse_when_flagged=refuse_when_flagged,
                              max_new_tokens=max_new_tokens)
    run(monitor, host=host, port=port, max_batch_tokens=max_batch_tokens, max_wait_ms=max_wait_ms, threshold=threshold,
        generator=generator, workers=workers, max_queue_tokens=max_queue_tokens, max_request_tokens=max_request_tokens,
        limit_concurrency=limit_concurrency)


def _check_before_loading(bundle: Path, threshold: Optional[str]) -> None:
    """What a typo can get wrong, checked in a second rather than after the model's load: the
    bundle itself, the threshold named, and the API key the server would require."""
    import os

    from assay.monitor.bundle import load_bundle
    from assay.monitor.server import check_api_key

    b = load_bundle(bundle, device="cpu")
    if threshold is not None and threshold not in b.thresholds:
        raise typer.BadParameter(f"unknown threshold {threshold!r} for bundle {bundle}; choose one of "
                                 f"{sorted(b.thresholds)}", param_hint="--threshold")
    key = os.environ.get("ASSAY_MONITOR_KEY")
    if key:
        try:
            check_api_key(key)
        except ValueError as err:
            raise typer.BadParameter(str(err), param_hint="ASSAY_MONITOR_KEY") from None
