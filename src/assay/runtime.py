"""Process-wide settings: where caches live, which device and dtype to use, allocator tuning."""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported lazily so `assay --help` stays fast
    import torch

log = logging.getLogger(__name__)

# Accepted spellings of each dtype, by torch attribute name.
DTYPES: dict[str, str] = {
    "float32": "float32", "fp32": "float32",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float16": "float16", "fp16": "float16",
}


def cache_dir() -> Path:
    """Root of assay's on-disk caches: `$ASSAY_CACHE`, else `~/.cache/assay`."""
    root = Path(os.environ.get("ASSAY_CACHE", Path.home() / ".cache" / "assay")).expanduser()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):  # a file where the folder (or one above it) should be
        from assay.errors import InputError

        raise InputError(f"the cache folder {root} is a file (or under one); point ASSAY_CACHE at a folder") from None
    return root


def default_device() -> "torch.device":
    """This rank's GPU under torchrun, else the GPU when there is one, else the CPU."""
    import torch

    from assay.distributed import local_device

    return torch.device(local_device() or ("cuda" if torch.cuda.is_available() else "cpu"))


def resolve_dtype(dtype: "str | torch.dtype") -> "torch.dtype":
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    from assay.errors import InputError

    try:
        return getattr(torch, DTYPES[str(dtype).lower()])
    except KeyError:
        raise InputError(f"unknown dtype {dtype!r}; choose one of {sorted(set(DTYPES))}") from None


def dtype_name(dtype: "torch.dtype") -> str:
    return str(dtype).removeprefix("torch.")


def search_dtype_for(dtype: "str | torch.dtype") -> str | None:
    """The dtype TopK SAEs shortlist each token's top k in (`assay.sae.sparse.topk_encode`) when the
    model runs in `dtype`: bfloat16 where the model does (`--dtype auto` picks it only where bf16
    matmuls are faster), the code then computed exactly in fp32; None (no shortlist) otherwise. The
    one rule for training and encoding alike, so every entry point encodes the same way."""
    import torch

    return "bfloat16" if resolve_dtype(dtype) == torch.bfloat16 else None


def threads_per_worker(workers: int) -> int:
    """torch intra-op threads for each of `workers` threads that share this process's cores."""
    import torch

    return max(1, torch.get_num_threads() // workers)


def set_torch_threads(n: int) -> None:
    """Run in each worker thread as it starts. torch's intra-op thread count is per thread (an
    OpenMP setting): a thread that never sets it runs on every core, whatever the thread that
    started it set."""
    import torch

    torch.set_num_threads(n)


def tune_malloc() -> bool:
    """Stop glibc from mmap-ing and unmapping every large tensor.

    glibc serves allocations above its mmap threshold with fresh mmaps and unmaps them on free, so
    every forward pass page-faults its activations in again; on 2-core CPU boxes that cost up to
    2.6x on large batches. Disabling mmap for the heap (M_MMAP_MAX = 0) and raising the trim
    threshold keeps freed memory in the heap for reuse. Call it once at start-up (the CLI does);
    a no-op off glibc or under tcmalloc.
    """
    if not sys.platform.startswith("linux") or "tcmalloc" in os.environ.get("LD_PRELOAD", ""):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    ok_mmap = libc.mallopt(m_mmap_max, 0)
    ok_trim = libc.mallopt(m_trim_threshold, 1 << 30)  # return memory to the OS only above 1 GiB free
    return bool(ok_mmap and ok_trim)


def matmul_gflops(dtype: "torch.dtype", device: "torch.device | str | None" = None, seconds: float = 0.3,
                  rows: int = 1024) -> float:
    """GFLOP/s of a (rows x 640) @ (640 x 2048) matmul, the shape of a small model's projections
    (1,024 rows: a batch of tokens; fewer make a quicker, rougher probe)."""
    import time

    import torch

    device = torch.device(device) if device is not None else default_device()
    a = torch.randn(rows, 640, dtype=dtype, device=device)
    b = torch.randn(640, 2048, dtype=dtype, device=device)
    a @ b
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * rows * 640 * 2048 * reps / (time.perf_counter() - t0) / 1e9


def bfloat16_gflops(fp32: float, device: "torch.device | str") -> tuple[float, str]:
    """bf16 matmul GFLOP/s, and the probe that measured it. On a CPU, a 32-row matmul first: where
    it is already under a twentieth of the fp32 rate, bf16 is hopeless here and the full probe is
    skipped. On AVX2-only CPUs (~0.5 GFLOP/s) one full-size bf16 matmul takes about 7 s, and the
    full probe (a warm-up and one timed call) made every command that resolves `--dtype auto` wait
    15.5 s. A small matmul only understates a fast bf16 unit, so the early-out never turns a bf16
    CPU away; anything that passes it gets the full probe. GPUs always get the full probe: there a
    32-row matmul measures kernel launches, not the tensor cores."""
    import torch

    on = torch.device(device)
    if on.type == "cpu":
        small = matmul_gflops(torch.bfloat16, on, seconds=0.05, rows=32)
        # AVX2 alone measured 0.004 to 0.02 of fp32 here, AMX 1.6 at 32 rows: a twentieth keeps a
        # 50 ms probe that a busy machine slowed several times from calling a bf16 CPU hopeless
        if small < fp32 / 20:
            return small, "32 rows"
    return matmul_gflops(torch.bfloat16, on), "1024 rows"


def matmul_speeds(device: "torch.device | str") -> dict[str, float | str]:
    """This moment's matmul GFLOP/s in float32 and bfloat16 (bf16 probed by `bfloat16_gflops`), and
    which bf16 probe ran: what `choose_dtype` decides on, and what benchmarks record beside their times."""
    import torch

    fp32 = matmul_gflops(torch.float32, device)
    bf16, probe = bfloat16_gflops(fp32, device)
    return {"float32": fp32, "bfloat16": bf16, "bfloat16_probe": probe}


def choose_dtype(requested: str = "auto", device: "torch.device | str | None" = None) -> tuple[str, dict]:
    """The dtype to run in and why: `auto` takes bfloat16 where this hardware multiplies in it at
    least 1.5x faster than in float32 (CPUs with AVX512-BF16 or AMX, recent GPUs) and float32
    elsewhere (on AVX2-only CPUs bfloat16 matmuls run tens of times slower). An explicit dtype
    is kept; a measured slowdown is reported so the caller can warn."""
    import torch

    on = torch.device(device) if device is not None else default_device()
    if requested != "auto":
        name = dtype_name(resolve_dtype(requested))
        if name == "float32" or on.type == "cuda":
            return name, {"requested": requested}
    speeds = matmul_speeds(on)
    fp32, bf16 = speeds["float32"], speeds["bfloat16"]
    why = {"requested": requested, "float32_gflops": round(fp32, 1), "bfloat16_gflops": round(bf16, 1),
           "bfloat16_probe": speeds["bfloat16_probe"], "device": on.type}
    if requested != "auto":
        name = dtype_name(resolve_dtype(requested))
        if name == "bfloat16" and bf16 < fp32:
            # Kept (the user asked), but said: on AVX2-only CPUs bf16 matmuls ran ~50x slower than fp32.
            log.warning(
                "--dtype %s is slower than float32 on this %s (matmul measured now: bfloat16 %.1f GFLOP/s, float32 "
                "%.1f GFLOP/s); --dtype float32 or auto is faster", requested, on.type, bf16, fp32)
        return name, why
    return ("bfloat16" if bf16 >= 1.5 * fp32 else "float32"), why
