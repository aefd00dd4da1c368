"""Load a causal LM and its tokenizer, and format prompts in its chat format."""

from assay._lazy import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "assay.models.chat": ["FormattedPrompt", "Role", "format_prompts"],
    "assay.models.loading": ["DEFAULT_MODEL", "LoadedModel", "ModelLoadError", "load"],
})
