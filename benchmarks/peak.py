"""The matmul peak a benchmark's ratios are taken against, measured in the same run.

Only torch is imported, so a script run by another environment's Python (.venv-saelens's) can use
it without assay's model-loading dependencies.
"""

from __future__ import annotations

import time

import torch


def matmul_peak(dtype: torch.dtype, seconds: float = 3.0) -> dict:
    """Best GFLOP/s over a few GEMM shapes, including the model's own (tokens x 640 x 2048)."""
    best = {}
    for m, k, n in [(4096, 640, 2048), (4096, 2048, 640), (2048, 2048, 2048), (4096, 4096, 4096)]:
        a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
        a @ b
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds / 4:
            a @ b
            reps += 1
        best[f"{m}x{k}x{n}"] = 2 * m * k * n * reps / (time.perf_counter() - t0) / 1e9
    return {"gflops_by_shape": best, "peak_gflops": max(best.values())}
