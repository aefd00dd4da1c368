"""What produced a result: package version, git commit, host, and the config that was run."""

from __future__ import annotations

import datetime as _dt
import functools
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

from assay import __version__


BENCHMARK_OUTPUTS = ("benchmarks/results", "docs/scale.md")


def git_commit(repo: Path | None = None) -> str | None:
    """The commit of the assay checkout, with `+dirty` when it has uncommitted changes (other than
    benchmark outputs). `repo`: another checkout than this one's."""
    repo = repo or Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
        if sha.returncode != 0:
            return None
        # Benchmark outputs are no input to anything: `make bench` rewrites them one benchmark after
        # another, and the later benchmarks' code is the commit's all the same.
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no", "--", ".",
             *(f":(exclude){p}" for p in BENCHMARK_OUTPUTS)],
            capture_output=True, text=True, timeout=5,
        )
        return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def provenance(**extra: Any) -> dict[str, Any]:
    """A record to store beside every result file."""
    return {
        "assay_version": __version__,
        "git_commit": git_commit(),
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "host": platform.node(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "hardware": hardware(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }


@functools.lru_cache(maxsize=1)
def hardware() -> dict[str, Any]:
    """The processor a result was measured on. Speeds and the dtype `--dtype auto` picks hang on it
    (bf16 runs ~6x fp32 with AMX and ~50x slower on AVX2 alone), and a host name does not say it."""
    cpuinfo = cpuinfo_text()
    record: dict[str, Any] = {"cpu": cpu_model(cpuinfo) or platform.processor() or platform.machine(),
                              "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                              "cpu_flags": matmul_flags(cpuinfo), "logical_cpus": os.cpu_count()}
    if torch.cuda.is_available():
        record["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return record


def cpuinfo_text() -> str:
    """/proc/cpuinfo, or "" where there is none (not Linux)."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux
        return ""


def cpu_model(cpuinfo: str) -> str | None:
    """The first processor's model name in a /proc/cpuinfo text."""
    for line in cpuinfo.splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return None


# The flags that decide which matmul kernels run (and so whether bf16 pays); the rest is noise here.
MATMUL_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_fp16")


def matmul_flags(cpuinfo: str) -> list[str]:
    """Which of `MATMUL_FLAGS` the first processor in a /proc/cpuinfo text has."""
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    return [f for f in MATMUL_FLAGS if f in flags]


def code_fingerprint(*modules: str, root: Path | None = None) -> str:
    """sha256 over the source files of the given modules or packages (e.g. "assay.probes.linear",
    "assay.sae"): the version of the code that computes a cached result. A cached result keyed on
    it is recomputed once any of that code changes, so a report never mixes numbers from old code.
    Read once per process (a run keys every part on the code it started with)."""
    return _code_fingerprint(tuple(sorted(set(modules))), str(root) if root is not None else None)


@functools.lru_cache(maxsize=None)
def _code_fingerprint(modules: tuple[str, ...], root: str | None) -> str:
    import hashlib

    base = Path(root) if root is not None else Path(__file__).resolve().parent
    h = hashlib.sha256()
    for name in modules:
        rel = Path(*name.split(".")[1:]) if name != "assay" else Path()
        files = sorted((base / rel).rglob("*.py")) if (base / rel).is_dir() else [(base / rel).with_suffix(".py")]
        if not files or not files[0].exists():
            raise ValueError(f"no source for module {name!r}")
        for f in files:
            h.update(str(f.relative_to(base)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()
