"""`assay probe train | eval | methods`: fit any registered method on a dataset's train split
(choices on val), score every split into a results JSON (render it with `assay report render`)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Optional

import typer

from assay import options

app = typer.Typer(help="Train and evaluate probes: dense, attention, SAE and text baselines, one interface.",
                  no_args_is_help=True)

RUN_FILE = "run.json"


def _split_indices(ds, name: str):
    import numpy as np

    return np.array([i for i, e in enumerate(ds.examples) if e.split == name], dtype=np.int64)


def _inputs(ds, spec, dtype: str, sae: Any = None):
    """`Inputs` over `ds` for `spec`: the model loaded and the layer extracted only when it reads activations."""
    from assay.activations import DEFAULT_AGGREGATIONS, extract
    from assay.probes.inputs import Inputs

    if spec.layer is None and spec.model is None:
        return Inputs(texts=ds.texts, dtype=dtype), None
    from assay.models import load

    lm = load(spec.model, dtype=dtype)
    layer = lm.n_layers // 2 if spec.layer is None else spec.layer
    aggs = list(dict.fromkeys([*DEFAULT_AGGREGATIONS, *([spec.aggregation] if spec.aggregation else [])]))
    acts = extract(lm, ds.texts, [layer], dataset_fingerprint=ds.fingerprint, aggregations=aggs)
    if sae is not None:
        from assay.sae.checks import check_sae_fits

        check_sae_fits(sae, lm.d_model, layer, spec.sae)
    return Inputs(acts, ds.texts, layer=layer, aggregations=[spec.aggregation] if spec.aggregation else [],
                  dtype=dtype), lm


@app.command("methods")
def methods_cmd() -> None:
    """The registered methods: name, what each reads, what it is."""
    from assay.probes.methods import METHODS

    for m in METHODS.values():
        typer.echo(f"{m.name:22s} {m.reads:20s} {m.summary}")


@app.command()
def train(
    data: str = options.DATA,
    out: Path = typer.Option(..., help="Directory to write the probe into."),
    method: str = typer.Option("dense-logistic", help="A method of `assay probe methods`."),
    aggregation: Optional[str] = options.AGGREGATION,
    model: str = options.MODEL,
    layer: Optional[int] = options.LAYER,
    sae: Optional[str] = typer.Option(None, help="SAE directory, for methods on SAE latents, reconstruction or error."),
    k: int = options.K,
    select: str = options.SELECT,
    window: int = typer.Option(10, help="Window of the max-rolling-attention probe."),
    last_tokens: int = options.LAST_TOKENS,
    train_split: str = typer.Option("train", help="Split to fit on."),
    val_split: str = typer.Option("val", help="Split that chooses hyperparameters ('' for none)."),
    seed: int = options.SEED,
    dtype: str = options.DTYPE,
) -> None:
    """Fit METHOD on TRAIN_SPLIT, choose its hyperparameters on VAL_SPLIT, save it to OUT with a run record."""
    from assay.data import load_or_build
    from assay.errors import InputError
    from assay.fileio import sha256_json, write_json
    from assay.probes.base import CONFIG_FILE, WEIGHTS_FILE
    from assay.probes.inputs import InputSpec
    from assay.probes.methods import make_probe, method as get_method
    from assay.probes.sparse import SELECTORS
    from assay.provenance import provenance
    from assay.sae.io import load_sae

    for hint, ok, why in (("--k", k >= 1, f"{k} latents: use at least 1"),
                          ("--select", select in SELECTORS, f"{select!r}: use mean_diff or l1"),
                          ("--window", window >= 1, f"{window}: use at least 1"),
                          ("--last-tokens", last_tokens >= 1, f"{last_tokens}: use at least 1")):
        if not ok:
            raise typer.BadParameter(why, param_hint=hint)
    m = get_method(method)
    if sae is not None and not (Path(sae) / "cfg.json").is_file():
        raise typer.BadParameter(f"{sae} is not a saved SAE (no cfg.json)", param_hint="--sae")
    reads_activations = m.reads not in ("text", "sentence-embedding")  # text methods never touch the model
    spec = InputSpec.for_method(method, aggregation=aggregation, model=model, sae=sae, max_tokens=last_tokens,
                                layer=options.resolve_layer(model, layer) if reads_activations else None)
    dtype = options.resolve_dtype_choice(dtype) if spec.model else "float32"
    takes = {f.name for f in dataclasses.fields(m.probe.Config)}
    probe = make_probe(method, seed=seed, **{o: v for o, v in (("k", k), ("select", select), ("window", window))
                                             if o in takes})
    ds = load_or_build(data, seed)
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
    sae_obj = load_sae(sae) if sae else None
    inputs, lm = _inputs(ds, spec, dtype, sae_obj)
    if lm is not None:
        spec = InputSpec(**{**spec.to_dict(), "model": lm.name, "layer": inputs.layer})
    probe.inputs = spec.to_dict()
    X, mask = inputs.read(spec, sae_obj)
    kw = {} if mask is None else {"mask": mask[tr], "mask_val": mask[va] if len(va) else None}
    probe.fit(X[tr], y[tr], X[va] if len(va) else None, y[va] if len(va) else None, **kw)
    probe.save(out)
    write_json(out / RUN_FILE, {
        "data": str(data), "dataset_fingerprint": ds.fingerprint, "seed": seed, "dtype": dtype,
        # What `probe eval` checks before it trusts the probe: its files are the ones saved here,
        # and the SAE it reads is the one it was fit on.
        "files_sha256": _digests(out, (CONFIG_FILE, WEIGHTS_FILE)), "sae_sha256": _sae_digest(sae) if sae else None,
        "d_in": int(X.shape[-1]) if spec.model else None, "inputs_sha256": sha256_json(spec.to_dict()),
        "train_split": train_split, "val_split": val_split, "n_train": len(tr), "n_val": len(va),
        "provenance": provenance(model=spec.model, layer=spec.layer, dataset_fingerprint=ds.fingerprint, seed=seed,
                                 dtype=dtype),
    })
    typer.echo(f"saved {method} probe to {out}: {json.dumps(probe.meta, default=str)[:300]}")


def _digests(folder: Path, names: tuple[str, ...]) -> dict[str, str]:
    from assay.fileio import sha256_file

    return {name: sha256_file(folder / name) for name in names}


def _sae_digest(path: str | Path) -> str:
    """One digest of an SAE's config and weights: a probe fit on its latents means nothing on another's."""
    from assay.fileio import sha256_json
    from assay.sae.io import CFG_FILE, WEIGHTS_FILE

    return sha256_json(_digests(Path(path), (CFG_FILE, WEIGHTS_FILE)))


@app.command("eval")
def evaluate(
    probes: list[Path] = typer.Argument(..., help="Probe directories written by `assay probe train`."),
    data: str = options.DATA,
    out: Path = typer.Option(Path("results.json"), help="Results JSON (assay.report.schema.Report)."),
    calibrate_on: Optional[str] = typer.Option(None, help="Split whose benign examples set the threshold (default: calib if the data has it, else val)."),
    target_fpr: float = typer.Option(0.01, help="False-positive rate the threshold is set for."),
    n_boot: int = typer.Option(1000, help="Bootstrap resamples for intervals."),
    seed: int = options.SEED,
    dtype: Optional[str] = typer.Option(None, "--dtype", help="auto | float32 | bfloat16 for every forward pass; "
                                        "default: the dtype each probe was trained in."),
) -> None:
    """Score every split with each probe; threshold on benign CALIBRATE_ON examples at TARGET_FPR."""
    from assay.data import load_or_build
    from assay.errors import ConfigMismatchError
    from assay.fileio import write_text
    from assay.probes.methods import METHODS
    from assay.provenance import provenance
    from assay.report.evaluate import SplitScores, evaluate_method
    from assay.report.published import gdm_published
    from assay.report.schema import Provenance, Report

    if not 0 < target_fpr < 1:
        raise typer.BadParameter(f"{target_fpr}: a false-positive rate is between 0 and 1 (e.g. 0.01)",
                                 param_hint="--target-fpr")
    if n_boot < 10:
        raise typer.BadParameter(f"{n_boot}: intervals need at least 10 bootstrap resamples (1000 is the default)",
                                 param_hint="--n-boot")
    # By default each probe reads activations in the dtype it was trained in: `auto` decided anew
    # could pick the other one here (another machine, or a matmul probe timed under load), and move
    # every score and threshold away from the ones the probe was fit and validated on.
    given_dtype = options.resolve_dtype_choice(dtype) if dtype is not None else None
    saes: dict[str, object] = {}  # probes that share an SAE share one copy
    loaded = [_read_run(path, saes) for path in probes]  # every probe checked before any work starts
    ds = load_or_build(data, seed)
    calibrate_on = calibrate_on or ("calib" if "calib" in ds.splits else "val")
    if calibrate_on not in ds.splits:
        raise typer.BadParameter(f"no split {calibrate_on!r} to calibrate on; splits are {ds.splits}")
    y = ds.labels
    results, runs, readers = [], [], {}
    for path, (run, spec, probe, sae_obj) in zip(probes, loaded):
        if run["dataset_fingerprint"] != ds.fingerprint:
            typer.echo(f"note: {path} was trained on dataset {run['dataset_fingerprint'][:12]}, evaluating on {ds.fingerprint[:12]}")
        run_dtype = (given_dtype or run["dtype"]) if spec.model else "float32"
        key = (spec.model, spec.layer, run_dtype)
        if key not in readers:
            readers[key] = _inputs(ds, spec, run_dtype, sae_obj)[0]
        elif sae_obj is not None:
            from assay.sae.checks import check_sae_fits

            check_sae_fits(sae_obj, readers[key].acts.d_model, spec.layer, spec.sae)
        X, mask = readers[key].read(spec, sae_obj)
        if run.get("d_in") is not None and X.shape[-1] != run["d_in"]:
            raise ConfigMismatchError(f"{path}: the probe was fit on {run['d_in']}-dimensional inputs, but "
                                      f"{spec.label} at layer {spec.layer} of {spec.model} has {X.shape[-1]}")
        scores = probe.score(X, mask) if mask is not None else probe.score(X)
        splits = {}
        for split in ds.splits:
            idx = _split_indices(ds, split)
            ex = [ds.examples[i] for i in idx]
            splits[split] = SplitScores(scores[idx], y[idx], {"family": [e.family for e in ex],
                                                              "transformation": [e.transformation for e in ex],
                                                              "source": [e.source for e in ex]},
                                        units=ds.clusters[idx].tolist())
        latents = getattr(probe, "latents", None)
        cfg = probe.config
        results += evaluate_method(
            probe.method, splits, features=spec.label, calibrate_on=calibrate_on, target_fpr=target_fpr,
            n_boot=n_boot, seed=seed, kind=METHODS[probe.method].kind, sae=spec.sae,
            k=len(latents) if latents is not None else None, selector=getattr(cfg, "select", None),
            latents=[int(i) for i in latents] if latents is not None else None, model=spec.model, layer=spec.layer,
            dataset_fingerprint=ds.fingerprint, config={"probe": str(path), "meta": probe.meta})
        runs.append({"probe": str(path), "method": probe.method, **spec.to_dict(), "dtype": run_dtype})
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


def _read_run(path: Path, saes: dict[str, object] | None = None):
    """(run record, input spec, probe, SAE or None) of a probe directory, the probe's files checked
    against the digests run.json recorded when it was saved, and its SAE against its digest."""
    from assay.errors import ConfigMismatchError, InputError
    from assay.fileio import read_json
    from assay.probes.base import CONFIG_FILE, WEIGHTS_FILE, load_probe
    from assay.probes.inputs import InputSpec
    from assay.probes.methods import METHODS
    from assay.sae.io import load_sae

    where = path / RUN_FILE
    if not where.is_file():
        raise InputError(f"{path} is not a probe directory (no {RUN_FILE}); pass directories written by "
                         "`assay probe train`")
    try:
        run = read_json(where)
        if not isinstance(run, dict) or not isinstance(run.get("dataset_fingerprint"), str) \
                or not isinstance(run.get("files_sha256"), dict):
            raise TypeError("not a JSON object with dataset_fingerprint and files_sha256")
        if run.get("dtype") not in ("float32", "bfloat16"):
            raise TypeError(f"dtype is {run.get('dtype')!r}, not float32 or bfloat16")
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigMismatchError(f"{where} is malformed ({type(err).__name__}: {err}); train the probe again") from None
    recorded = run["files_sha256"]
    if set(recorded) != {CONFIG_FILE, WEIGHTS_FILE}:
        raise ConfigMismatchError(f"{where}: files_sha256 is malformed; restore it or train the probe again")
    for name, digest in recorded.items():
        if not (path / name).is_file():
            raise ConfigMismatchError(f"{path} has no {name}, which its {RUN_FILE} records; the probe was not saved "
                                      "completely: train it again")
        if _digests(path, (name,))[name] != digest:
            raise ConfigMismatchError(f"{path / name} changed or was damaged after training (its sha256 differs from "
                                      f"the one in {RUN_FILE}); restore it or train the probe again")
    probe = load_probe(path)
    spec = InputSpec.from_dict(probe.inputs)
    if spec.reads != METHODS[probe.method].reads:
        raise ConfigMismatchError(f"{path / CONFIG_FILE}: a {probe.method} probe reads {METHODS[probe.method].reads}, "
                                  f"but its input spec says {spec.reads}; train the probe again")
    saes = {} if saes is None else saes
    if spec.sae and spec.sae not in saes:
        saes[spec.sae] = load_sae(spec.sae)
    sae = saes.get(spec.sae) if spec.sae else None
    if sae is not None and run.get("sae_sha256") and _sae_digest(spec.sae) != run["sae_sha256"]:
        raise ConfigMismatchError(f"the SAE at {spec.sae} changed since the probe in {path} was fit on its latents; "
                                  "restore that SAE or train the probe again")
    return run, spec, probe, sae
