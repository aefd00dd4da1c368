"""Map a model name (the bundled default, a GGUF file, a local directory, a Hub id) to what
`from_pretrained` reads, with the fingerprint of its weights."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from assay.fileio import read_json, sha256_json
from assay.models.bundled import _BUNDLED, DEFAULT_MODEL, _bundled_gguf
from assay.models.dequantise import _dequantised
from assay.models.fingerprints import _WEIGHTS, _weights_digest, file_digest
from assay.models.load_errors import ModelLoadError


def _resolve(name: str, revision: str | None) -> tuple[str, dict[str, Any]]:
    """Map a model name to something `from_pretrained` reads, plus a weights fingerprint."""
    if not name or not name.strip():
        raise ModelLoadError(f"no model named; pass an HF id, a local directory, a .gguf file or {DEFAULT_MODEL!r}")
    if name in _BUNDLED:
        return _from_gguf(name, *_bundled_gguf(name))
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if path.is_dir():
            raise ModelLoadError(f"{path} is a directory, not a GGUF file; pass the .gguf file inside it")
        if not path.is_file():
            raise ModelLoadError(f"GGUF file not found: {path}")
        with open(path, "rb") as f:
            if f.read(4) != b"GGUF":
                raise ModelLoadError(f"{path} is not a GGUF file (it does not start with the GGUF magic bytes)")
        return _from_gguf(name, path, file_digest(path))
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"{path} is not a model directory (no config.json). Pass a directory saved by "
                f"save_pretrained, a .gguf file, an HF model id, or {DEFAULT_MODEL!r}."
            )
        return str(path), {"model": str(path.resolve()), "weights_sha256": _weights_digest(path), "revision": None}
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelLoadError(f"model path not found: {path}")
    if not _valid_hub_id(name):
        raise ModelLoadError(f"model {name!r} is neither an existing path nor a valid Hugging Face model id "
                             f"(owner/name); pass a local directory, a .gguf file, an HF id or {DEFAULT_MODEL!r}")
    # Anything else is an HF Hub id. Without a cached copy and without the Hub, fail now: left
    # alone, transformers retries for about a minute before saying the same.
    cached = _hub_cached(name, revision)
    if not cached and not _hub_reachable():
        raise ModelLoadError(
            f"model {name!r} is not in the local Hugging Face cache and the Hub cannot be reached from this "
            f"machine; download it where there is a network (or copy its folder here and pass the path), "
            f"or use {DEFAULT_MODEL!r}, which ships with assay (HF_HUB_OFFLINE=1 skips the connection attempt)")
    return name, {"model": name, "weights_sha256": None, "revision": revision,
                  "_offline": cached and not _hub_reachable()}


def _from_gguf(name: str, gguf: Path, sha: str) -> tuple[str, dict[str, Any]]:
    """The dequantised copy, fingerprinted by the GGUF and by the verified weights of the copy, so
    activations made from weights other than these (a damaged copy, another converter's output) are
    never reused. Only weights files count: config.json also records the transformers version,
    which would change every key on an upgrade that leaves the numbers alone."""
    out = _dequantised(gguf, sha)
    files = read_json(out / "assay-complete.json")["files_sha256"]
    weights = {n: d for n, d in files.items() if Path(n).suffix in _WEIGHTS}
    return str(out), {"model": name, "weights_sha256": sha, "dequantised_sha256": sha256_json(weights)[:16],
                      "revision": None}


def _valid_hub_id(name: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _hub_cached(name: str, revision: str | None) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(name, "config.json", revision=revision)
    except Exception:  # an id huggingface_hub cannot even parse is not cached
        return False
    return isinstance(found, str)


_REACHABLE: dict[str, bool] = {}


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Can this machine open a connection to the Hub? False at once under HF_HUB_OFFLINE."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "") in ("1", "true", "True") or os.environ.get("TRANSFORMERS_OFFLINE") == "1":
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    if host not in _REACHABLE:
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            _REACHABLE[host] = True
        except OSError:
            _REACHABLE[host] = False
    return _REACHABLE[host]
