"""Which layer: the dense probe at every layer, from one forward pass, and the study's layer chosen
on validation alone.

GDM chose their layer by sweeping. Here the pooled activations of every swept layer come from one
extraction (the forward stops at the deepest), a dense logistic probe is fitted at each layer and
aggregation exactly as the study fits its own (train, C chosen on val), and:

- the study's layer is the one whose probe has the highest validation AUROC averaged over the
  study's aggregations (ties: the shallower layer, which is cheaper to reach); OOD never enters;
- the three layers best on that same validation score are concatenated into one probe, to ask
  whether reading several layers beats reading the best one;
- each is compared like for like (same aggregation, same examples) with paired, clustered
  intervals against the layer chosen, and the chosen layer against the model's middle block (the
  study's default before it swept).

The sweep is cached in the run folder, keyed on the data, model, dtype, layers, settings and the
code that computes it.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from assay.experiment.context import StudyData
from assay.experiment.diagnostic_findings import layer_finding, ranked_layers
from assay.fileio import atomic_path, read_json, sha256_json, write_json

log = logging.getLogger(__name__)

CONCAT_LAYERS = 3  # how many of the best validation layers the concatenated probe reads
SWEEP_CODE = ("assay.experiment.layers", "assay.experiment.runs", "assay.probes.linear", "assay.probes.logistic", "assay.probes.inputs",
              "assay.activations.aggregation", "assay.metrics", "assay.metrics.bootstrap")


# The sweep keeps every swept layer's per-token activations when they take at most this much disk:
# the study's own extraction (its chosen layer, with tokens) then borrows them prompt by prompt
# (`assay.activations.reuse`) instead of running the benchmark through the model a second time.
# The quick benchmark: about 1.2 GB in bfloat16 (82k tokens x 11 layers); the full preset's
# standalone sweep (a million tokens x 18 layers) stays pooled only.
SWEEP_TOKEN_BYTES = 4 << 30


def token_bytes(lm: Any, texts: Any, n_layers: int) -> int:
    """Bytes that per-token activations of `texts` at `n_layers` layers take in the extraction dtype."""
    from assay.models.chat import format_prompts

    n_tokens = sum(len(p.input_ids) for p in format_prompts(lm.tokenizer, texts, max_tokens=lm.max_positions))
    return n_tokens * n_layers * lm.d_model * torch.empty((), dtype=lm.dtype).element_size()


def sweep_layers(n_layers: int, stride: int = 1) -> list[int]:
    """Blocks 0, stride, 2*stride, ... and always the last block (0-indexed)."""
    if stride < 1:
        raise ValueError(f"layer stride must be >= 1, got {stride}")
    layers = list(range(0, n_layers, stride))
    return layers if layers[-1] == n_layers - 1 else layers + [n_layers - 1]


def choose_layer(rows: list[dict[str, Any]]) -> int:
    """The layer with the highest validation AUROC averaged over aggregations; ties go to the
    shallower layer."""
    return ranked_layers(rows)[0]


def best_layers(rows: list[dict[str, Any]], n: int) -> list[int]:
    """The `n` layers best on mean validation AUROC, in depth order."""
    return sorted(ranked_layers(rows)[:n])


def layer_sweep(data: StudyData) -> dict[str, Any]:
    """The sweep for a study's data, model and splits, from its cache when it has one."""
    from assay.provenance import code_fingerprint

    cfg, lm = data.cfg, data.lm
    # the middle block (the default before sweeping) and a given layer are always read, so both
    # can be compared with the others like for like whatever the stride
    extra = {lm.n_layers // 2} | ({cfg.layer} if cfg.layer is not None else set())
    layers = sorted(set(sweep_layers(lm.n_layers, cfg.layer_stride)) | extra)
    key = sha256_json({"data": data.ds.fingerprint, "model": lm.fingerprint, "dtype": cfg.dtype, "layers": layers,
                       "aggregations": cfg.aggregations, "seed": cfg.seed, "target_fpr": cfg.target_fpr,
                       "calibrate_on": cfg.calibrate_on, "n_boot": cfg.n_boot, "given_layer": cfg.layer,
                       "code": code_fingerprint(*SWEEP_CODE)})[:12]
    path = data.out / f"layer_sweep-{key}.json"
    if path.exists():
        return read_json(path)
    sweep = _run_sweep(data, layers)
    write_json(path, sweep)
    return sweep


def load_sweep(path: Any, data: StudyData) -> dict[str, Any]:
    """A sweep written by `assay experiment layers` (its layer_sweep.json), for a study that reuses
    it instead of sweeping again: the full preset's sweep alone takes longer than the rest of the
    study's budget, so it is run once as its own command.

    The file must describe this study's sweep: same model, dtype, seed, benchmark, aggregations,
    target FPR and number of blocks, and (when it records them) the same data and model
    fingerprints; a file without fingerprints (older than they are) is checked instead on the
    number of clusters in each split its comparisons read. Raises `InputError` naming what differs."""
    from pathlib import Path

    from assay.errors import InputError

    path, cfg = Path(path), data.cfg
    try:
        sweep = read_json(path)
        prov = sweep["provenance"]
        expected = {"model": cfg.model, "dtype": cfg.dtype, "seed": cfg.seed, "preset": cfg.preset, "data": cfg.data}
        found = {k: prov.get(k) for k in expected}
        missing = [k for k in ("rows", "chosen", "used", "comparisons", "layers") if k not in sweep]
        if missing:
            raise KeyError(f"no {', '.join(missing)}")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise InputError(f"{path}: not a layer sweep written by `assay experiment layers` ({e}); run "
                         f"`assay experiment layers --preset {cfg.preset} --out DIR` and pass DIR/layer_sweep.json") from e
    diff = {k: f"the sweep has {found[k]!r}, this study {v!r}" for k, v in expected.items() if found[k] != v}
    for k, v in (("aggregations", list(cfg.aggregations)), ("target_fpr", cfg.target_fpr),
                 ("n_layers", data.lm.n_layers)):
        if k in sweep and sweep[k] != v:
            diff[k] = f"the sweep has {sweep[k]!r}, this study {v!r}"
    for k, v in (("dataset_fingerprint", data.ds.fingerprint), ("model_fingerprint", data.lm.fingerprint)):
        if k in sweep and sweep[k] != v:
            diff[k.replace("_", " ")] = "differs (another benchmark, subsample or split)" if k.startswith(
                "dataset") else "differs (other weights, dtype or tokenizer)"
    if "dataset_fingerprint" not in sweep:
        n_units = {s: len(np.unique(data.units[data.idx[s]])) for s in data.idx}
        for c in sweep["comparisons"]:
            if c["split"] in n_units and c.get("n_units") != n_units[c["split"]]:
                diff[f"clusters in {c['split']}"] = f"the sweep has {c.get('n_units')}, this study {n_units[c['split']]}"
    if cfg.layer is not None and sweep["used"] != cfg.layer:
        diff["layer"] = f"the sweep used {sweep['used']}, this study is given {cfg.layer}"
    if diff:
        what = "; ".join(f"{k}: {d}" for k, d in diff.items())
        raise InputError(f"{path} is a sweep of another setting ({what}); rerun `assay experiment layers` with this "
                         "study's settings, or drop --layer-sweep-from to sweep as part of the study")
    checked = "data and model fingerprints" if "dataset_fingerprint" in sweep else "clusters per split (no fingerprints recorded)"
    return {**{k: v for k, v in sweep.items() if k not in ("finding", "provenance")},
            "source": {"path": str(path), "checked": checked, "provenance": prov}}


def _run_sweep(data: StudyData, layers: list[int]) -> dict[str, Any]:
    from assay.activations import extract
    from assay.experiment.runs import fit_probe
    from assay.probes.inputs import InputSpec, Inputs
    from assay.probes.methods import make_probe

    cfg, lm = data.cfg, data.lm
    size = token_bytes(lm, data.ds.texts, len(layers))
    keep = size <= SWEEP_TOKEN_BYTES
    log.info("layer sweep: per-token activations of %d layers would take %.2f GB: %s", len(layers), size / 1e9,
             "kept, so the study's extraction at the chosen layer reads them" if keep else
             f"over {SWEEP_TOKEN_BYTES / 1e9:.1f} GB, so pooled only (the study extracts its layer again)")
    acts = extract(lm, data.ds.texts, layers, dataset_fingerprint=data.ds.fingerprint,
                   aggregations=sorted(set(cfg.aggregations)), store_tokens=keep, token_budget=cfg.token_budget,
                   progress=data.progress)
    scores: dict[tuple[Any, str], np.ndarray] = {}
    rows = []
    inputs = Inputs(acts, data.ds.texts)  # each spec names its layer

    def read(layer: int, agg: str) -> torch.Tensor:
        spec = InputSpec.for_method("dense-logistic", aggregation=agg, layer=layer, model=cfg.model)
        return inputs.read(spec)[0]

    def fit(name: Any, agg: str, X: torch.Tensor) -> None:
        s, _ = fit_probe(data, make_probe("dense-logistic", seed=cfg.seed), X)
        scores[(name, agg)] = np.asarray(s, np.float64).ravel()
        rows.append({"layer": name, "aggregation": agg, **_metrics(data, scores[(name, agg)])})

    for layer in _progress(layers, data.progress):
        for agg in cfg.aggregations:
            fit(layer, agg, read(layer, agg))
        inputs.release()  # every layer's matrices at once would be the sweep's largest memory
    middle = lm.n_layers // 2
    chosen = choose_layer(rows)
    concat = best_layers(rows, CONCAT_LAYERS)
    for agg in cfg.aggregations:
        fit("concat", agg, torch.cat([read(layer, agg) for layer in concat], 1))
    used = cfg.layer if cfg.layer is not None else chosen
    comparisons = []
    for agg in cfg.aggregations:
        pairs = [("concat", used)] + ([(used, middle)] if used != middle else [])
        for a, b in pairs:
            for split in (cfg.calibrate_on, "ood"):
                comparisons.append({"a": a, "b": b, "aggregation": agg, "split": split,
                                    **_paired(data, scores[(a, agg)], scores[(b, agg)], split)})
    return {"layers": layers, "aggregations": list(cfg.aggregations), "chosen": chosen, "used": used,
            "how": "given" if cfg.layer is not None else "validation", "middle": middle, "concat_layers": concat,
            "n_layers": lm.n_layers, "dtype": cfg.dtype, "target_fpr": cfg.target_fpr, "method": "dense-logistic",
            "rule": "highest validation AUROC averaged over the aggregations; ties to the shallower layer",
            "rows": rows, "comparisons": comparisons, "dataset_fingerprint": data.ds.fingerprint,
            "model_fingerprint": lm.fingerprint}


def write_sweep(sweep: dict[str, Any], out: Any, cfg: Any, timings: dict[str, float]) -> str:
    """`layer_sweep.json`, `.png` and `.md` in `out` (the sweep run on its own); returns the finding's text."""
    from pathlib import Path

    from assay.fileio import write_text
    from assay.provenance import provenance
    from assay.report.plots import layer_sweep_figure, png_bytes
    from assay.report.render import md_table
    from assay.report.tables import layer_sweep_table

    out = Path(out)
    text = layer_finding(sweep).text
    record = {**sweep, "finding": text, "provenance": provenance(
        model=cfg.model, dtype=cfg.dtype, seed=cfg.seed, preset=cfg.preset, data=cfg.data,
        timings_seconds={k: round(v, 1) for k, v in timings.items()})}
    write_json(out / "layer_sweep.json", record)
    with atomic_path(out / "layer_sweep.png") as tmp:
        tmp.write_bytes(png_bytes(layer_sweep_figure(sweep)))
    table = layer_sweep_table(sweep, cfg.calibrate_on)
    write_text(out / "layer_sweep.md", f"# Which layer ({cfg.preset} preset, {cfg.model}, {cfg.dtype})\n\n{text}\n\n"
               f"![layer sweep](layer_sweep.png)\n\n{md_table(table)}\n")
    return text


def _metrics(data: StudyData, s: np.ndarray) -> dict[str, Any]:
    """Validation and OOD AUROC (clustered intervals), and recall at the target FPR with the
    threshold set on the calibration split's benign prompts."""
    from assay.metrics import auroc, fpr_at_threshold, recall_at_fpr, threshold_at_fpr
    from assay.metrics.bootstrap import cluster_auroc_ci

    cfg, y, units = data.cfg, data.y, data.units
    cal = data.idx[cfg.calibrate_on]
    threshold = threshold_at_fpr(s[cal][y[cal] == 0], cfg.target_fpr)
    out: dict[str, Any] = {"threshold": float(threshold)}
    for split in ("val", "ood"):
        i = data.idx[split]
        out[f"{split}_auroc"] = auroc(s[i], y[i])
        out[f"{split}_auroc_ci"] = list(cluster_auroc_ci(s[i], y[i], units[i], n_boot=cfg.n_boot, seed=cfg.seed))
        out[f"{split}_recall"] = recall_at_fpr(s[i], y[i], threshold)
        out[f"{split}_fpr"] = fpr_at_threshold(s[i], y[i], threshold)
    return out


def _paired(data: StudyData, a: np.ndarray, b: np.ndarray, split: str) -> dict[str, Any]:
    from assay.metrics.bootstrap import paired_auroc_diff

    i = data.idx[split]
    return paired_auroc_diff(a[i], b[i], data.y[i], data.units[i], n_boot=data.cfg.n_boot, seed=data.cfg.seed)


def _progress(layers: list[int], enabled: bool):
    if not enabled:
        return layers
    from rich.progress import track

    return track(layers, description="dense probe at every layer")
