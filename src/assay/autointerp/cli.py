"""`assay autointerp SAE_DIR`: explain and score an SAE's latents, uniform and frequency-weighted."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from assay import options


def autointerp_command(
    sae_dir: Path = typer.Argument(..., help="An SAE directory (cfg.json + sae_weights.safetensors)."),
    latents: int = typer.Option(50, "--latents", "-n", help="Random live latents to score (seeded)."),
    latent_ids: Optional[str] = typer.Option(None, "--latent-ids", help="Comma-separated latent ids to score "
                                             "first (e.g. those a sparse probe selects)."),
    explainer: str = typer.Option("tokens", "--explainer", "-e", help="tokens (no LM) | hf:MODEL (a local "
                                  "causal LM, e.g. hf:gemma-3-270m) | an OpenAI-compatible URL "
                                  "(http://host:port/v1; key from $ASSAY_EXPLAINER_API_KEY)."),
    explainer_model: Optional[str] = typer.Option(None, "--explainer-model", help="Model name the endpoint "
                                                  "serves (with a URL explainer)."),
    scorer: Optional[str] = typer.Option(None, "--scorer", "-s", help="rule (the tokens explainer's token "
                                         "test) | hf:MODEL; default: rule for tokens, else the explainer's "
                                         "model (or the SAE's model for a URL explainer)."),
    tokens: float = typer.Option(1e5, "--tokens", help="Held-out corpus tokens to read."),
    max_tokens: int = typer.Option(256, "--max-tokens", help="Tokens per document, at most."),
    ctx_len: int = typer.Option(32, "--ctx-len", help="Tokens per context window."),
    per_quantile: int = typer.Option(2, "--per-quantile", help="Held-out activating windows per activation "
                                     "decile (as many non-activating ones); fewer makes LM scoring cheaper."),
    corpus: Optional[str] = typer.Option(None, "--corpus", help="Held-out corpus (default: the SAE's "
                                         "training corpus, else wiki)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model (default: the SAE's model_name)."),
    random_control: bool = typer.Option(True, "--random-control/--no-random-control", help="Also score a "
                                        "randomly initialised SAE of the same architecture."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output directory (default: SAE_DIR/autointerp)."),
    dtype: str = options.DTYPE,
    seed: int = options.SEED,
) -> None:
    """Frequency-weighted auto-interpretability: explain latents from their top windows, score the
    explanations on held-out windows (detection, fuzzing AUROC), against shuffled-explanation and
    random-SAE controls. Writes scores.jsonl, summary.json and autointerp.png."""
    start = time.perf_counter()
    ids = _parse_ids(latent_ids)
    if latents < 0 or tokens < 1 or max_tokens < 2 or ctx_len < 1 or per_quantile < 1:
        raise typer.BadParameter("--latents must be >= 0, --tokens >= 1, --max-tokens >= 2, --ctx-len and --per-quantile >= 1")
    if not ids and latents == 0:
        raise typer.BadParameter("nothing to score: pass --latents N or --latent-ids")
    from assay.autointerp.explainers import resolve_specs

    resolve_specs(explainer, scorer)  # a typo or a mismatched pair fails before any weights load
    if not sae_dir.is_dir():
        raise typer.BadParameter(f"{sae_dir} is not a directory; pass an SAE directory (cfg.json + "
                                 "sae_weights.safetensors)", param_hint="SAE_DIR")
    if not (sae_dir / "cfg.json").exists():
        raise typer.BadParameter(f"{sae_dir} holds no cfg.json: not an SAE directory", param_hint="SAE_DIR")

    from assay.autointerp.from_sae import autointerp_sae, build_pair
    from assay.errors import ConfigMismatchError, InputError
    from assay.models import load
    from assay.sae.checks import check_sae_fits, sae_layer
    from assay.sae.corpus import CORPORA, held_out_texts
    from assay.sae.io import load_sae

    sae = load_sae(sae_dir)
    meta = sae.metadata or {}
    layer = sae_layer(sae)
    if layer is None:
        raise ConfigMismatchError(f"{sae_dir}/cfg.json names no layer (metadata.assay_layer or hook_name); add one")
    bad = [j for j in ids if not 0 <= j < sae.cfg.d_sae]
    if bad:
        raise InputError(f"--latent-ids {bad[:5]} out of range: this SAE has {sae.cfg.d_sae} latents "
                         f"(0..{sae.cfg.d_sae - 1})")
    corp = corpus or meta.get("corpus") or "wiki"
    if corp not in CORPORA:
        raise typer.BadParameter(f"{corp!r}; choose one of {', '.join(CORPORA)}", param_hint="--corpus")
    name = model or meta.get("model_name") or options.DEFAULT_MODEL
    dt = options.resolve_dtype_choice(dtype)
    lms: dict = {}

    def load_lm(n: str):
        return lms.get(n) or lms.setdefault(n, load(n, dtype=dt))

    lm = load_lm(name)
    check_sae_fits(sae, lm.d_model, layer, str(sae_dir))
    ex, sc = build_pair(explainer, scorer, decode=lm.tokenizer.decode, load_lm=load_lm,
                        explainer_model=explainer_model, default_lm=name)
    texts = held_out_texts(corp, lm.tokenizer, int(tokens), max_tokens, seed=seed)
    out_dir = out or sae_dir / "autointerp"
    summary = autointerp_sae(sae.to(lm.device), lm, layer, texts, latent_ids=ids, n_random=latents, explainer=ex,
                             scorer=sc, out_dir=out_dir, random_control=random_control, max_tokens=max_tokens,
                             seed=seed, ctx_len=ctx_len, per_quantile=per_quantile)
    _report(summary, out_dir, time.perf_counter() - start)


def _parse_ids(spec: str | None) -> list[int]:
    if not spec:
        return []
    try:
        ids = [int(p) for p in spec.replace(" ", "").split(",") if p]
    except ValueError:
        raise typer.BadParameter(f"{spec!r} is not a comma-separated list of integers, e.g. 3,17,42",
                                 param_hint="--latent-ids") from None
    if len(set(ids)) != len(ids):
        raise typer.BadParameter(f"{spec!r} repeats a latent id", param_hint="--latent-ids")
    return ids


def _report(summary: dict, out_dir: Path, seconds: float) -> None:
    for run, r in summary["runs"].items():
        parts = []
        for t in ("detection", "fuzzing"):
            m = r[t]
            parts.append(f"{t} uniform {m['uniform']:+.3f} [{m['uniform_ci'][0]:+.3f}, {m['uniform_ci'][1]:+.3f}] "
                         f"freq-weighted {m['weighted']:+.3f} [{m['weighted_ci'][0]:+.3f}, {m['weighted_ci'][1]:+.3f}]"
                         if run == "margin" else
                         f"{t} uniform {m['uniform']:.3f} [{m['uniform_ci'][0]:.3f}, {m['uniform_ci'][1]:.3f}] "
                         f"freq-weighted {m['weighted']:.3f} [{m['weighted_ci'][0]:.3f}, {m['weighted_ci'][1]:.3f}]")
        count = "over random" if run == "margin" else f"{r['detection']['n_scored']}/{r['n_latents']} scored"
        typer.echo(f"{run:>12} ({count}): " + "; ".join(parts))
    c = summary.get("controls") or {}
    if c:
        values = ", ".join(f"{k} {v:.3f}" for k, v in c["values"].items())
        typer.echo(f"chance controls ({values}): " + ("at chance (within 0.5 +/- {:.2f})".format(c["margin"])
                                                     if c["at_chance"] else
                                                     f"OFF CHANCE ({', '.join(c['off_chance'])}): rank nothing by these scores"))
    typer.echo(f"wrote {out_dir}/summary.json, scores.jsonl, autointerp.png in {seconds:.0f} s")
