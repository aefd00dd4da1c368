"""Content hashes that key cached results on a model: of files (remembered by path, size and mtime),
of a local checkpoint's weights, and of a tokenizer."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from assay.fileio import read_json, sha256_file, write_json
from assay.runtime import cache_dir


def file_digest(path: Path) -> str:
    """sha256 of a file's content, remembered by (path, size, mtime) in the cache so a second load of a
    multi-GB checkpoint does not read it again. A change that keeps both size and mtime (rare: any
    write updates mtime, unless it is reset on purpose) would go unseen; `ASSAY_REHASH=1` rehashes."""
    path = Path(path).resolve()
    st = path.stat()
    tag = f"{path}|{st.st_size}|{st.st_mtime_ns}"
    store = cache_dir() / "file-digests.json"
    try:
        known = read_json(store) if os.environ.get("ASSAY_REHASH") != "1" else {}
        known = known if isinstance(known, dict) else {}
    except (OSError, ValueError):  # unreadable or corrupt: start a new one
        known = {}
    if isinstance(known.get(tag), str):
        return known[tag]
    digest = sha256_file(path)
    # Forget older versions of this file and files that are gone (test folders, replaced caches).
    known = {k: v for k, v in known.items() if not k.startswith(f"{path}|") and Path(k.rsplit("|", 2)[0]).exists()}
    known[tag] = digest
    try:
        write_json(store, known)
    except OSError:  # a read-only cache still works, only slower
        pass
    return digest


_WEIGHTS = {".safetensors", ".bin", ".pt", ".pth", ".gguf"}


def _weights_digest(path: Path) -> str:
    """Fingerprint of a local checkpoint: the full content of every weights file and config.json."""
    h = hashlib.sha256()
    files = [p for p in path.iterdir() if p.is_file() and (p.suffix in _WEIGHTS or p.name == "config.json")]
    for f in sorted(files):
        h.update(f"{f.name}:{file_digest(f)}".encode())
    return h.hexdigest()


def tokenizer_hash(tokenizer: Any) -> str:
    """Hash of everything in the tokenizer that changes token ids or the chat format."""
    saved = Path(str(getattr(tokenizer, "name_or_path", ""))) / "tokenizer.json"
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if saved.is_file():  # hashing the file is ~10x faster than serialising the tokenizer again
        vocab = sha256_file(saved)
    elif backend is not None:
        vocab = backend.to_str()
    else:
        vocab = repr(sorted(tokenizer.get_vocab().items()))
    return _tokenizer_digest(vocab, getattr(tokenizer, "chat_template", None) or "")


def _tokenizer_digest(vocab: str, chat_template: str) -> str:
    h = hashlib.sha256()
    h.update(vocab.encode())
    h.update(chat_template.encode())
    return h.hexdigest()[:16]


_CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json", "additional_chat_templates")


def _tokenizer_hash_from_files(source: Path) -> str | None:
    """`tokenizer_hash` of the tokenizer saved in `source` without loading it, where its files say
    all it depends on: a tokenizer.json, and no chat template in any of the places transformers reads
    one from. None otherwise (a Hub id, a slow tokenizer, a chat model): then the tokenizer is loaded."""
    if not (source / "tokenizer.json").is_file() or any((source / f).exists() for f in _CHAT_TEMPLATE_FILES):
        return None
    config_file = source / "tokenizer_config.json"
    try:
        config = read_json(config_file) if config_file.exists() else {}
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict) or config.get("chat_template"):
        return None
    return _tokenizer_digest(sha256_file(source / "tokenizer.json"), "")
