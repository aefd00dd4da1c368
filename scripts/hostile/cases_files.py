"""Hostile inputs: user data files, models, the activation cache, saved probes, SAEs and reports."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from hostile_inputs import Case, Fixtures

def _file(name: str, content: str | bytes):
    def setup(work: Path) -> None:
        (work / name).write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return setup


def _model_copy(fx: Fixtures, damage):
    def setup(work: Path) -> None:
        shutil.copytree(fx.model, work / "m")
        damage(work / "m")
    return setup


def _extracted_then_edited(fx: Fixtures):
    """A local model folder extracted once, then 4 bytes changed mid-file (size, head and tail kept)."""
    def setup(work: Path) -> None:
        shutil.copytree(fx.model, work / "m")
        env = {**os.environ, "ASSAY_CACHE": str(work / "cache"), "HF_HUB_OFFLINE": "1"}
        subprocess.run([sys.executable, "-m", "assay.cli", "activations", "extract", "--data", str(fx.data_csv), "--model",
                        str(work / "m"), "--layer", "1"], env=env, check=True, capture_output=True)
        f = work / "m" / "model.safetensors"
        data = bytearray(f.read_bytes())
        mid = len(data) // 2
        data[mid:mid + 4] = bytes(b ^ 0x01 for b in data[mid:mid + 4])
        f.write_bytes(bytes(data))
    return setup


def _two_entries(work: Path, proc) -> str | None:
    n = len([p for p in (work / "cache" / "activations").iterdir() if (p / "manifest.json").exists()])
    return None if n == 2 else f"{n} cache entries: the edited model reused the old activations"


def _same_as_fresh(fx: Fixtures):
    """The repaired entry holds exactly what a clean extraction into an empty cache holds."""
    def check(work: Path, proc) -> str | None:
        from safetensors.torch import load_file

        env = {**os.environ, "ASSAY_CACHE": str(work / "fresh"), "HF_HUB_OFFLINE": "1"}
        subprocess.run([sys.executable, "-m", "assay.cli", "activations", "extract", "--data", str(fx.data_csv), "--model",
                        str(fx.model), "--layer", "1"], env=env, check=True, capture_output=True)

        def tensors(root: Path) -> dict:
            (entry,) = [p for p in (root / "activations").iterdir() if p.is_dir()]
            return {f"{f.name}:{k}": v for f in sorted(entry.glob("shard-*")) for k, v in load_file(f).items()}

        a, b = tensors(work / "cache"), tensors(work / "fresh")
        same = a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)
        return None if same else "the rebuilt entry differs from a clean extraction"
    return check


def _extract_then(fx: Fixtures, damage, cache: str = "cache"):
    """Extract the good CSV into the case's own cache, then damage the entry."""
    def setup(work: Path) -> None:
        env = {**os.environ, "ASSAY_CACHE": str(work / cache), "HF_HUB_OFFLINE": "1"}
        subprocess.run([sys.executable, "-m", "assay.cli", "activations", "extract", "--data", str(fx.data_csv), "--model",
                        str(fx.model), "--layer", "1"], env=env, check=True, capture_output=True)
        (entry,) = [p for p in (work / cache / "activations").iterdir() if p.is_dir()]
        damage(entry)
    return setup


def _probe_then(fx: Fixtures, damage, kind: str = "dense-logistic"):
    """Train a probe on the tiny model into {w}/p (shared fixture cache), then damage it."""
    def setup(work: Path) -> None:
        env = {**os.environ, "ASSAY_CACHE": str(fx.cache), "HF_HUB_OFFLINE": "1"}
        extra = ["--model", str(fx.model), "--layer", "1", "--aggregation", "all.mean"] if kind != "tfidf" else []
        subprocess.run([sys.executable, "-m", "assay.cli", "probe", "train", "--data", str(fx.data_csv), "--out",
                        str(work / "p"), "--method", kind, *extra], env=env, check=True, capture_output=True)
        damage(work / "p")
    return setup


def _json_edit(path: Path, change) -> None:
    obj = json.loads(path.read_text())
    change(obj)
    path.write_text(json.dumps(obj))


def _sae(work: Path, **meta) -> Path:
    from assay.sae.base import build_sae
    from assay.sae.io import save_sae

    return save_sae(build_sae("topk", d_in=64, d_sae=32, k=4), work / "s",
                    metadata={"assay_layer": 1, "hook_name": "blocks.1.hook_resid_post", **meta})


def _sae_then(damage):
    def setup(work: Path) -> None:
        damage(_sae(work))
    return setup


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


def cases(fx: Fixtures) -> list[Case]:
    m = str(fx.model)
    out: list[Case] = []  # user data files: cases_data.py
    extract = ["activations", "extract", "--data", str(fx.data_csv), "--model"]
    out += [
        Case("models", "empty-name", ["models", "prepare", ""]),
        Case("models", "missing-path", ["models", "prepare", "{w}/nope"]),
        Case("models", "missing-gguf", ["models", "prepare", "{w}/nope.gguf"]),
        Case("models", "not-a-gguf", ["models", "prepare", "{w}/fake.gguf"], setup=_file("fake.gguf", "hello")),
        Case("models", "folder-without-config", ["models", "prepare", "{w}"]),
        Case("models", "config-not-json", ["models", "prepare", "{w}/m"],
             setup=_model_copy(fx, lambda d: (d / "config.json").write_text("{oops"))),
        Case("models", "unknown-architecture", ["models", "prepare", "{w}/m"],
             setup=_model_copy(fx, lambda d: (d / "config.json").write_text('{"model_type": "frobnicator"}'))),
        Case("models", "not-a-causal-lm", ["models", "prepare", "{w}/m"],
             setup=_model_copy(fx, lambda d: (d / "config.json").write_text(
                 '{"model_type": "bert", "architectures": ["BertModel"], "vocab_size": 100}'))),
        Case("models", "no-weights", ["models", "prepare", "{w}/m"],
             setup=_model_copy(fx, lambda d: (d / "model.safetensors").unlink())),
        Case("models", "truncated-weights", ["models", "prepare", "{w}/m"],
             setup=_model_copy(fx, lambda d: _truncate(d / "model.safetensors"))),
        Case("models", "no-tokenizer", ["models", "prepare", "{w}/m"],
             setup=_model_copy(fx, lambda d: [(d / f).unlink() for f in os.listdir(d) if f.startswith(("tokenizer", "special"))])),
        Case("models", "uncached-hub-id-offline", ["models", "prepare", "some-org/not-a-real-model"],
             check=None, timeout=30),
        Case("models", "dtype-unknown", ["models", "prepare", m, "--dtype", "int4"]),
        Case("models", "extract-missing-model", extract + ["{w}/nope", "--layer", "1"]),
        Case("models", "extract-layer-past-last-block", extract + [m, "--layer", "4"]),
        Case("models", "extract-layers-not-numbers", extract + [m, "--layer", "a"]),
        Case("models", "extract-no-layers", extract + [m, "--layer", ""]),
        Case("models", "extract-negative-layer", extract + [m, "--layer=-1"]),
        Case("models", "changed-middle-bytes-new-key", ["activations", "extract", "--data", str(fx.data_csv), "--model", "{w}/m",
                                                        "--layer", "1"], expect="ok", env={"ASSAY_CACHE": "{w}/cache"},
             setup=_extracted_then_edited(fx), check=_two_entries),
    ]

    def _other_key_after_edit(work: Path, proc) -> str | None:
        return None

    out += [
        Case("cache", "extract-unknown-feature", extract + [m, "--layer", "1", "--aggregation", "all.median"]),
        Case("cache", "extract-features-empty", extract + [m, "--layer", "1", "--aggregation", ","]),
        Case("cache", "extract-token-budget-zero", extract + [m, "--layer", "1", "--token-budget", "0"]),
        Case("cache", "extract-max-tokens-zero", extract + [m, "--layer", "1", "--max-tokens", "0"]),
        Case("cache", "extract-unknown-split", extract + [m, "--layer", "1", "--split", "nope"]),
        Case("cache", "extract-missing-data", ["activations", "extract", "{w}/nope.csv", "--model", m, "--layer", "1"]),
        Case("cache", "rm-unknown-key", ["activations", "rm", "deadbeef"]),
        Case("cache", "rm-no-key", ["activations", "rm"]),
        Case("cache", "rm-absolute-path", ["activations", "rm", "{w}/victim"], setup=lambda w: (
            (w / "victim").mkdir(), (w / "victim" / "manifest.json").write_text("{}")),
             after=lambda w: None if (w / "victim").exists() else "deleted a folder outside the cache"),
        Case("cache", "rm-dotdot-key", ["activations", "rm", "../../victim"], env={"ASSAY_CACHE": "{w}/cache"},
             setup=lambda w: ((w / "victim").mkdir(), (w / "victim" / "manifest.json").write_text("{}"),
                              (w / "cache" / "activations").mkdir(parents=True)),
             after=lambda w: None if (w / "victim").exists() else "deleted a folder outside the cache"),
        Case("cache", "manifest-invalid-json-extract-rebuilds", extract + [m, "--layer", "1"], expect="ok", check=_same_as_fresh(fx),
             env={"ASSAY_CACHE": "{w}/cache"},
             setup=_extract_then(fx, lambda e: (e / "manifest.json").write_text("{oops"))),
        Case("cache", "manifest-invalid-json-list-survives", ["activations", "list"], expect="ok",
             env={"ASSAY_CACHE": "{w}/cache"}, setup=_extract_then(fx, lambda e: (e / "manifest.json").write_text("[1]")),
             check=lambda w, p: None if "corrupt" in p.stdout else "the corrupt entry was not shown"),
        Case("cache", "manifest-wrong-types-probe-train", ["probe", "train", "--data", str(fx.data_csv), "--out", "{w}/p",
                                                           "--model", m, "--layer", "1", "--aggregation", "all.mean"],
             expect="ok", env={"ASSAY_CACHE": "{w}/cache"},
             setup=_extract_then(fx, lambda e: _json_edit(e / "manifest.json", lambda o: o.update(shards="x")))),
        Case("cache", "shard-truncated-reextracted", extract + [m, "--layer", "1"], expect="ok", check=_same_as_fresh(fx),
             env={"ASSAY_CACHE": "{w}/cache"}, setup=_extract_then(fx, lambda e: _truncate(next(e.glob("shard-*"))))),
        Case("cache", "shard-deleted-reextracted", extract + [m, "--layer", "1"], expect="ok", check=_same_as_fresh(fx),
             env={"ASSAY_CACHE": "{w}/cache"}, setup=_extract_then(fx, lambda e: next(e.glob("shard-*")).unlink())),
        Case("cache", "digest-cache-corrupt", extract + [m, "--layer", "1"], expect="ok",
             env={"ASSAY_CACHE": "{w}/cache"},
             setup=lambda w: ((w / "cache").mkdir(), (w / "cache" / "file-digests.json").write_text("{nope"))),
    ]

    ev = ["probe", "eval", "{w}/p", "--data", str(fx.data_csv), "--out", "{w}/r.json", "--n-boot", "20"]
    no_report = lambda w: "wrote results from a refused probe" if (w / "r.json").exists() else None  # noqa: E731
    out += [
        Case("saved", "eval-not-a-probe", ["probe", "eval", "{w}", "--data", str(fx.data_csv), "--out", "{w}/r.json"]),
        Case("saved", "eval-run-json-invalid", ev, setup=_probe_then(fx, lambda p: (p / "run.json").write_text("{x"), "tfidf")),
        Case("saved", "eval-probe-json-edited-layer", ev, after=no_report,
             setup=_probe_then(fx, lambda p: _json_edit(p / "probe.json", lambda o: o["inputs"].update(layer=2)))),
        Case("saved", "eval-probe-json-edited-aggregation", ev, after=no_report,
             setup=_probe_then(fx, lambda p: _json_edit(p / "probe.json", lambda o: o["inputs"].update(aggregation="all.max")))),
        Case("saved", "eval-probe-json-edited-reads", ev, after=no_report,
             setup=_probe_then(fx, lambda p: _json_edit(p / "probe.json", lambda o: o["inputs"].update(reads="text")))),
        Case("saved", "eval-probe-weights-missing", ev,
             setup=_probe_then(fx, lambda p: (p / "probe.safetensors").unlink())),
        Case("saved", "eval-probe-weights-truncated", ev,
             setup=_probe_then(fx, lambda p: _truncate(p / "probe.safetensors"))),
        Case("saved", "eval-probe-json-method-edited", ev, after=no_report,
             setup=_probe_then(fx, lambda p: _json_edit(p / "probe.json", lambda o: o.update(method="k-sparse")))),
        Case("saved", "eval-target-fpr-above-one", ev + ["--target-fpr", "2"], setup=_probe_then(fx, lambda p: None, "tfidf")),
        Case("saved", "eval-target-fpr-zero", ev + ["--target-fpr", "0"], setup=_probe_then(fx, lambda p: None, "tfidf")),
        Case("saved", "eval-n-boot-zero", ev[:-2] + ["--n-boot", "0"], setup=_probe_then(fx, lambda p: None, "tfidf")),
        Case("saved", "eval-calibrate-on-missing", ev + ["--calibrate-on", "nope"], setup=_probe_then(fx, lambda p: None, "tfidf")),
        Case("saved", "sae-cfg-invalid-json", ["sae", "eval", "{w}/s", "--model", m],
             setup=_sae_then(lambda s: (s / "cfg.json").write_text("{x"))),
        Case("saved", "sae-cfg-arch-edited", ["sae", "eval", "{w}/s", "--model", m],
             setup=_sae_then(lambda s: _json_edit(s / "cfg.json", lambda o: o.update(architecture="jumprelu")))),
        Case("saved", "sae-cfg-width-edited", ["sae", "eval", "{w}/s", "--model", m],
             setup=_sae_then(lambda s: _json_edit(s / "cfg.json", lambda o: o["metadata"]["assay"]["config"].update(d_sae=64)))),
        Case("saved", "sae-cfg-layer-contradiction", ["sae", "eval", "{w}/s", "--model", m],
             setup=_sae_then(lambda s: _json_edit(s / "cfg.json", lambda o: o["metadata"].update(assay_layer=3)))),
        Case("saved", "sae-weights-missing", ["sae", "eval", "{w}/s", "--model", m],
             setup=_sae_then(lambda s: (s / "sae_weights.safetensors").unlink())),
        Case("saved", "sae-weights-truncated", ["sae", "eval", "{w}/s", "--model", m],
             setup=_sae_then(lambda s: _truncate(s / "sae_weights.safetensors"))),
        Case("saved", "sae-unsupported-saelens-arch", ["sae", "eval", "{w}/s", "--model", m],
             setup=_sae_then(lambda s: _json_edit(s / "cfg.json", lambda o: (o.update(architecture="transcoder"),
                                                                              o["metadata"].pop("assay"))))),
        Case("saved", "report-render-not-json", ["report", "render", "{w}/r.json"], setup=_file("r.json", "{x")),
        Case("saved", "report-render-not-a-report", ["report", "render", "{w}/r.json"], setup=_file("r.json", '{"a": 1}')),
        Case("saved", "report-render-a-directory", ["report", "render", "{w}"]),
        Case("saved", "report-render-unknown-format", ["report", "render", "{w}/r.json", "--formats", "pdf"],
             setup=lambda w: subprocess.run([sys.executable, "-m", "assay.cli", "report", "demo", str(w)],
                                            capture_output=True, check=True) and shutil.copy(w / "report.json", w / "r.json")),
        Case("saved", "findings-not-json", ["experiment", "findings", "{w}/r.json"], setup=_file("r.json", "{x")),
    ]
    return out
