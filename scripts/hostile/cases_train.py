"""Hostile inputs for SAE training and evaluation, probe and study arguments, debugging, the CLI itself."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from hostile_inputs import Case, Fixtures

TINY_SAE = ["--arch", "topk", "--k", "8", "--width", "64", "--layer", "2", "--tokens", "6000", "--batch-size", "256"]


def _sae(path: Path, d_in: int = 64, layer: int = 1, arch: str = "topk", **kw) -> None:
    from assay.sae.base import build_sae
    from assay.sae.io import save_sae

    sae = build_sae(arch, d_in=d_in, d_sae=32, **({"k": 4} if arch == "topk" else {}), **kw)
    save_sae(sae, path, metadata={"assay_layer": layer, "hook_name": f"blocks.{layer}.hook_resid_post",
                                  "corpus": "wiki"})


def _interrupted_run(fx: Fixtures, out: Path, extra: list[str]) -> None:
    """Start `sae train`, kill -9 it once its first checkpoint is on disk."""
    env = {**os.environ, "ASSAY_CACHE": str(fx.cache), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "assay.cli", "sae", "train", "--model", str(fx.model), *TINY_SAE,
           "--tokens", "60000", "--checkpoint-every", "5", "--out", str(out), *extra]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    while not (out / "checkpoint.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    if not (out / "checkpoint.pt").exists():
        raise RuntimeError("the run finished or failed before its first checkpoint")


def _payload(work: Path) -> None:
    import torch

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {work}/pwned",))

    (work / "run").mkdir()
    torch.save({"identity": "x", "state": Payload()}, work / "run" / "checkpoint.pt")


def _no_payload(work: Path) -> str | None:
    return "the planted pickle payload ran" if (work / "pwned").exists() else None


def _complete(work: Path, proc) -> str | None:
    info = json.loads((work / "run" / "training.json").read_text())
    if not info.get("complete") or info["steps"] != info["steps_planned"]:
        return f"resumed run ended at {info['steps']} of {info.get('steps_planned')} steps"
    return None


def _write(name: str, text: str):
    def setup(work: Path) -> None:
        (work / name).write_text(text, encoding="utf-8")
    return setup


def cases(fx: Fixtures) -> list[Case]:
    m = str(fx.model)
    sae = ["sae", "train", "--model", m, "--out", "{w}/run"]

    def train(*args: str, **kw) -> list[str]:
        base = dict(zip(TINY_SAE[::2], TINY_SAE[1::2]))
        base.update(dict(zip(args[::2], args[1::2])))
        return sae + [x for kv in base.items() for x in kv] + list(kw.get("flags", []))

    out = [
        Case("sae", "unknown-arch", train("--arch", "nope")),
        Case("sae", "arch-listed-twice", train("--arch", "topk,topk")),
        Case("sae", "arch-empty", train("--arch", ",")),
        Case("sae", "topk-k-zero", train("--k", "0")),
        Case("sae", "topk-k-above-width", train("--k", "65")),
        Case("sae", "batchtopk-k-above-width", train("--arch", "batchtopk", "--k", "100")),
        Case("sae", "matryoshka-k-negative", train("--arch", "matryoshka", "--k", "-3")),
        Case("sae", "width-zero", train("--width", "0")),
        Case("sae", "width-negative", train("--width", "-5")),
        Case("sae", "layer-past-last-block", train("--layer", "7")),
        Case("sae", "layer-negative", train("--layer", "-1")),
        Case("sae", "unknown-corpus", train("--corpus", "reddit")),
        Case("sae", "tokens-zero", train("--tokens", "0")),
        Case("sae", "tokens-under-one-batch", train("--tokens", "100")),
        Case("sae", "epochs-zero", train("--epochs", "0")),
        Case("sae", "batch-size-zero", train("--batch-size", "0")),
        Case("sae", "lr-zero", train("--lr", "0")),
        Case("sae", "lr-nan", train("--lr", "nan")),
        Case("sae", "l1-negative", train("--arch", "relu", "--l1", "-1")),
        Case("sae", "l0-coefficient-negative", train("--arch", "jumprelu", "--l0-coeff", "-1")),
        Case("sae", "omega-negative", train("--arch", "qf_jumprelu", "--omega", "-1")),
        Case("sae", "dtype-unknown", train("--dtype", "int8")),
        Case("sae", "max-tokens-one", train("--max-tokens", "1")),
        Case("sae", "checkpoint-every-zero", train("--checkpoint-every", "0")),
        Case("sae", "finetune-from-missing", train("--finetune-from", "{w}/nope")),
        Case("sae", "finetune-several-archs", train("--arch", "topk,relu", "--finetune-from", "{w}/nope")),
        Case("sae", "resample-above-one", train("--finetune-from", "{w}/base", "--resample", "1.5"),
             setup=lambda w: _sae(w / "base", layer=2)),
        Case("sae", "resample-how-unknown", train("--finetune-from", "{w}/base", "--resample", "0.1",
                                                  "--resample-how", "sometimes"), setup=lambda w: _sae(w / "base", layer=2)),
        Case("sae", "finetune-sae-of-another-width", train("--finetune-from", "{w}/base"),
             setup=lambda w: _sae(w / "base", d_in=32, layer=2)),
        Case("sae", "out-is-a-file", sae[:-2] + ["--out", "{w}/file"] + TINY_SAE, setup=_write("file", "x")),
        Case("sae", "checkpoint-without-resume", train(), setup=lambda w: _interrupted_run(fx, w / "run", [])),
        Case("sae", "resume-with-other-k", train("--k", "4", flags=["--resume"]),
             setup=lambda w: _interrupted_run(fx, w / "run", ["--k", "8"])),
        Case("sae", "resume-with-other-lr", train("--lr", "1e-3", flags=["--resume"]),
             setup=lambda w: _interrupted_run(fx, w / "run", [])),
        Case("sae", "resume-pickle-payload", train(flags=["--resume"]), setup=_payload, after=_no_payload),
        Case("sae", "resume-garbage-checkpoint", train(flags=["--resume"]),
             setup=lambda w: ((w / "run").mkdir(), (w / "run" / "checkpoint.pt").write_bytes(b"\x00garbage"))),
        Case("sae", "resume-foreign-checkpoint", train(flags=["--resume"]),
             setup=lambda w: (__import__("torch").save({"state": {"step": 3}}, (w / "run").mkdir() or w / "run" / "checkpoint.pt"))),
        Case("sae", "resume-after-kill-ends-complete", train("--tokens", "60000", "--checkpoint-every", "5",
                                                             flags=["--resume"]), expect="ok",
             setup=lambda w: _interrupted_run(fx, w / "run", []), check=_complete),
        Case("sae", "resume-without-checkpoint-trains-fresh", train(flags=["--resume"]), expect="ok",
             check=lambda w, p: None if (w / "run" / "cfg.json").exists() else "no SAE written"),
        Case("sae", "eval-missing-dir", ["sae", "eval", "{w}/nope", "--model", m]),
        Case("sae", "eval-not-an-sae", ["sae", "eval", "{w}", "--model", m]),
        Case("sae", "eval-unknown-corpus", ["sae", "eval", "{w}/s", "--model", m, "--corpus", "reddit"],
             setup=lambda w: _sae(w / "s", layer=2)),
        Case("sae", "eval-tokens-zero", ["sae", "eval", "{w}/s", "--model", m, "--tokens", "0"],
             setup=lambda w: _sae(w / "s", layer=2)),
        Case("sae", "eval-sae-of-another-model", ["sae", "eval", "{w}/s", "--model", m, "--tokens", "2000",
                                                  "--ce-texts", "0"], setup=lambda w: _sae(w / "s", d_in=32, layer=2)),
        Case("sae", "eval-sae-layer-beyond-model", ["sae", "eval", "{w}/s", "--model", m, "--tokens", "2000",
                                                    "--ce-texts", "0"], setup=lambda w: _sae(w / "s", layer=9)),
    ]
    probe = ["probe", "train", "--data", str(fx.data_csv), "--model", m, "--out", "{w}/p"]
    out += [
        Case("probe-args", "unknown-kind", probe + ["--method", "nope"]),
        Case("probe-args", "unknown-feature", probe + ["--aggregation", "all.foo"]),
        Case("probe-args", "resp-offset-zero", probe + ["--aggregation", "resp-0"]),
        Case("probe-args", "attention-with-pooled-feature", probe + ["--method", "attention", "--aggregation", "all.max"]),
        Case("probe-args", "layer-past-last-block", probe + ["--layer", "9"]),
        Case("probe-args", "layer-negative", probe + ["--layer", "-2"]),
        Case("probe-args", "k-zero", probe + ["--method", "k-sparse", "--k", "0"]),
        Case("probe-args", "select-unknown", probe + ["--method", "k-sparse", "--select", "best"]),
        Case("probe-args", "window-zero", probe + ["--method", "max-rolling-attention", "--window", "0"]),
        Case("probe-args", "sae-output-unknown", probe + ["--sae-output", "both"]),
        Case("probe-args", "sae-missing", probe + ["--sae", "{w}/nope"]),
        Case("probe-args", "dtype-unknown", probe + ["--dtype", "int8"]),
        Case("probe-args", "sae-of-another-layer", probe + ["--layer", "1", "--sae", "{w}/s", "--method", "k-sparse",
                                                            "--k", "2"], setup=lambda w: _sae(w / "s", layer=3)),
        Case("probe-args", "sae-of-another-model", probe + ["--layer", "1", "--sae", "{w}/s", "--method", "k-sparse",
                                                            "--k", "2"], setup=lambda w: _sae(w / "s", d_in=32, layer=1)),
    ]
    out.append(Case("probe-args", "tfidf-empty-vocabulary", ["probe", "train", "--data", "{w}/d.csv", "--out", "{w}/p",
                                                              "--method", "tfidf"],
                    setup=_write("d.csv", "text,label,split\n!!!,0,train\n???,1,train\n...,0,val\n;;;,1,val\n")))
    exp = ["experiment", "harmful-intent", "--model", m, "--out", "{w}/run"]
    out += [
        Case("experiment", "unknown-preset", exp + ["--preset", "huge"]),
        Case("experiment", "dtype-unknown", exp + ["--dtype", "int8"]),
        Case("experiment", "layer-past-last-block", exp + ["--layer", "4"]),
        Case("experiment", "layer-negative", exp + ["--layer", "-1"]),
        Case("experiment", "subsample-zero", exp + ["--subsample", "0"]),
        Case("experiment", "subsample-two", exp + ["--subsample", "2"]),
        Case("experiment", "seeds-zero", exp + ["--seeds", "0"]),
        Case("experiment", "sae-width-zero", exp + ["--sae-width", "0"]),
        Case("experiment", "sae-tokens-zero", exp + ["--sae-tokens", "0"]),
        Case("experiment", "data-missing", exp + ["--data", "{w}/nope.csv"]),
        Case("experiment", "data-without-ood-split", exp + ["--layer", "1", "--data", str(fx.data_csv)]),
        Case("experiment", "model-missing", ["experiment", "harmful-intent", "--model", "{w}/nope", "--out", "{w}/run"]),
        Case("experiment", "findings-on-non-report", ["experiment", "findings", "{w}/r.json"],
             setup=_write("r.json", '{"a": 1}')),
        Case("experiment", "readme-missing-report", ["experiment", "readme", "{w}/nope.json", "--check"]),
    ]
    dbg = ["debug", "latents", "{w}/s", "--data", str(fx.data_csv), "--model", m, "--layer", "1"]
    out += [
        Case("debug", "sae-missing", ["debug", "latents", "{w}/nope", "--data", str(fx.data_csv), "--model", m]),
        Case("debug", "k-zero", dbg + ["--k", "0"], setup=lambda w: _sae(w / "s")),
        Case("debug", "select-unknown", dbg + ["--select", "best"], setup=lambda w: _sae(w / "s")),
        Case("debug", "aggregation-unknown", dbg + ["--aggregation", "all.median"], setup=lambda w: _sae(w / "s")),
        Case("debug", "split-missing", dbg + ["--split", "ood"], setup=lambda w: _sae(w / "s")),
        Case("debug", "sae-of-another-layer", dbg, setup=lambda w: _sae(w / "s", layer=3)),
        Case("debug", "sae-of-another-model", dbg, setup=lambda w: _sae(w / "s", d_in=32)),
        Case("debug", "layer-past-last-block", dbg[:-2] + ["--layer", "8"], setup=lambda w: _sae(w / "s", layer=8)),
    ]
    out += [
        Case("cli", "unknown-command", ["frobnicate"]),
        Case("cli", "unknown-subcommand", ["sae", "frobnicate"]),
        Case("cli", "unknown-option", ["--bogus"]),
        Case("cli", "missing-argument", ["data", "validate"]),
        Case("cli", "option-not-a-number", ["sae", "train", "--k", "many"]),
        Case("cli", "report-render-missing", ["report", "render", "{w}/nope.json"]),
    ]
    return out
