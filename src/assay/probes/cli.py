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


def _check_train_args(kind: str, feature: str, model: str, layer: int | None, sae: str | None, sae_output: str,
                      k: int, select: str, window: int, dtype: str) -> None:
    """Arguments checked before the data, the model or an SAE is loaded."""
    from assay.activations.features import Feature
    from assay.models.peek import check_layers
    from assay.probes.inputs import TEXT_KINDS
    from assay.runtime import resolve_dtype

    checks = [("--k", k >= 1, f"{k} latents: use at least 1"),
              ("--select", select in ("mean_diff", "l1"), f"{select!r}: use mean_diff or l1"),
              ("--window", window >= 1, f"{window}: use at least 1"),
              ("--sae-output", sae_output in ("latents", "reconstruction"), f"{sae_output!r}: use latents or reconstruction")]
    for hint, ok, why in checks:
        if not ok:
            raise typer.BadParameter(why, param_hint=hint)
    if kind in TEXT_KINDS:
        return
    resolve_dtype(dtype)
    if kind in ("attention", "rolling_attention"):
        if feature not in ("all", "user"):
            raise typer.BadParameter(f"{feature!r}: attention probes read a token mask, 'all' or 'user'",
                                     param_hint="--feature")
    else:
        Feature.parse(feature)
    if sae is not None and not (Path(sae) / "cfg.json").is_file():
        raise typer.BadParameter(f"{sae} is not a saved SAE (no cfg.json)", param_hint="--sae")
    if layer is not None:
        check_layers(model, [layer])


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
    from assay.errors import InputError
    from assay.fileio import write_json
    from assay.probes.inputs import TEXT_KINDS, ProbeInputs, fetch, load_sae
    from assay.provenance import provenance

    probe = _make(kind, k, select, seed, window)
    _check_train_args(kind, feature, model, layer, sae, sae_output, k, select, window, dtype)
    ds = load_dataset(data)
    tr, va = _split_indices(ds, train_split), _split_indices(ds, val_split)
    y = ds.labels
    if train_split not in ds.splits:
        raise InputError(f"{data}: no split {train_split!r} to fit on (splits: {', '.join(ds.splits)}); pass "
                         "--train-split, or give rows split train (see `assay data validate`)")
    if len(set(y[tr].tolist())) < 2:
        raise InputError(f"{data}: split {train_split!r} has {len(tr)} rows of one class; a probe needs both "
                         "classes to fit")
    if val_split and val_split not in ds.splits:  # a typo would silently fit without tuning
        raise InputError(f"{data}: no split {val_split!r} to tune on (splits: {', '.join(ds.splits)}); pass "
                         "--val-split, or --val-split '' to fit with default hyperparameters")
    if val_split == train_split:
        raise InputError(f"--val-split {val_split!r} is the train split: hyperparameters tuned on the rows the probe "
                         "was fit on choose the least regularised; pass another split")
    spec = ProbeInputs(kind=kind, feature=feature, sae=sae, sae_output=sae_output)
    if kind in TEXT_KINDS:
        texts = ds.texts
        probe.fit([texts[i] for i in tr], y[tr], [texts[i] for i in va] if len(va) else None, y[va] if len(va) else None)
    else:
        lm, acts, layer = _activations(ds, model, layer, dtype, [feature])
        spec = ProbeInputs(kind=kind, feature=feature, model=lm.name, layer=layer, sae=sae, sae_output=sae_output)
        sae_obj = load_sae(sae) if sae else None
        if sae_obj is not None:
            from assay.sae.checks import check_sae_fits

            check_sae_fits(sae_obj, lm.d_model, layer, sae)
        X, m = fetch(acts, spec, tr, sae_obj)
        Xv, mv = fetch(acts, spec, va, sae_obj) if len(va) else (None, None)
        probe.fit(X, y[tr], Xv, y[va] if len(va) else None, mask=m, mask_val=mv)
    probe.save(out)
    from assay.fileio import sha256_json

    write_json(out / RUN_FILE, {
        "inputs": spec.to_dict(), "data": str(data), "dataset_fingerprint": ds.fingerprint, "seed": seed,
        # What `probe eval` checks the run's claims against: a hand-edited layer, feature or kind,
        # or probe or SAE files swapped for others, would otherwise score the wrong activations
        # under the right-looking label.
        "probe_kind": probe.kind, "inputs_sha256": sha256_json(spec.to_dict()),
        "files_sha256": _digests(out, _probe_files(kind)), "sae_sha256": _sae_digest(sae) if sae else None,
        "d_in": int(X.shape[-1]) if kind not in TEXT_KINDS else None,
        "train_split": train_split, "val_split": val_split, "n_train": len(tr), "n_val": len(va),
        "provenance": provenance(model=spec.model, layer=spec.layer, dataset_fingerprint=ds.fingerprint, seed=seed),
    })
    typer.echo(f"saved {kind} probe to {out}: {json.dumps(probe.meta, default=str)[:300]}")


def _probe_files(kind: str) -> tuple[str, str]:
    """The files `save` writes for a probe or baseline of `kind`: its config, then its weights."""
    from assay.baselines.base import CONFIG_FILE as BASELINE_CONFIG, WEIGHTS_FILE as BASELINE_WEIGHTS
    from assay.probes.base import CONFIG_FILE, WEIGHTS_FILE
    from assay.probes.inputs import TEXT_KINDS

    return (BASELINE_CONFIG, BASELINE_WEIGHTS) if kind in TEXT_KINDS else (CONFIG_FILE, WEIGHTS_FILE)


def _digests(folder: Path, names: tuple[str, ...]) -> dict[str, str]:
    from assay.fileio import sha256_file

    return {name: sha256_file(folder / name) for name in names}


def _sae_digest(path: str | Path) -> str:
    """One digest of an SAE's config and weights: a probe fit on its latents means nothing on another's."""
    from assay.fileio import sha256_json
    from assay.sae.io import CFG_FILE, WEIGHTS_FILE

    return sha256_json(_digests(Path(path), (CFG_FILE, WEIGHTS_FILE)))


def _load_any(path: Path, kind: str):
    """The probe or baseline saved in `path`, loaded as the kind its run.json names (a folder reused
    for another kind may still hold the old kind's files)."""
    from safetensors import SafetensorError

    from assay.baselines import load_baseline
    from assay.errors import AssayError, ConfigMismatchError
    from assay.probes import load_probe
    from assay.probes.inputs import TEXT_KINDS

    config = _probe_files(kind)[0]
    if not (path / config).is_file():
        raise ConfigMismatchError(f"{path / RUN_FILE} says kind {kind!r}, but {path} holds no {config}; restore "
                                  "run.json or train the probe again")
    try:
        return load_baseline(path) if kind in TEXT_KINDS else load_probe(path)
    except AssayError:
        raise
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as err:
        raise ConfigMismatchError(f"{path}: the saved {kind} baseline is damaged or incomplete "
                                  f"({type(err).__name__}: {err}); train it again") from None


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
    from assay.errors import ConfigMismatchError
    from assay.eval.schema import Provenance, Report
    from assay.fileio import write_text
    from assay.probes.inputs import TEXT_KINDS, fetch
    from assay.provenance import provenance
    from assay.sae.checks import check_sae_fits

    if not 0 < target_fpr < 1:
        raise typer.BadParameter(f"{target_fpr}: a false-positive rate is between 0 and 1 (e.g. 0.01)",
                                 param_hint="--target-fpr")
    if n_boot < 10:
        raise typer.BadParameter(f"{n_boot}: intervals need at least 10 bootstrap resamples (1000 is the default)",
                                 param_hint="--n-boot")
    saes: dict[str, object] = {}  # probes that share an SAE share one copy
    loaded = [_read_run(path, saes) for path in probes]  # every probe checked before any work starts
    ds = load_dataset(data)
    calibrate_on = calibrate_on or ("calib" if "calib" in ds.splits else "val")
    if calibrate_on not in ds.splits:
        raise typer.BadParameter(f"no split {calibrate_on!r} to calibrate on; splits are {ds.splits}")
    y = ds.labels
    results, runs, cache = [], [], {}
    for path, (run, spec, probe, sae_obj) in zip(probes, loaded):
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
                if sae_obj is not None:  # an old run.json records no SAE digest: at least the same layer and width
                    check_sae_fits(sae_obj, cache[key].d_model, spec.layer, spec.sae)
                X, m = fetch(cache[key], spec, idx, sae_obj)
                if run.get("d_in") is not None and X.shape[-1] != run["d_in"]:
                    raise ConfigMismatchError(f"{path}: the probe was fit on {run['d_in']}-dimensional inputs, but "
                                              f"{spec.features_label} at layer {spec.layer} of {spec.model} has "
                                              f"{X.shape[-1]}")
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


# Written together by `probe train`: one without the others means run.json was edited.
_RUN_CHECKS = ("probe_kind", "inputs_sha256", "files_sha256")


def _read_run(path: Path, saes: dict[str, object] | None = None):
    """(run record, inputs, probe, SAE or None) of a probe directory, each claim of run.json checked
    against what the probe's own files (and its SAE's) hold. `saes` caches SAEs by path."""
    from assay.errors import ConfigMismatchError
    from assay.fileio import sha256_json
    from assay.probes.inputs import load_sae

    run, spec = _parse_run(path)
    where = path / RUN_FILE
    present = [k for k in _RUN_CHECKS if run.get(k) is not None]
    if present and len(present) < len(_RUN_CHECKS):
        missing = next(k for k in _RUN_CHECKS if k not in present)
        raise ConfigMismatchError(f"{where} lacks {missing!r}, which `assay probe train` writes: it was edited; "
                                  "restore it or train the probe again")
    if present and run["inputs_sha256"] != sha256_json(run["inputs"]):
        raise ConfigMismatchError(f"{where} was edited after training: its inputs ({spec.kind}, "
                                  f"{spec.features_label}, layer {spec.layer}) are not the ones the probe was fit on; "
                                  "train a probe for those inputs instead")
    if present:
        _check_files(path, run["files_sha256"], spec.kind)
    probe = _load_any(path, spec.kind)
    if probe.kind != spec.kind or run.get("probe_kind", probe.kind) != probe.kind:
        raise ConfigMismatchError(f"{where} says kind {spec.kind!r}, but the saved probe is a "
                                  f"{probe.kind!r}; restore run.json or train the probe again")
    saes = {} if saes is None else saes
    if spec.sae and spec.sae not in saes:
        saes[spec.sae] = load_sae(spec.sae)
    sae = saes.get(spec.sae) if spec.sae else None
    if sae is not None and run.get("sae_sha256") and _sae_digest(spec.sae) != run["sae_sha256"]:
        raise ConfigMismatchError(f"the SAE at {spec.sae} changed since the probe in {path} was fit on its latents; "
                                  "restore that SAE or train the probe again")
    return run, spec, probe, sae


def _parse_run(path: Path):
    """run.json's record and the inputs it names, with their types checked."""
    from assay.errors import ConfigMismatchError, InputError
    from assay.fileio import read_json
    from assay.probes.inputs import ProbeInputs

    where = path / RUN_FILE
    if not where.is_file():
        raise InputError(f"{path} is not a probe directory (no {RUN_FILE}); pass directories written by "
                         "`assay probe train`")
    try:
        run = read_json(where)
        if not isinstance(run, dict) or not isinstance(run.get("inputs"), dict):
            raise TypeError("not a JSON object with an 'inputs' object")
        spec = ProbeInputs(**run["inputs"])
        types = {"kind": str, "feature": str, "model": (str, type(None)), "layer": (int, type(None)),
                 "sae": (str, type(None)), "sae_output": str}
        bad = next((k for k, t in types.items() if not isinstance(getattr(spec, k), t)), None)
        if bad or isinstance(spec.layer, bool) or not isinstance(run.get("dataset_fingerprint"), str):
            raise TypeError(f"inputs.{bad} is {getattr(spec, bad)!r}" if bad else "no dataset_fingerprint")
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigMismatchError(f"{where} is malformed ({type(err).__name__}: {err}); train the "
                                  "probe again") from None
    return run, spec


def _check_files(path: Path, recorded, kind: str) -> None:
    """The probe's files are the ones saved with this run.json: not damaged, nor swapped for another probe's."""
    from assay.errors import ConfigMismatchError

    if not isinstance(recorded, dict) or set(recorded) != set(_probe_files(kind)):
        raise ConfigMismatchError(f"{path / RUN_FILE}: files_sha256 is malformed; restore it or train the probe again")
    for name, digest in recorded.items():
        if not (path / name).is_file():
            raise ConfigMismatchError(f"{path} has no {name}, which its {RUN_FILE} records; the probe was not saved "
                                      "completely: train it again")
        if _digests(path, (name,))[name] != digest:
            raise ConfigMismatchError(f"{path / name} changed or was damaged after training (its sha256 differs from "
                                      f"the one in {RUN_FILE}); restore it or train the probe again")


def _method_name(spec, probe) -> str:
    cfg = getattr(probe, "config", None)
    if spec.kind == "k_sparse":
        return f"k_sparse[{cfg.select},k={cfg.k}]"
    return spec.kind
