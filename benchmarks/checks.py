"""Argument checks the benchmark scripts share: a bad value is one argparse error line at the
start, not a traceback after minutes of loading and measuring."""

from __future__ import annotations

import argparse
from pathlib import Path


def check_args(ap: argparse.ArgumentParser, *, at_least: dict[str, tuple[float, float]] | None = None,
               positive: dict[str, float] | None = None, fraction: dict[str, float] | None = None,
               n_prompts: int | None = None, layer: int | None = None, dtypes: str | None = None,
               auto_ok: bool = True, bundle: str | None = None) -> None:
    """`at_least`: flag -> (value, least); `positive`: flag -> value above 0; `fraction`: flag -> value
    in [0, 1]. `n_prompts` is checked against the quick benchmark, `layer` against the bundled model,
    each of the comma-separated `dtypes` against assay's names, `bundle` for a monitor bundle."""
    from assay.errors import InputError
    from assay.models.peek import check_layers
    from assay.runtime import resolve_dtype

    for flag, (value, least) in (at_least or {}).items():
        if value < least:
            ap.error(f"{flag} must be at least {least}")
    for flag, value in (positive or {}).items():
        if not value > 0:
            ap.error(f"{flag} must be above 0")
    for flag, value in (fraction or {}).items():
        if not 0 <= value <= 1:
            ap.error(f"{flag} must be a fraction between 0 and 1")
    if bundle is not None and not (Path(bundle) / "bundle.json").is_file():
        ap.error(f"--bundle {bundle}: not a monitor bundle (no bundle.json); build one with `assay monitor build` "
                 "(README), or pass docs/results/monitor-full")
    if n_prompts is not None:
        from assay.data import build_benchmark

        available = len(build_benchmark("quick", 0).texts)
        if n_prompts > available:
            ap.error(f"--n {n_prompts}: the quick benchmark has {available} prompts")
    if dtypes is not None and not (auto_ok and dtypes == "auto"):
        for name in dtypes.split(","):
            try:
                resolve_dtype(name.strip())
            except InputError as err:
                ap.error(f"dtype {name.strip()!r}: {err}")
    if layer is not None:
        try:
            check_layers("gemma-3-270m", [layer])
        except InputError as err:
            ap.error(f"--layer: {err}")
