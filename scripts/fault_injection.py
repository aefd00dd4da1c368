"""Kill -9 assay at random points of activation extraction and of SAE training, resume, compare.

Each trial starts a job, kills it with SIGKILL at a random moment of its working phase (once or
more), then runs it again to completion, and compares the result with an uninterrupted run:

- extraction (`assay.activations.extract`, tiny random Gemma 3, small shards so a kill can land
  anywhere): every tensor of every shard must be bitwise identical;
- SAE training (`assay sae train ... --resume`, a checkpoint every few steps): the same number of
  steps and tokens, and the same final weights (the maximum absolute difference is reported; the
  resume replays the shuffled stream, so it is expected to be 0 on CPU).

    python scripts/fault_injection.py [--trials 6] [--kills 2] [--seed 0]

Writes benchmarks/results/fault_injection.json; exit status 1 if any trial differs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from hostile_inputs import Fixtures  # noqa: E402

N_TEXTS = 1200


def _texts() -> list[str]:
    rng = random.Random(0)
    words = "the a harmful benign model probe latent token layer bread poem river lock key stream data".split()
    return [" ".join(rng.choice(words) for _ in range(rng.randint(3, 60))) for _ in range(N_TEXTS)]


def extract_worker(model: str, root: str) -> None:
    """The job that gets killed: print READY once the model is loaded, then extract."""
    from assay.activations import extract
    from assay.models import load

    lm = load(model, dtype="float32", device="cpu")
    print("READY", flush=True)
    t0 = time.perf_counter()
    extract(lm, _texts(), [1, 3], store_tokens=True, shard_tokens=1024, root=root, progress=False)
    print(f"DONE {time.perf_counter() - t0:.3f}", flush=True)


def _env(cache: Path) -> dict[str, str]:
    return {**os.environ, "ASSAY_CACHE": str(cache), "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}


def _run_until(cmd: list[str], env: dict, ready: str, delay: float | None) -> tuple[str, float]:
    """Run `cmd`; `delay` seconds after it prints a line containing `ready`, SIGKILL it.
    Returns ("killed" | "finished", seconds from ready to the end)."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            cwd=ROOT, start_new_session=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if ready in line:
            break
    t0 = time.perf_counter()
    if delay is not None:
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return "killed", time.perf_counter() - t0
    proc.stdout.read()
    if proc.wait() != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed with exit {proc.returncode}")
    return "finished", time.perf_counter() - t0


def _tensors(entry: Path) -> dict[str, "object"]:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(entry.glob("shard-*.safetensors")):
        for k, v in load_file(f).items():
            out[f"{f.name}:{k}"] = v
    return out


def _entry(root: Path) -> Path:
    (entry,) = [p for p in root.iterdir() if (p / "manifest.json").exists()]
    return entry


def extraction_trials(fx: Fixtures, work: Path, trials: int, kills: int, rng: random.Random) -> dict:
    import torch

    cmd = [sys.executable, __file__, "_extract", str(fx.model)]
    ref_root = work / "extract-ref"
    _run_until(cmd + [str(work / "extract-warm")], _env(work / "cache"), "READY", None)  # warm the disk cache
    _, seconds = _run_until(cmd + [str(ref_root)], _env(work / "cache"), "READY", None)
    ref = _tensors(_entry(ref_root))
    rows = []
    for t in range(trials):
        root = work / f"extract-{t}"
        landed = []
        for _ in range(kills):
            delay = rng.uniform(0, seconds)
            what, _ = _run_until(cmd + [str(root)], _env(work / "cache"), "READY", delay)
            done = 0
            if root.exists() and any(root.iterdir()):
                manifest = json.loads((_entry(root) / "manifest.json").read_text())
                done = sum(s is not None for s in manifest["shards"])
            landed.append({"delay_s": round(delay, 2), "outcome": what, "shards_done": done})
        _run_until(cmd + [str(root)], _env(work / "cache"), "READY", None)
        got = _tensors(_entry(root))
        same = got.keys() == ref.keys() and all(torch.equal(got[k], ref[k]) for k in ref)
        rows.append({"trial": t, "kills": landed, "bitwise_identical": same, "tensors": len(got)})
    n_shards = len(json.loads((_entry(ref_root) / "manifest.json").read_text())["shards"])
    return {"reference_seconds": round(seconds, 2), "shards": n_shards, "trials": rows,
            "identical": sum(r["bitwise_identical"] for r in rows)}


SAE_ARGS = ["--arch", "topk", "--k", "16", "--width", "1024", "--layer", "2", "--tokens", "120000",
            "--batch-size", "256", "--checkpoint-every", "20", "--seed", "0"]


def sae_trials(fx: Fixtures, work: Path, trials: int, kills: int, rng: random.Random) -> dict:
    from safetensors.torch import load_file

    def cmd(out: Path, resume: bool) -> list[str]:
        return [sys.executable, "-m", "assay.cli", "sae", "train", "--model", str(fx.model), *SAE_ARGS,
                "--out", str(out)] + (["--resume"] if resume else [])

    env = _env(work / "cache")  # the corpus activations are extracted once, by the reference run
    _run_until(cmd(work / "sae-ref", False), env, "writing to", None)
    ref_dir = work / "sae-ref"
    _, seconds = _run_until(cmd(ref_dir, False), env, "writing to", None)  # now timed with a warm corpus
    ref_info = json.loads((ref_dir / "training.json").read_text())
    ref_w = load_file(ref_dir / "sae_weights.safetensors")
    rows = []
    for t in range(trials):
        out = work / f"sae-{t}"
        landed = []
        for i in range(kills):
            delay = rng.uniform(0, seconds)
            what, _ = _run_until(cmd(out, resume=i > 0), env, "writing to", delay)
            step = None
            if (out / "checkpoint.pt").exists():
                import torch

                step = torch.load(out / "checkpoint.pt", weights_only=True)["state"]["step"]
            landed.append({"delay_s": round(delay, 2), "outcome": what, "checkpoint_step": step})
        _run_until(cmd(out, resume=True), env, "writing to", None)
        info = json.loads((out / "training.json").read_text())
        w = load_file(out / "sae_weights.safetensors")
        diff = max(float((w[k] - ref_w[k]).abs().max()) for k in ref_w)
        rows.append({"trial": t, "kills": landed, "steps": info["steps"], "tokens": info["tokens"],
                     "max_abs_weight_diff": diff, "same_steps_tokens": (info["steps"], info["tokens"]) ==
                     (ref_info["steps"], ref_info["tokens"]), "checkpoint_left": (out / "checkpoint.pt").exists()})
    return {"reference_seconds": round(seconds, 2), "steps": ref_info["steps"], "tokens": ref_info["tokens"],
            "trials": rows, "same_steps_tokens": sum(r["same_steps_tokens"] for r in rows),
            "max_abs_weight_diff": max((r["max_abs_weight_diff"] for r in rows), default=0.0)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=6, help="trials per job")
    ap.add_argument("--kills", type=int, default=2, help="kill -9 per trial before the final, unbroken run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fixtures", type=Path, default=Path(tempfile.gettempdir()) / "assay-hostile-fixtures")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "fault_injection.json")
    args = ap.parse_args()
    if args.trials < 1 or args.kills < 0:
        ap.error("--trials must be at least 1 and --kills at least 0")
    fx = Fixtures(args.fixtures)
    fx.build()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="assay-faults-"))
    try:
        result = {"trials": args.trials, "kills_per_trial": args.kills, "seed": args.seed,
                  "extraction": extraction_trials(fx, work, args.trials, args.kills, rng),
                  "sae_training": sae_trials(fx, work, args.trials, args.kills, rng)}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ex, sae = result["extraction"], result["sae_training"]
    print(f"extraction: {ex['identical']}/{args.trials} trials bitwise identical after "
          f"{sum(k['outcome'] == 'killed' for r in ex['trials'] for k in r['kills'])} kills")
    print(f"SAE training: {sae['same_steps_tokens']}/{args.trials} trials with the same steps and tokens "
          f"({sae['steps']} steps, {sae['tokens']} tokens); max |weight diff| {sae['max_abs_weight_diff']:.3g} after "
          f"{sum(k['outcome'] == 'killed' for r in sae['trials'] for k in r['kills'])} kills")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, args.out)
    ok = ex["identical"] == args.trials and sae["same_steps_tokens"] == args.trials and sae["max_abs_weight_diff"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_extract":
        extract_worker(sys.argv[2], sys.argv[3])
    else:
        sys.exit(main())
