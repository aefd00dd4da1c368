"""Lazy package exports: `assay --help` imports every sub-CLI, which must not pull in torch."""

from __future__ import annotations

from importlib import import_module
from typing import Any, Callable


def lazy_exports(package: str, exports: dict[str, list[str]]) -> tuple[list[str], Callable[[str], Any]]:
    """`__all__, __getattr__ = lazy_exports(__name__, {module: [names]})` in a package's __init__."""
    where = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(import_module(where[name]), name)

    return list(where), __getattr__
