"""Load a causal LM and its tokenizer, and format prompts in its chat format."""

from assay.models.chat import FormattedPrompt, Role, format_prompts
from assay.models.loading import DEFAULT_MODEL, LoadedModel, ModelLoadError, load

__all__ = [
    "DEFAULT_MODEL",
    "FormattedPrompt",
    "LoadedModel",
    "ModelLoadError",
    "Role",
    "format_prompts",
    "load",
]
