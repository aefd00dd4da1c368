"""`LoadedModel`, a causal LM and its tokenizer (read now or on first use), and what it answers
about the model (decoder blocks, layers, width) from the model or its config alone."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from assay.errors import InputError
from assay.models.load_errors import ModelLoadError

log = logging.getLogger(__name__)


class LoadedModel:
    """A causal LM ready for activation extraction.

    `load(..., lazy=True)` gives one whose weights and tokenizer are read on first use: a rerun
    whose every stage is cached then needs only the fingerprint (cache keys) and the config
    (layers, width), and never pays the seconds of reading 1 GB of weights and a 33 MB tokenizer.json.
    From a local directory even the config is read from config.json as plain JSON (`config_fields`)
    and transformers' own config only when first asked for: building it imports transformers' model
    registry, about 2 s of a cached rerun's 10.
    """

    def __init__(self, model: nn.Module | None = None, tokenizer: Any = None, name: str = "",
                 fingerprint: dict[str, Any] | None = None, *,
                 load_model: Callable[[], nn.Module] | None = None, load_tokenizer: Callable[[], Any] | None = None,
                 load_config: Callable[[], Any] | None = None,
                 config_fields: dict[str, int | None] | None = None, device: torch.device | None = None,
                 dtype: torch.dtype | None = None, no_chat_template: bool = False) -> None:
        if (model is None) == (load_model is None) or (tokenizer is None) == (load_tokenizer is None):
            raise ValueError("give each of the model and the tokenizer, or a function that loads it, not both")
        self._model, self._tokenizer = model, tokenizer
        self._load_model, self._load_tokenizer = load_model, load_tokenizer
        # a lazy model's config, built once on first use (`load` memoises it), and the fields it
        # answers before that (read from config.json, or from that config when the file cannot say)
        self._load_config, self._fields, self._device, self._dtype = load_config, config_fields, device, dtype
        self._no_chat_template = no_chat_template  # its files say so: the tokenizer need not be read to know
        self.name = name
        self.fingerprint = fingerprint if fingerprint is not None else {}

    @property
    def model(self) -> nn.Module:
        if self._model is None:
            log.info("loading the weights of %s", self.name)
            model = self._load_model()
            # the layer count a lazy model answered with came from its config
            said = self._fields["n_layers"] if self._fields is not None else None
            if said is not None and len(decoder_blocks(model)) != said:
                raise ModelLoadError(f"model {self.name!r}: config.json says {said} layers "
                                     f"but the model has {len(decoder_blocks(model))} decoder blocks")
            self._model = model
        return self._model

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            self._tokenizer = self._load_tokenizer()
        return self._tokenizer

    @property
    def loaded(self) -> bool:
        """Whether the weights are in memory (a lazy model's are not until first used)."""
        return self._model is not None

    @property
    def config(self) -> Any:
        return self._model.config if self._model is not None else self._load_config()

    @property
    def device(self) -> torch.device:
        if self._model is None:
            return self._device
        return next(self._model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        if self._model is None:
            return self._dtype
        return next(self._model.parameters()).dtype

    @property
    def n_layers(self) -> int:
        return len(self.blocks) if self._model is not None else self._fields["n_layers"]

    @property
    def d_model(self) -> int:
        return _fields_of(self._model.config)["d_model"] if self._model is not None else self._fields["d_model"]

    @property
    def max_positions(self) -> int | None:
        return (_fields_of(self._model.config) if self._model is not None else self._fields)["max_positions"]

    @property
    def blocks(self) -> nn.ModuleList:
        return decoder_blocks(self.model)

    def with_tokenizer(self, tokenizer: Any) -> "LoadedModel":
        """The same model (shared, and read now if it was not) with another tokenizer, e.g. a private
        copy for another thread."""
        return LoadedModel(model=self.model, tokenizer=tokenizer, name=self.name, fingerprint=self.fingerprint)

    def chat_affixes(self) -> tuple[str, str]:
        """`models.chat.chat_affixes` of the tokenizer, without reading it when it has no chat template."""
        from assay.models.chat import GEMMA_PREFIX, GEMMA_SUFFIX, chat_affixes

        if self._tokenizer is None and self._no_chat_template:
            return GEMMA_PREFIX, GEMMA_SUFFIX
        return chat_affixes(self.tokenizer)

    def block(self, layer: int) -> nn.Module:
        """The decoder block whose output is the residual stream at `layer`.

        assay's layer L is the output of block L (0-indexed): `hidden_states[L + 1]` in
        transformers, `blocks.L.hook_resid_post` in SAELens/TransformerLens.
        """
        check_layer(layer, self.n_layers)
        return self.blocks[layer]

    def base_model(self) -> nn.Module:
        """The transformer without its LM head."""
        return self.model.get_decoder() if hasattr(self.model, "get_decoder") else self.model.base_model


def check_layer(layer: int, n_layers: int) -> None:
    if not isinstance(layer, int) or not 0 <= layer < n_layers:
        raise InputError(
            f"layer {layer!r} is out of range: this model has {n_layers} blocks, so layers run "
            f"0..{n_layers - 1} (layer L is the residual stream after block L)"
        )


def decoder_blocks(model: nn.Module) -> nn.ModuleList:
    """The list of decoder blocks of an HF causal LM, whatever the family calls it."""
    for path in ("model.layers", "model.language_model.layers", "transformer.h", "gpt_neox.layers",
                 "model.decoder.layers", "layers"):
        obj: Any = model
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        if isinstance(obj, nn.ModuleList):
            return obj
    raise ModelLoadError(
        f"cannot find the decoder blocks of {type(model).__name__}: assay reads decoder-only causal LMs "
        f"(Gemma, Llama, Mistral, Qwen, GPT-2, ...), not encoders such as BERT; pass one of those")


def _fields_of(config: Any) -> dict[str, int | None]:
    """What a lazy model answers from its config: layers, width and context length."""
    text = config.get_text_config()
    return {"n_layers": int(text.num_hidden_layers), "d_model": int(text.hidden_size),
            "max_positions": getattr(text, "max_position_embeddings", None)}


def config_file_fields(directory: Path) -> dict[str, int | None] | None:
    """`_fields_of` read from a local model directory's config.json as plain JSON, or None where
    only transformers can say: no such file, invalid JSON, no model_type, a field missing (left to the
    config class's default, or spelled another way, as GPT-2's n_layer) or not a positive integer,
    a sub-config other than text_config that has layers, or a Hub cache snapshot (whose revision
    transformers reads from the path). A nested text_config's values win, as `get_text_config()`
    picks it for multimodal models."""
    if "snapshots" in directory.parts:
        return None
    try:
        raw = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(raw, dict) or not isinstance(raw.get("model_type"), str):
        return None
    if {k for k, v in raw.items() if isinstance(v, dict) and "num_hidden_layers" in v} - {"text_config"}:
        return None  # another sub-model's config (a vision tower's, an llm_config): transformers knows which
    text = raw.get("text_config") if isinstance(raw.get("text_config"), dict) else raw
    fields = {"n_layers": text.get("num_hidden_layers"), "d_model": text.get("hidden_size"),
              "max_positions": text.get("max_position_embeddings")}
    if not all(type(v) is int and v > 0 for v in fields.values()):
        return None
    return fields
