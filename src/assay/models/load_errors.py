"""What loading a model raises (`ModelLoadError`), what it catches from the libraries that read a
checkpoint, and how it quotes their messages."""

from __future__ import annotations

from assay.errors import AssayError


class ModelLoadError(AssayError, ValueError):
    """The model could not be found or read; the message says what to do."""


def _load_errors() -> tuple[type[BaseException], ...]:
    """What transformers, safetensors and torch raise for a broken or foreign checkpoint (no weights,
    invalid JSON, an architecture transformers does not know, truncated tensors, a bad pickle)."""
    import pickle

    from safetensors import SafetensorError

    errors: tuple[type[BaseException], ...] = (
        OSError, ValueError, KeyError, IndexError, RuntimeError, TypeError, AttributeError, ImportError,
        EOFError, pickle.UnpicklingError, SafetensorError)
    try:  # a config whose fields contradict each other (huggingface_hub's strict dataclasses)
        from huggingface_hub.errors import StrictDataclassError

        errors += (StrictDataclassError,)
    except ImportError:
        pass
    return errors


def _gist(err: BaseException) -> str:
    """The start of a third-party error message, on one line (some put the reason on their second)."""
    import traceback

    if any("torch/serialization" in f.filename for f in traceback.extract_tb(err.__traceback__)):
        # torch's own text suggests weights_only=False, which would run whatever code the file holds
        return ("its .bin/.pt weights are not a readable PyTorch checkpoint (damaged, or a pickle that "
                "needs code run to load, which assay refuses)")
    if "ignore_mismatched_sizes" in str(err):
        return "the shapes of its weights do not match config.json (a config of another model size?)"
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return " ".join(lines[:2])[:300].rstrip(".:") if lines else type(err).__name__
