"""`assay probe train` / `assay probe eval`: fit a probe or baseline on a benchmark's train split
(choices on val), then score every split into a results JSON (render it with `assay report`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(help="Train and evaluate probes (dense, attention, SAE) and text baselines.", no_args_is_help=True)

RUN_FILE = "run.json"
KINDS = "logistic, diff_mean, attention, rolling_attention, one_sparse, k_sparse, tfidf, embedding"


def _split_indices(ds, name: str):
    import numpy as np

    return np.array([i for i, e in enumerate(ds.examples) if e.split == name], dtype=np.int64)


def _activations(ds, model: str, layer: int | None, dtype: str, features: list[str]):
    from assay.activations import DEFAULT_FEATURES, extract
    from assay.models import load

    lm = load(model, dtype=dtype)
    layer = lm.n_layers // 2 if layer is None else layer
    feats = list(dict.fromkeys([*DEFAULT_FEATURES, *[f for f in features if "." in f or f.startswith("resp-")]]))
    acts = extract(lm, ds.texts, [layer], dataset_fingerprint=ds.fingerprint, features=feats)
    return lm, acts, layer


def _make(kind: str, k: int, select: str, seed: int, window: int):
    from assay.baselines import EmbeddingBaseline, TfidfBaseline
    from assay.probes import (AttentionProbe, DiffMeanProbe, KSparseProbe, LogisticProbe, OneSparseProbe,
                              RollingAttentionProbe)

    makers = {
        "logistic": lambda: LogisticProbe(seed=seed), "diff_mean": DiffMeanProbe,
        "attention": lambda: AttentionProbe(seed=seed), "rolling_attention": lambda: RollingAttentionProbe(seed=seed, window=window),
        "one_sparse": OneSparseProbe, "k_sparse": lambda: KSparseProbe(k=k, select=select, seed=seed),
        "tfidf": TfidfBaseline, "embedding": lambda: EmbeddingBaseline(seed=seed),
    }
    if kind not in makers:
        raise typer.BadParameter(f"unknown kind {kind!r}; choose one of: {KINDS}")
    return makers[kind]()


@app.command()
def train(
    data: Path = typer.Option(..., help="Benchmark directory or user JSONL/CSV (assay.data.load_dataset)."),
    out: Path = typer.Option(..., help="Directory to write the probe into."),
    kind: str = typer.Option("logistic", help=f"One of: {KINDS}."),
    feature: str = typer.Option("all.max", help="Aggregation ('all.max', 'user.mean', 'resp-5', ...); token mask ('all'/'user') for attention probes."),
    model: str = typer.Option("gemma-3-270m", help="Model name or path (assay.models.load)."),
    layer: Optional[int] = typer.Option(None, help="Residual-stream layer; default the middle one."),
    sae: Optional[str] = typer.Option(None, help="SAE path: fit on its latents (or reconstruction, see --sae-output)."),
    sae_output: str = typer.Option("latents", help="'latents' or 'reconstruction'."),
    k: int = typer.Option(20, help="Latents for k_sparse."),
    select: str = typer.Option("mean_diff", help="k_sparse latent selection: 'mean_diff' or 'l1'."),
    window: int = typer.Option(10, help="Window of the rolling attention probe."),
    train_split: str = "train",
    val_split: str = "val",
    seed: int = 0,
    dtype: str = "float32",
) -> None:
    """Fit on TRAIN_SPLIT, choose hyperparameters on VAL_SPLIT, save to OUT with a run record."""
    from assay.data import load_dataset
    from assay.fileio import write_json
    from assay.probes.inputs import TEXT_KINDS, ProbeInputs, fetch, load_sae
    from assay.provenance import provenance

    ds = load_dataset(data)
    tr, va = _split_indices(ds, train_split), _split_indices(ds, val_split)
    y = ds.labels
    probe = _make(kind, k, select, seed, window)
    spec = ProbeInputs(kind=kind, feature=feature, sae=sae, sae_output=sae_output)
    if kind in TEXT_KINDS:
        texts = ds.texts
        probe.fit([texts[i] for i in tr], y[tr], [texts[i] for i in va] if len(va) else None, y[va] if len(va) else None)
    else:
        lm, acts, layer = _activations(ds, model, layer, dtype, [feature])
        spec = ProbeInputs(kind=kind, feature=feature, model=lm.name, layer=layer, sae=sae, sae_output=sae_output)
        sae_obj = load_sae(sae) if sae else None
        X, m = fetch(acts, spec, tr, sae_obj)
        Xv, mv = fetch(acts, spec, va, sae_obj) if len(va) else (None, None)
        probe.fit(X, y[tr], Xv, y[va] if len(va) else None, mask=m, mask_val=mv)
    probe.save(out)
    write_json(out / RUN_FILE, {
        "inputs": spec.to_dict(), "data": str(data), "dataset_fingerprint": ds.fingerprint, "seed": seed,
        "train_split": train_split, "val_split": val_split, "n_train": len(tr), "n_val": len(va),
        "provenance": provenance(model=spec.model, layer=spec.layer, dataset_fingerprint=ds.fingerprint, seed=seed),
    })
    typer.echo(f"saved {kind} probe to {out}: {json.dumps(probe.meta, default=str)[:300]}")


def _load_any(path: Path):
    from assay.baselines.base import CONFIG_FILE as BASELINE_FILE
    from assay.baselines import load_baseline
    from assay.probes import load_probe

    return load_baseline(path) if (path / BASELINE_FILE).exists() else load_probe(path)


@app.command("eval")
def evaluate(
    probes: list[Path] = typer.Argument(..., help="Probe directories written by `assay probe train`."),
    data: Path = typer.Option(..., help="The benchmark the probes were trained on (or another with the same splits)."),
    out: Path = typer.Option(Path("results.json"), help="Results JSON (assay.eval.schema.Report)."),
    calibrate_on: Optional[str] = typer.Option(None, help="Split whose benign examples set the threshold (default: calib if the data has it, else val)."),
    target_fpr: float = 0.01,
    n_boot: int = 1000,
    seed: int = 0,
    dtype: str = "float32",
) -> None:
    """Score every split with each probe; threshold on benign CALIBRATE_ON examples at TARGET_FPR."""
    from assay.data import load_dataset
    from assay.eval.evaluate import SplitScores, evaluate_method
    from assay.eval.published import gdm_published
    from assay.eval.schema import Provenance, Report
    from assay.fileio import read_json, write_text
    from assay.probes.inputs import TEXT_KINDS, ProbeInputs, fetch, load_sae
    from assay.provenance import provenance

    ds = load_dataset(data)
    calibrate_on = calibrate_on or ("calib" if "calib" in ds.splits else "val")
    if calibrate_on not in ds.splits:
        raise typer.BadParameter(f"no split {calibrate_on!r} to calibrate on; splits are {ds.splits}")
    y = ds.labels
    results, runs, cache = [], [], {}
    for path in probes:
        run = read_json(path / RUN_FILE)
        spec = ProbeInputs(**run["inputs"])
        probe = _load_any(path)
        if run["dataset_fingerprint"] != ds.fingerprint:
            typer.echo(f"note: {path} was trained on dataset {run['dataset_fingerprint'][:12]}, evaluating on {ds.fingerprint[:12]}")
        splits = {}
        for split in ds.splits:
            idx = _split_indices(ds, split)
            if spec.kind in TEXT_KINDS:
                s = probe.score([ds.texts[i] for i in idx])
            else:
                key = (spec.model, spec.layer)
                if key not in cache:
                    cache[key] = _activations(ds, spec.model, spec.layer, dtype, [spec.feature])[1]
                X, m = fetch(cache[key], spec, idx, load_sae(spec.sae) if spec.sae else None)
                s = probe.score(X, m) if m is not None else probe.score(X)
            ex = [ds.examples[i] for i in idx]
            splits[split] = SplitScores(s, y[idx], {"family": [e.family for e in ex], "transformation": [e.transformation for e in ex],
                                                     "source": [e.source for e in ex]},
                                        units=ds.clusters[idx].tolist())
        kind = ("baseline" if spec.kind in TEXT_KINDS else "attention" if spec.token_level
                else "sae_reconstruction" if spec.sae and spec.sae_output == "reconstruction"
                else "sae_sparse" if spec.sae else "dense")
        latents = getattr(probe, "latents", None)
        results += evaluate_method(
            _method_name(spec, probe), splits, features=spec.features_label, calibrate_on=calibrate_on,
            target_fpr=target_fpr, n_boot=n_boot, seed=seed, kind=kind, sae=spec.sae,
            k=len(latents) if latents is not None else None, latents=[int(i) for i in latents] if latents is not None else None,
            model=spec.model, layer=spec.layer, dataset_fingerprint=ds.fingerprint,
            config={"probe": str(path), "meta": probe.meta},
        )
        runs.append({"probe": str(path), **run["inputs"]})
    first = runs[0] if runs else {}
    report = Report(
        title=f"assay: harmful-intent probes on {Path(data).name}",
        provenance=Provenance(**provenance(model=first.get("model"), layer=first.get("layer"),
                                           dataset_fingerprint=ds.fingerprint, seed=seed)),
        config={"data": str(data), "probes": runs, "calibrate_on": calibrate_on, "target_fpr": target_fpr, "n_boot": n_boot},
        results=results, published=gdm_published(),
    )
    write_text(out, report.model_dump_json(indent=2) + "\n")
    typer.echo(f"wrote {len(results)} results to {out}")


def _method_name(spec, probe) -> str:
    cfg = getattr(probe, "config", None)
    if spec.kind == "k_sparse":
        return f"k_sparse[{cfg.select},k={cfg.k}]"
    return spec.kind
