"""A monitor bundle: one directory that holds everything needed to score a prompt as it was validated.

    bundle.json   what the probe reads (model identity and weights hash, layer, dtype, chat format,
                  input spec), its thresholds at each target FPR on benign calibration prompts, the
                  calibration set's fingerprint and size, the evaluation card, provenance
    probe/        the probe in the one probe format (`probe.json` + `probe.safetensors`)
    card.md       the card, for people

Loading a bundle with a model whose weights or tokenizer differ from the ones it was calibrated on
is an error: the thresholds are logits of that model's activations and mean nothing on another's.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from assay.errors import ConfigMismatchError, InputError
from assay.fileio import exchange, write_json, write_text

BUNDLE_FILE = "bundle.json"
PROBE_DIR = "probe"
CARD_FILE = "card.md"
FORMAT = "assay-monitor/1"


def model_identity(lm: Any) -> dict[str, Any]:
    """What must match for a bundle's thresholds to hold: the weights, the tokenizer (ids and chat
    template) and the revision."""
    fp = lm.fingerprint
    return {"model": fp.get("model", lm.name), "weights_sha256": fp.get("weights_sha256"),
            "dequantised_sha256": fp.get("dequantised_sha256"), "revision": fp.get("revision"),
            "tokenizer": fp.get("tokenizer"), "n_layers": lm.n_layers, "d_model": lm.d_model}


IDENTITY_FIELDS = ("weights_sha256", "dequantised_sha256", "revision", "tokenizer", "n_layers", "d_model")


def identity_problems(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Which parts of the model differ from the bundle's. A field the model does not know is
    skipped (a Hub model without a local weights hash is matched by revision); one the model knows
    but the bundle leaves empty is a difference (a bundle with its identity nulled out must not
    pass as any model's)."""
    out = []
    for key in IDENTITY_FIELDS:
        a, b = recorded.get(key), current.get(key)
        if b is not None and a != b:
            out.append(f"{key}: bundle {str(a)[:16]} vs model {str(b)[:16]}")
    return out


@dataclass
class Bundle:
    path: Path
    spec: dict[str, Any]
    probe: Any

    @property
    def name(self) -> str:
        return self.spec["name"]

    @property
    def layer(self) -> int:
        return int(self.spec["layer"])

    @property
    def inputs(self) -> dict[str, Any]:
        return self.spec["inputs"]

    @property
    def thresholds(self) -> dict[str, float]:
        return {k: float(v["threshold"]) for k, v in self.spec["thresholds"].items()}

    @property
    def default_threshold(self) -> str:
        return self.spec["default_threshold"]

    @property
    def card(self) -> dict[str, Any]:
        return self.spec.get("card", {})

    def check_model(self, lm: Any) -> None:
        problems = identity_problems(self.spec["model"], model_identity(lm))
        if problems:
            raise ConfigMismatchError(
                f"the model loaded ({lm.name}) is not the one bundle {self.path} was calibrated on "
                f"({'; '.join(problems)}); its thresholds would mean nothing. Pass --model with the bundle's "
                f"model ({self.spec['model']['model']}) or build a new bundle for this model")


def replaced_bundles(out: Path) -> list[Path]:
    """The whole bundles a `save_bundle` killed between its two renames left beside `out`, oldest first."""
    return sorted(p for p in out.parent.glob(f".{out.name}.old*") if (p / BUNDLE_FILE).is_file())


def save_bundle(out: str | Path, spec: dict[str, Any], probe: Any, card_md: str) -> Path:
    """Write a bundle atomically: into a sibling temp directory, renamed over `out` at the end, so
    an interrupted build never leaves a half-written bundle where a server would load it. Records
    the sha256 of the probe's files, which `load_bundle` checks."""
    from assay.probes.base import probe_sha256

    out = Path(out)
    if out.exists() and not (out / BUNDLE_FILE).is_file() and any(out.iterdir()):
        raise InputError(f"{out} exists and is not a monitor bundle; pass an empty or new --out directory")
    left = replaced_bundles(out)
    if not out.exists() and left:  # a build killed between its two renames: put the bundle it replaced back first
        os.replace(left[-1], out)
    # what an earlier build killed between its renames left beside `out` (a hidden temp or old copy)
    for stale in [*out.parent.glob(f".{out.name}.tmp*"), *out.parent.glob(f".{out.name}.old*")]:
        shutil.rmtree(stale, ignore_errors=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    tmp.mkdir(parents=True)
    try:
        probe.save(tmp / PROBE_DIR)
        spec = {k: v for k, v in spec.items() if k not in ("format", "probe_sha256")}
        write_json(tmp / BUNDLE_FILE, {"format": FORMAT, **spec, "probe_sha256": probe_sha256(tmp / PROBE_DIR)})
        write_text(tmp / CARD_FILE, card_md)
    except BaseException:  # a full disk, a Ctrl-C: no hidden half-bundle left beside `out`
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        if exchange(tmp, out):  # one atomic swap: `out` is always a whole bundle, the old one or the new
            shutil.rmtree(tmp, ignore_errors=True)
            return out
        old = out.with_name(f".{out.name}.old{os.getpid()}")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)
    return out


def load_bundle(path: str | Path, device: Any = None) -> Bundle:
    """A bundle written by `save_bundle`, every field checked before any model loads: a folder that
    is not one, a field of the wrong type, a threshold that is not a finite number, a probe whose
    bytes differ from the sha256 recorded at build time or that lies outside the bundle, are each a
    one-line error (a monitor that cannot score must say so, not answer `flagged: false`)."""
    from assay.probes.base import load_probe

    path = Path(path)
    if not (path / BUNDLE_FILE).is_file():
        left = replaced_bundles(path)
        if not path.exists() and left:  # `save_bundle` was killed between its two renames
            raise InputError(f"{path} is missing: a build was stopped while replacing it, and the bundle before it "
                             f"is at {left[-1]}; move that back to {path}, or run `assay monitor build` again")
        raise InputError(f"{path} is not a monitor bundle (no {BUNDLE_FILE}); build one with `assay monitor build`")
    try:
        spec = json.loads((path / BUNDLE_FILE).read_text(encoding="utf-8"), parse_constant=_no_constant)
    except (OSError, ValueError) as err:
        raise ConfigMismatchError(f"{path / BUNDLE_FILE} is unreadable ({err}); build the bundle again") from None
    missing = [k for k in ("name", "model", "layer", "inputs", "thresholds", "default_threshold")
               if not isinstance(spec, dict) or k not in spec]
    if missing or spec.get("format") != FORMAT:
        raise ConfigMismatchError(f"{path / BUNDLE_FILE} is not a {FORMAT} bundle (format "
                                  f"{spec.get('format') if isinstance(spec, dict) else None!r}, missing {missing}); "
                                  "build the bundle again with this assay")
    problems = spec_problems(spec)
    if problems:
        raise ConfigMismatchError(f"{path / BUNDLE_FILE} is invalid: {'; '.join(problems)}; fix it or build the "
                                  "bundle again")
    probe_dir = path / PROBE_DIR
    inside = path.resolve()
    for p in (probe_dir, *(probe_dir.iterdir() if probe_dir.is_dir() else ())):
        if p.is_symlink() or inside not in p.resolve().parents:
            raise ConfigMismatchError(f"{p} is a link or lies outside the bundle; a bundle holds its own probe "
                                      "(copy the files in, or build the bundle again)")
    return Bundle(path, spec, load_probe(probe_dir, device=device, sha256=spec["probe_sha256"]))


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number JSON allows")


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def spec_problems(spec: dict[str, Any]) -> list[str]:
    """What is wrong with a bundle.json's fields, in words (empty when nothing is)."""
    out = []
    if not isinstance(spec["name"], str) or not spec["name"]:
        out.append("`name` must be a non-empty string")
    model = spec["model"]
    if not isinstance(model, dict) or not isinstance(model.get("source"), str):
        out.append("`model` must be an object with the model's `source`")
    else:
        for key in ("n_layers", "d_model"):
            if not _is_int(model.get(key)) or model[key] < 1:
                out.append(f"`model.{key}` must be a positive integer, got {model.get(key)!r}")
        for key in ("weights_sha256", "dequantised_sha256", "revision", "tokenizer"):
            if model.get(key) is not None and not isinstance(model[key], str):
                out.append(f"`model.{key}` must be a string or null")
    if not _is_int(spec["layer"]) or spec["layer"] < 0:
        out.append(f"`layer` must be a block index (an integer >= 0), got {spec['layer']!r}")
    elif isinstance(model, dict) and _is_int(model.get("n_layers")) and spec["layer"] >= model["n_layers"]:
        out.append(f"`layer` {spec['layer']} is past the model's {model['n_layers']} blocks")
    if spec.get("dtype") not in ("float32", "bfloat16", "float16"):
        out.append(f"`dtype` must be float32, bfloat16 or float16, got {spec.get('dtype')!r}")
    inputs = spec["inputs"]
    if not isinstance(inputs, dict) or inputs.get("reads") not in ("pooled", "tokens"):
        out.append("`inputs.reads` must be 'pooled' or 'tokens'")
    elif inputs["reads"] == "pooled" and not isinstance(inputs.get("aggregation"), str):
        out.append("`inputs.aggregation` must name an aggregation")
    elif inputs["reads"] == "tokens" and (not _is_int(inputs.get("max_tokens")) or inputs["max_tokens"] < 1):
        out.append("`inputs.max_tokens` must be a positive integer")
    if spec.get("max_tokens") is not None and (not _is_int(spec["max_tokens"]) or spec["max_tokens"] < 1):
        out.append(f"`max_tokens` must be a positive integer or null, got {spec['max_tokens']!r}")
    ths = spec["thresholds"]
    if not isinstance(ths, dict) or not ths:
        out.append("`thresholds` must be a non-empty object of {name: {\"threshold\": number}}")
    else:
        for name, t in ths.items():
            if not isinstance(t, dict) or not _is_finite(t.get("threshold")):
                out.append(f"threshold {name!r} must be a finite number, got "
                           f"{t.get('threshold') if isinstance(t, dict) else t!r}")
        if not isinstance(spec["default_threshold"], str) or spec["default_threshold"] not in ths:
            out.append(f"`default_threshold` {spec['default_threshold']!r} is not one of the thresholds "
                       f"{sorted(ths)}")
    if spec.get("chat_format") is not None and (not isinstance(spec["chat_format"], list)
                                                or not all(isinstance(x, str) for x in spec["chat_format"])):
        out.append("`chat_format` must be a list of strings or null")
    sha = spec.get("probe_sha256")
    if not isinstance(sha, dict) or set(sha) != {"probe.json", "probe.safetensors"} or not all(
            isinstance(v, str) and len(v) == 64 for v in sha.values()):
        out.append("`probe_sha256` must hold the sha256 of probe/probe.json and probe/probe.safetensors (a bundle "
                   "built before assay recorded them: build it again)")
    return out
