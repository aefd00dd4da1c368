"""Wall time of `make demo`'s commands, run in passes: the first fills whatever the caches and the
output folders lack, each later one is a warm rerun (the issue's targets: under 5 minutes cold,
under 30 s warm). Pass 1 counts as cold (`cold_total_seconds`) only when the cache (`$ASSAY_CACHE`)
held no file and `runs/` did not exist when it started, e.g. in a fresh clone with
`ASSAY_CACHE=$(mktemp -d)`.

The commands are read from the Makefile's `demo` target, so this times what `make demo` runs. Each
pass records every command's seconds and exit status; a failing command stops the benchmark.

    .venv/bin/python benchmarks/demo.py [--passes 2] [--out benchmarks/results/demo.json]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from assay.fileio import write_json  # noqa: E402
from assay.provenance import provenance  # noqa: E402
from assay.runtime import cache_dir, matmul_speeds  # noqa: E402


def machine_speed() -> dict[str, float | str]:
    """This moment's matmul speed (GFLOP/s): these shared machines run up to 2x slower at times, so
    each pass says how fast the machine was around it (not counted in the commands' seconds). bf16
    is probed as `--dtype auto` probes it: a 32-row matmul only, where bf16 is hopeless (AVX2-only
    CPUs, where one full-size bf16 matmul takes seconds)."""
    speeds = matmul_speeds("cpu")
    return {"float32": round(speeds["float32"], 1), "bfloat16": round(speeds["bfloat16"], 1),
            "bfloat16_probe": speeds["bfloat16_probe"]}


def demo_commands(makefile: Path = ROOT / "Makefile") -> list[list[str]]:
    """The recipe lines of the `demo` target, `$(BIN)/` resolved to `.venv/bin/`."""
    lines = makefile.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(r"^demo\s*:", line))
    out = []
    for line in lines[start + 1:]:
        if not line.startswith("\t"):
            break
        out.append(line.strip().replace("$(BIN)/", ".venv/bin/").split())
    if not out:
        raise SystemExit("the Makefile's demo target has no commands")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--passes", type=int, default=2, help="the first may be cold; the rest are warm reruns")
    ap.add_argument("--out", default="benchmarks/results/demo.json")
    args = ap.parse_args()
    if args.passes < 1:
        raise SystemExit("--passes must be at least 1")
    commands = demo_commands()
    # What "cold" means for pass 1: nothing in the cache (no model, data, activations or SAEs) and
    # no earlier output folders, so the first pass does all the work `make demo` does on a fresh machine.
    cache = cache_dir()
    cold = {"assay_cache": str(cache), "cache_files_at_start": sum(1 for p in cache.rglob("*") if p.is_file()),
            "runs_existed_at_start": (ROOT / "runs").exists()}
    passes = []
    for p in range(args.passes):
        rows, speed_before = [], machine_speed()
        for cmd in commands:
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            seconds = time.perf_counter() - t0
            rows.append({"command": " ".join(cmd), "seconds": round(seconds, 2), "exit": proc.returncode})
            print(f"pass {p + 1}: {seconds:7.1f} s  {' '.join(cmd[1:])}", flush=True)
            if proc.returncode != 0:
                sys.stderr.write(proc.stderr[-3000:])
                raise SystemExit(f"{' '.join(cmd)} exited with {proc.returncode}")
        passes.append({"pass": p + 1, "commands": rows, "total_seconds": round(sum(r["seconds"] for r in rows), 2),
                       "matmul_gflops_before": speed_before, "matmul_gflops_after": machine_speed()})
        print(f"pass {p + 1}: {passes[-1]['total_seconds']:7.1f} s  in all (matmul GFLOP/s before, after: "
              f"{speed_before}, {passes[-1]['matmul_gflops_after']})", flush=True)
    warm = [q["total_seconds"] for q in passes[1:]]
    first_cold = cold["cache_files_at_start"] == 0 and not cold["runs_existed_at_start"]
    write_json(ROOT / args.out, {"provenance": provenance(), "start": cold, "passes": passes,
                                 "cold_total_seconds": passes[0]["total_seconds"] if first_cold else None,
                                 "cold_target_seconds": 300,
                                 "warm_total_seconds": min(warm) if warm else None, "warm_target_seconds": 30})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
