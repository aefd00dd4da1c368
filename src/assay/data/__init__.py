"""Harmful-intent benchmark data: sources, jailbreak wrappers, transformations, splits, cards.

`build_benchmark(preset, seed)` builds (or reuses) the benchmark; `load_dataset(path)` reads a
built benchmark or a user JSONL/CSV. Heavy work happens only when these are called.
"""

from assay.data.dataset import Dataset, Example, fingerprint, load_dataset
from assay.data.user import DatasetError, DatasetWarning


def build_benchmark(preset: str = "quick", seed: int = 0, out_dir=None, force: bool = False) -> Dataset:
    from assay.data.benchmark import build_benchmark as _build

    return _build(preset, seed, out_dir, force)


PRESETS = ("quick", "full")


def load_or_build(spec: str, seed: int = 0) -> Dataset:
    """A benchmark preset name (built on first use), a benchmark directory, or a user JSONL/CSV."""
    if spec in PRESETS:
        return build_benchmark(spec, seed)
    return load_dataset(spec)


__all__ = ["PRESETS", "load_or_build", "Dataset", "DatasetError", "DatasetWarning", "Example", "build_benchmark", "fingerprint", "load_dataset"]
