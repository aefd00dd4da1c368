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
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from assay.errors import ConfigMismatchError, InputError
from assay.fileio import write_json, write_text

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


def identity_problems(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Which parts of the model differ from the bundle's; fields unknown on either side are
    skipped (a Hub model without a local weights hash is matched by revision)."""
    out = []
    for key in ("weights_sha256", "dequantised_sha256", "revision", "tokenizer", "n_layers", "d_model"):
        a, b = recorded.get(key), current.get(key)
        if a is not None and b is not None and a != b:
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


def save_bundle(out: str | Path, spec: dict[str, Any], probe: Any, card_md: str) -> Path:
    """Write a bundle atomically: into a sibling temp directory, renamed over `out` at the end, so
    an interrupted build never leaves a half-written bundle where a server would load it."""
    out = Path(out)
    if out.exists() and not (out / BUNDLE_FILE).is_file() and any(out.iterdir()):
        raise InputError(f"{out} exists and is not a monitor bundle; pass an empty or new --out directory")
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        probe.save(tmp / PROBE_DIR)
        write_json(tmp / BUNDLE_FILE, {"format": FORMAT, **spec})
        write_text(tmp / CARD_FILE, card_md)
    except BaseException:  # a full disk, a Ctrl-C: no hidden half-bundle left beside `out`
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        old = out.with_name(f".{out.name}.old{os.getpid()}")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)
    return out


def load_bundle(path: str | Path, device: Any = None) -> Bundle:
    """A bundle written by `save_bundle`; a folder that is not one is a one-line error."""
    from assay.probes.base import load_probe

    path = Path(path)
    if not (path / BUNDLE_FILE).is_file():
        raise InputError(f"{path} is not a monitor bundle (no {BUNDLE_FILE}); build one with `assay monitor build`")
    try:
        spec = json.loads((path / BUNDLE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ConfigMismatchError(f"{path / BUNDLE_FILE} is unreadable ({err}); build the bundle again") from None
    missing = [k for k in ("name", "model", "layer", "inputs", "thresholds", "default_threshold")
               if not isinstance(spec, dict) or k not in spec]
    if missing or spec.get("format") != FORMAT:
        raise ConfigMismatchError(f"{path / BUNDLE_FILE} is not a {FORMAT} bundle (format {spec.get('format')!r}, "
                                  f"missing {missing}); build the bundle again with this assay")
    return Bundle(path, spec, load_probe(path / PROBE_DIR, device=device))
