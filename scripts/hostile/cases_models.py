"""Hostile model inputs beyond those in cases_files.py: broken configs, weights and tokenizers,
fake GGUFs, unreachable Hub ids, a damaged digest cache."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

from hostile_inputs import Case, Fixtures


def _copy(fx: Fixtures, damage: Callable[[Path], object]):
    """The tiny model copied to {w}/m, then damaged."""
    def setup(work: Path) -> None:
        shutil.copytree(fx.model, work / "m")
        damage(work / "m")
    return setup


def _file(name: str, content: bytes):
    def setup(work: Path) -> None:
        (work / name).write_bytes(content)
    return setup


def _edit_config(old: str, new: str):
    def damage(d: Path) -> None:
        text = (d / "config.json").read_text()
        assert old in text, f"{old!r} not in the fixture's config.json"
        (d / "config.json").write_text(text.replace(old, new))
    return damage


def _drop_tensor(d: Path) -> None:
    """A checkpoint missing one tensor: transformers fills it with random numbers and only warns."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(d / "model.safetensors")
    del tensors["model.layers.2.mlp.down_proj.weight"]
    save_file(tensors, d / "model.safetensors", metadata={"format": "pt"})


def _garbage_weights(d: Path) -> None:
    f = d / "model.safetensors"
    f.write_bytes(os.urandom(f.stat().st_size))


def _pickle_garbage(d: Path) -> None:
    (d / "model.safetensors").unlink()
    (d / "pytorch_model.bin").write_bytes(b"this is not a pickle" * 50)


def _config_dir(d: Path) -> None:
    (d / "config.json").unlink()
    (d / "config.json").mkdir()


def _other_tokenizer(d: Path) -> None:
    """A tokenizer.json of another, tiny vocabulary: token ids would not match the embeddings."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    tok = Tokenizer(WordLevel({"<unk>": 0, "hello": 1, "world": 2}, unk_token="<unk>"))
    tok.pre_tokenizer = Whitespace()
    tok.save(str(d / "tokenizer.json"))


def _dangling_link(work: Path) -> None:
    (work / "gone").mkdir()
    os.symlink(work / "gone", work / "link")
    (work / "gone").rmdir()


def _loaded(work: Path, proc) -> str | None:
    return None if "4 blocks, d_model 64" in proc.stdout else f"unexpected output {proc.stdout.strip()[-160:]!r}"


def cases(fx: Fixtures) -> list[Case]:
    m = str(fx.model)
    prep = ["models", "prepare"]
    extract = ["activations", "extract", "--data", str(fx.data_csv), "--model"]
    no_hub = {"HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0", "HF_ENDPOINT": "https://127.0.0.1:9"}
    return [
        Case("models", "blank-name", prep + ["   "]),
        Case("models", "data-file-as-model", prep + [str(fx.data_csv)]),
        Case("models", "dangling-symlink", prep + ["{w}/link"], setup=_dangling_link),
        Case("models", "path-traversal-id", prep + ["../../../etc"]),
        Case("models", "config-empty-file", prep + ["{w}/m"], setup=_copy(fx, lambda d: (d / "config.json").write_text(""))),
        Case("models", "config-json-list", prep + ["{w}/m"], setup=_copy(fx, lambda d: (d / "config.json").write_text("[]"))),
        Case("models", "config-is-a-folder", prep + ["{w}/m"], setup=_copy(fx, _config_dir)),
        Case("models", "config-contradicts-itself", prep + ["{w}/m"],
             setup=_copy(fx, _edit_config('"num_hidden_layers": 4', '"num_hidden_layers": 2'))),
        Case("models", "extract-config-contradicts-itself", extract + ["{w}/m", "--layer", "1"],
             setup=_copy(fx, _edit_config('"num_hidden_layers": 4', '"num_hidden_layers": 2'))),
        Case("models", "config-shape-mismatch", prep + ["{w}/m"],
             setup=_copy(fx, _edit_config('"hidden_size": 64', '"hidden_size": 96'))),
        Case("models", "weights-missing-a-tensor", extract + ["{w}/m", "--layer", "1"], setup=_copy(fx, _drop_tensor)),
        Case("models", "weights-random-bytes", prep + ["{w}/m"], setup=_copy(fx, _garbage_weights)),
        Case("models", "weights-empty-file", prep + ["{w}/m"],
             setup=_copy(fx, lambda d: (d / "model.safetensors").write_bytes(b""))),
        Case("models", "weights-pickle-garbage", prep + ["{w}/m"], setup=_copy(fx, _pickle_garbage)),
        Case("models", "tokenizer-json-corrupt", prep + ["{w}/m"],
             setup=_copy(fx, lambda d: (d / "tokenizer.json").write_text('{"model": '))),
        Case("models", "tokenizer-of-another-model", extract + ["{w}/m", "--layer", "1"], setup=_copy(fx, _other_tokenizer)),
        Case("models", "gguf-magic-then-garbage", prep + ["{w}/x.gguf"], setup=_file("x.gguf", b"GGUF" + os.urandom(4096))),
        Case("models", "gguf-empty-file", prep + ["{w}/x.gguf"], setup=_file("x.gguf", b"")),
        Case("models", "gguf-is-a-folder", prep + ["{w}/x.gguf"], setup=lambda w: (w / "x.gguf").mkdir()),
        Case("models", "hub-id-bad-characters", prep + ["bad id!!"]),
        # Not offline by setting, but no Hub: refused after one quick connection attempt, not ~1 min of retries.
        Case("models", "hub-unreachable-fails-fast", prep + ["some-org/not-cached-anywhere"], env=no_hub, timeout=30),
        Case("models", "extract-layer-huge", extract + [m, "--layer", "99999999999999999999"]),
        # A garbled digest cache is ignored (and rewritten): the model still loads.
        Case("models", "digest-cache-corrupt", prep + [m], expect="ok", env={"ASSAY_CACHE": "{w}/cache"},
             setup=lambda w: ((w / "cache").mkdir(), (w / "cache" / "file-digests.json").write_text("{garbage")),
             check=_loaded),
    ]
