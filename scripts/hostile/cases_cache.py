"""Hostile inputs for the activation cache ("cache") and saved probes, SAEs and reports ("saved").

These add to the cache/saved cases in cases_files.py: hand-edited manifests whose fields still
parse, probe and SAE files swapped or replaced after training, and careless arguments.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from hostile_inputs import Case, Fixtures


def _assay(*argv: str, cache: Path) -> None:
    """Run a good assay command while planting a case (its failure is the harness's)."""
    env = {**os.environ, "ASSAY_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    subprocess.run([sys.executable, "-m", "assay.cli", *argv], env=env, check=True, capture_output=True)


def _json_edit(path: Path, change) -> None:
    obj = json.loads(path.read_text())
    change(obj)
    path.write_text(json.dumps(obj))


# --- the activation cache ------------------------------------------------------------------------

def _entry_then(fx: Fixtures, damage):
    """Extract the good CSV into the case's own cache ({w}/cache), then damage the entry."""
    def setup(work: Path) -> None:
        _assay("activations", "extract", "--data", str(fx.data_csv), "--model", str(fx.model), "--layer", "1",
               cache=work / "cache")
        (entry,) = [p for p in (work / "cache" / "activations").iterdir() if p.is_dir()]
        damage(entry)
    return setup


def _manifest_edit(change):
    return lambda entry: _json_edit(entry / "manifest.json", change)


def _shrink(m: dict) -> None:
    """One example fewer, consistently: the manifest still adds up, but not to the dataset."""
    m["n_examples"] -= 1
    m["shards"][0]["n_examples"] -= 1


def _same_as_fresh(fx: Fixtures):
    """The entry the command left holds exactly what a clean extraction into an empty cache holds."""
    def check(work: Path, proc) -> str | None:
        from safetensors.torch import load_file

        _assay("activations", "extract", "--data", str(fx.data_csv), "--model", str(fx.model), "--layer", "1",
               cache=work / "fresh")

        def tensors(root: Path) -> dict:
            (entry,) = [p for p in (root / "activations").iterdir() if p.is_dir()]
            return {f"{f.name}:{k}": v for f in sorted(entry.glob("shard-*")) for k, v in load_file(f).items()}

        a, b = tensors(work / "cache"), tensors(work / "fresh")
        same = a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)
        return None if same else "the rebuilt entry differs from a clean extraction"
    return check


def _shows_corrupt(work: Path, proc) -> str | None:
    return None if "corrupt" in proc.stdout else "the damaged entry was listed as a good one"


def _cache_gone(work: Path, proc) -> str | None:
    left = [p.name for p in (work / "cache" / "activations").iterdir()]
    return None if not left else f"entries left after rm: {left}"


def _cache_cases(fx: Fixtures) -> list[Case]:
    m = str(fx.model)
    extract = ["activations", "extract", "--data", str(fx.data_csv), "--model", m]
    own = {"ASSAY_CACHE": "{w}/cache"}
    rebuilt = dict(expect="ok", env=own, check=_same_as_fresh(fx))
    return [
        Case("cache", "manifest-count-edited-rebuilt", extract + ["--layer", "1"],
             setup=_entry_then(fx, _manifest_edit(_shrink)), **rebuilt),
        Case("cache", "manifest-complete-shard-record-null-rebuilt", extract + ["--layer", "1"],
             setup=_entry_then(fx, _manifest_edit(lambda o: o["shards"].__setitem__(0, None))), **rebuilt),
        Case("cache", "manifest-shard-path-escapes-rebuilt", extract + ["--layer", "1"],
             setup=_entry_then(fx, _manifest_edit(lambda o: o["shards"][0].update(file="../../../etc/hostname"))),
             **rebuilt),
        Case("cache", "manifest-d-model-edited-rebuilt", extract + ["--layer", "1"],
             setup=_entry_then(fx, _manifest_edit(lambda o: o.update(d_model=32))), **rebuilt),
        Case("cache", "manifest-empty-file-probe-train", ["probe", "train", "--data", str(fx.data_csv), "--out",
                                                          "{w}/p", "--model", m, "--layer", "1", "--aggregation", "all.mean"],
             expect="ok", env=own, setup=_entry_then(fx, lambda e: (e / "manifest.json").write_text(""))),
        Case("cache", "manifest-spec-lacks-dtype-list", ["activations", "list"], expect="ok", env=own,
             setup=_entry_then(fx, _manifest_edit(lambda o: o["spec"].pop("dtype"))), check=_shows_corrupt),
        Case("cache", "manifest-is-a-directory-list", ["activations", "list"], expect="ok", env=own,
             setup=_entry_then(fx, lambda e: ((e / "manifest.json").unlink(), (e / "manifest.json").mkdir())),
             check=_shows_corrupt),
        Case("cache", "rm-corrupt-entry", ["activations", "rm", "--all"], expect="ok", env=own,
             setup=_entry_then(fx, lambda e: (e / "manifest.json").write_text("{garbled")), check=_cache_gone),
        Case("cache", "rm-empty-key", ["activations", "rm", ""]),
        Case("cache", "list-empty-cache", ["activations", "list"], expect="ok", env=own),
        Case("cache", "cache-root-is-a-file", extract + ["--layer", "1"], env={"ASSAY_CACHE": "{w}/file"},
             setup=lambda w: (w / "file").write_text("not a folder")),
        Case("cache", "extract-token-budget-negative", extract + ["--layer", "1", "--token-budget=-5"]),
        Case("cache", "extract-max-tokens-one", extract + ["--layer", "1", "--max-tokens", "1"]),
        Case("cache", "extract-max-tokens-below-template", extract + ["--layer", "1", "--max-tokens", "3"]),
        Case("cache", "extract-dtype-unknown", extract + ["--layer", "1", "--dtype", "float8"]),
        Case("cache", "extract-layer-astronomical", extract + ["--layer", "99999999999999999999"]),
        Case("cache", "extract-feature-resp-zero", extract + ["--layer", "1", "--aggregation", "resp-0"]),
        Case("cache", "extract-layers-float", extract + ["--layer", "1.5"]),
        # issue 14's array-job path: a malformed part, and one task launched with another shard size
        *[Case("cache", f"extract-shard-{name}", extract + ["--layer", "1", "--shard", bad])
          for name, bad in (("i-equals-n", "2/2"), ("zero-parts", "0/0"), ("negative", "-1/2"), ("words", "a/b"))],
        Case("cache", "extract-part-other-shard-tokens", extract + ["--layer", "1", "--shard", "1/2"], env=own,
             setup=lambda w: _assay("activations", "extract", "--data", str(fx.data_csv), "--model", m, "--layer", "1",
                                    "--shard", "0/2", "--shard-tokens", "64", cache=w / "cache")),
    ]


# --- saved probes, SAEs and reports --------------------------------------------------------------

def _probe(fx: Fixtures, out: Path, *extra: str) -> None:
    _assay("probe", "train", "--data", str(fx.data_csv), "--out", str(out), *extra, cache=fx.cache)


def _logistic(fx: Fixtures, out: Path, layer: int = 1) -> None:
    _probe(fx, out, "--model", str(fx.model), "--layer", str(layer), "--aggregation", "all.mean")


def _rehash(p: Path) -> None:
    """Record probe.json's new digest in run.json, as a user covering an edit would."""
    from assay.fileio import sha256_file

    _json_edit(p / "run.json", lambda o: o["files_sha256"].update({"probe.json": sha256_file(p / "probe.json")}))


def _probe_then(fx: Fixtures, damage):
    def setup(work: Path) -> None:
        _logistic(fx, work / "p")
        damage(work / "p")
    return setup


def _sae(path: Path, arch: str = "topk", layer: int = 1, seed: int = 0, d_in: int = 64, **meta) -> Path:
    from assay.sae.base import build_sae
    from assay.sae.io import save_sae

    kw = {"k": 4} if arch == "topk" else {}
    return save_sae(build_sae(arch, d_in=d_in, d_sae=32, seed=seed, **kw), path,
                    metadata={"assay_layer": layer, "hook_name": f"blocks.{layer}.hook_resid_post", **meta})


def _sae_then(damage, arch: str = "topk"):
    def setup(work: Path) -> None:
        damage(_sae(work / "s", arch))
    return setup


def _nan_weights(s: Path) -> None:
    from safetensors.torch import load_file, save_file

    t = load_file(s / "sae_weights.safetensors")
    t["W_dec"][3] = float("nan")
    save_file(t, s / "sae_weights.safetensors")


def _topk_cfg_on_jumprelu(s: Path) -> None:
    """A JumpReLU SAE's cfg.json rewritten as a SAELens TopK one: its weights still hold `threshold`."""
    def change(o: dict) -> None:
        o.update(architecture="topk", k=4)
        o["metadata"].pop("assay")
    _json_edit(s / "cfg.json", change)


def _k_sparse_then(fx: Fixtures, damage):
    """A k-sparse probe on an SAE's latents ({w}/s), then the SAE damaged or replaced."""
    def setup(work: Path) -> None:
        _sae(work / "s")
        _probe(fx, work / "p", "--model", str(fx.model), "--layer", "1", "--aggregation", "all.mean", "--sae",
               str(work / "s"), "--method", "k-sparse", "--k", "2")
        damage(work)
    return setup


def _reused_folder(fx: Fixtures):
    """A tf-idf baseline trained into {w}/p, then a logistic probe into the same folder."""
    def setup(work: Path) -> None:
        _probe(fx, work / "p", "--method", "tfidf")
        _logistic(fx, work / "p")
    return setup


def _scored_as_logistic(work: Path, proc) -> str | None:
    rows = json.loads((work / "r.json").read_text())["results"]
    wrong = {r["features"] for r in rows} - {"all.mean"}
    return f"scored as {wrong} under the logistic label" if wrong else None


def _no_report(work: Path) -> str | None:
    return "wrote results though a probe was refused" if (work / "r.json").exists() else None


def _saved_cases(fx: Fixtures) -> list[Case]:
    m, data = str(fx.model), str(fx.data_csv)
    ev = ["probe", "eval", "{w}/p", "--data", data, "--out", "{w}/r.json", "--n-boot", "20"]
    sae_eval = ["sae", "eval", "{w}/s", "--model", m]
    sae_train = ["probe", "train", "--data", data, "--model", m, "--layer", "1", "--sae", "{w}/s", "--method",
                 "k-sparse", "--k", "2", "--aggregation", "all.mean", "--out", "{w}/p"]
    return [
        Case("saved", "eval-weights-from-another-layers-probe", ev, after=_no_report, setup=_probe_then(
            fx, lambda p: (_logistic(fx, p.parent / "p2", layer=2),
                           shutil.copy(p.parent / "p2" / "probe.safetensors", p / "probe.safetensors")))),
        Case("saved", "eval-probe-json-garbled", ev, after=_no_report,
             setup=_probe_then(fx, lambda p: (p / "probe.json").write_text("{x"))),
        Case("saved", "eval-run-json-not-an-object", ev, setup=_probe_then(fx, lambda p: (p / "run.json").write_text("[1]"))),
        Case("saved", "eval-run-json-digest-removed", ev, after=_no_report,
             setup=_probe_then(fx, lambda p: (_json_edit(p / "probe.json", lambda o: o["inputs"].update(layer=2)),
                                              _json_edit(p / "run.json", lambda o: o.pop("files_sha256"))))),
        Case("saved", "eval-run-json-digests-rewritten", ev, after=_no_report, setup=_probe_then(fx, lambda p: (
            _json_edit(p / "probe.json", lambda o: o["inputs"].update(layer="one")),
            _rehash(p)))),
        Case("saved", "eval-old-probe-format", ev, after=_no_report, setup=_probe_then(fx, lambda p: (
            _json_edit(p / "probe.json", lambda o: (o.pop("method"), o.update(kind="logistic"))),
            _rehash(p)))),
        Case("saved", "eval-reused-folder-stale-baseline", ev, expect="ok", setup=_reused_folder(fx),
             check=_scored_as_logistic),
        Case("saved", "eval-second-probe-not-a-probe", ev[:3] + ["{w}"] + ev[3:], after=_no_report,
             setup=_probe_then(fx, lambda p: None)),
        Case("saved", "eval-sae-replaced-after-training", ev, after=_no_report,
             setup=_k_sparse_then(fx, lambda w: _sae(w / "s", seed=1))),
        Case("saved", "eval-sae-deleted-after-training", ev, after=_no_report,
             setup=_k_sparse_then(fx, lambda w: shutil.rmtree(w / "s"))),
        Case("saved", "sae-nan-weights", sae_eval, setup=_sae_then(_nan_weights)),
        Case("saved", "sae-cfg-missing", sae_eval, setup=_sae_then(lambda s: (s / "cfg.json").unlink())),
        Case("saved", "sae-cfg-not-an-object", sae_eval, setup=_sae_then(lambda s: (s / "cfg.json").write_text("[1]"))),
        Case("saved", "sae-cfg-metadata-a-list", sae_eval,
             setup=_sae_then(lambda s: _json_edit(s / "cfg.json", lambda o: o.update(metadata=[1])))),
        Case("saved", "sae-topk-cfg-on-jumprelu-weights", sae_eval, setup=_sae_then(_topk_cfg_on_jumprelu, "jumprelu")),
        Case("saved", "sae-assay-layer-not-a-number", sae_eval,
             setup=_sae_then(lambda s: _json_edit(s / "cfg.json", lambda o: o["metadata"].update(assay_layer="one")))),
        Case("saved", "sae-d-in-not-the-models", sae_train, setup=lambda w: _sae(w / "s", d_in=32)),
        Case("saved", "sae-other-layer-probe-train", sae_train, setup=lambda w: _sae(w / "s", layer=2)),
        Case("saved", "report-render-missing-file", ["report", "render", "{w}/nope.json"]),
        Case("saved", "report-render-empty-file", ["report", "render", "{w}/r.json"],
             setup=lambda w: (w / "r.json").write_text("")),
        Case("saved", "report-render-json-list", ["report", "render", "{w}/r.json"],
             setup=lambda w: (w / "r.json").write_text("[]")),
    ]


def cases(fx: Fixtures) -> list[Case]:
    return _cache_cases(fx) + _saved_cases(fx)
