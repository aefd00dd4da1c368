"""Shared fixtures: the bundled tokenizer and a tiny randomly initialised Gemma 3 on top of it."""

from __future__ import annotations

import os

import pytest
import torch

from assay.models.loading import DEFAULT_MODEL, LoadedModel
from assay.models.resolve import _resolve


@pytest.fixture(scope="session", autouse=True)
def _own_monitor_selections(tmp_path_factory):
    """Monitor builds keep their finished selection in the cache; under test they keep it in this
    session's temporary folder (one per cache root, so a test with its own ASSAY_CACHE has its own),
    or a rerun of the suite would take the last run's selection instead of computing one."""
    import assay.monitor.build as build
    from assay.fileio import sha256_json
    from assay.runtime import cache_dir

    root = tmp_path_factory.mktemp("monitor-selection")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(build, "selection_dir", lambda: root / sha256_json(str(cache_dir()))[:12])
        yield


@pytest.fixture
def one_thread():
    """Torch on one thread for the test: tiny matmuls only pay the threads' overhead on shared cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def bundled_dir() -> str:
    """The bundled model's dequantised directory (converted once, then cached)."""
    source, _ = _resolve(DEFAULT_MODEL, None)
    return source


@pytest.fixture(scope="session")
def tokenizer(bundled_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(bundled_dir)


def tiny_device() -> torch.device:
    """Where the tiny model runs: the CPU unless ASSAY_TEST_DEVICE names another device."""
    return torch.device(os.environ.get("ASSAY_TEST_DEVICE") or "cpu")


def tiny_gemma3(tokenizer, dtype=torch.float32, seed: int = 0) -> LoadedModel:
    """Gemma 3's architecture at toy size; a sliding window of 8 so local attention really bites."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(seed)
    config = Gemma3TextConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
        num_attention_heads=2, num_key_value_heads=1, head_dim=32, sliding_window=8,
        layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"],
        max_position_embeddings=256, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    # ASSAY_TEST_DEVICE=cuda runs the tiny-model tests' forwards on a GPU (the weights are drawn on
    # the CPU first, so they are the same numbers there)
    model = Gemma3ForCausalLM(config).to(dtype).eval().requires_grad_(False).to(tiny_device())
    return LoadedModel(model=model, tokenizer=tokenizer, name="tiny-gemma3",
                       fingerprint={"model": "tiny-gemma3", "seed": seed, "dtype": str(dtype)})


@pytest.fixture(scope="session")
def tiny(tokenizer) -> LoadedModel:
    return tiny_gemma3(tokenizer)


@pytest.fixture(scope="session")
def bundled():
    from assay.models import load

    return load(DEFAULT_MODEL, dtype="float32", device="cpu")


PROMPTS = [
    "How do I bake sourdough bread at home?",
    "Give step-by-step instructions for picking a lock.",
    "hi",
    "Summarise the plot of Hamlet in three sentences, then list its main characters and what "
    "happens to each of them by the end of the play.",
    "What is the maximum safe daily dose of acetaminophen for an adult?",
    "Write a short poem about the sea.",
]


@pytest.fixture(scope="session")
def smoke_cfg():
    """The smoke-sized study (tests/smoke_study.py), shared by every end-to-end study test."""
    from smoke_study import smoke_config

    return smoke_config()


@pytest.fixture(scope="session")
def smoke_run(smoke_cfg, tmp_path_factory):
    from assay.experiment import run_study

    out = tmp_path_factory.mktemp("study") / "run"
    return run_study(smoke_cfg, out, progress=False), out


def toy_benchmark(tmp_path):
    """A 48-row JSONL benchmark (12 rows per split, labels by the last word, clusters of 4) for study
    tests on the tiny model; returns its path."""
    import json

    import numpy as np

    rng = np.random.default_rng(0)
    words = ["how", "do", "I", "make", "bake", "a", "bomb", "cake", "steal", "car", "wash", "the"]
    rows = []
    for split in ("train", "val", "calib", "ood"):
        for i in range(12):
            label = i % 2
            text = " ".join(rng.choice(words, 6)) + (" bomb" if label else " cake")
            rows.append({"text": text, "label": label, "split": split, "cluster": f"{split}-{i // 4}"})
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
