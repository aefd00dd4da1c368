"""What produced a result: package version, git commit, host, and the config that was run."""

from __future__ import annotations

import datetime as _dt
import functools
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
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }


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
