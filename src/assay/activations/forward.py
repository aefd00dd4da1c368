"""The forward pass up to the deepest requested layer: no later blocks, no final norm, no LM head."""

from __future__ import annotations

import functools
import shutil
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

import torch

from assay.errors import InputError
from assay.models.loading import LoadedModel


class _StopForward(Exception):
    """Raised by the hook on the deepest block so the blocks above it never run."""


@torch.inference_mode()
def residual_stream(
    lm: LoadedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, layers: list[int]
) -> dict[int, torch.Tensor]:
    """Residual stream `[b, T, d]` after each block in `layers`, for a right-padded batch.

    The batch may sit on any device: it runs where the model's embedding is, and the results come
    back on the batch's device. Safe to call from several threads on one model at once (a server's
    scoring workers): a module's hooks fire for every thread's forward, so each call's hooks act only
    on its own thread's."""
    captured: dict[int, torch.Tensor] = {}
    deepest = max(layers)
    caller = threading.get_ident()

    def hook_for(layer: int):
        def hook(_module, _args, output):
            if threading.get_ident() != caller:
                return None
            out = output[0] if isinstance(output, tuple) else output
            # with a device_map the block may sit on another GPU: bring it to the caller's device
            captured[layer] = out.to(home, non_blocking=True)
            if layer == deepest:
                raise _StopForward
        return hook

    home, model_device = input_ids.device, lm.device  # lm.device: the first parameter's, the embedding's
    input_ids, attention_mask = input_ids.to(model_device), attention_mask.to(model_device)
    handles = [lm.block(layer).register_forward_hook(hook_for(layer)) for layer in sorted(set(layers))]
    try:
        # The base model has no LM head; the hook stops it after the deepest block anyway.
        lm.base_model()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    except _StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return captured


_COMPILED_FORWARD: dict[type, Callable] = {}  # a block class -> its compiled forward(self, ...)


@contextmanager
def compiled_blocks(lm: LoadedModel, deepest: int) -> Iterator[None]:
    """Within the `with`, blocks 0..`deepest` run compiled by inductor; afterwards eagerly again, so
    a later eager extraction of the same model does not store compiled numbers under its eager key.

    The block class's `forward` is compiled once per process with dynamic shapes (a new batch shape
    does not recompile; the blocks share one graph) and kept per class, not per block: a copied
    model never runs another's weights, and no model is kept alive. Hooks stay eager, so
    `residual_stream` works unchanged. It pays where the time goes to the elementwise work around the
    matmuls (norms, activation, casts), as in bf16 on a GPU: several times the tokens/s after a first
    pass of seconds, with the same error against float32 (benchmarks/results/gpu-compile-h200.json,
    rendered in docs/scale.md). It gains less in fp32, and on an AMX CPU in bf16 the worst token moved
    further from float32 (benchmarks/results/forward_compile.json).
    """
    check_can_compile(lm.device)
    blocks = lm.blocks[: deepest + 1]
    try:
        for block in blocks:
            cls = type(block)
            if cls not in _COMPILED_FORWARD:
                _COMPILED_FORWARD[cls] = _compile_errors_said_plainly(torch.compile(cls.forward, dynamic=True))
            block.forward = functools.partial(_COMPILED_FORWARD[cls], block)
        yield
    finally:
        for block in blocks:
            block.__dict__.pop("forward", None)  # the class's eager forward again


def _compile_errors_said_plainly(compiled):
    """Compiling happens at the first forward; a toolchain that fails there (a broken compiler, a GPU
    Triton does not support) gets one line that says what to do, not inductor's pages of trace."""
    from torch._dynamo.exc import TorchDynamoException
    from torch._inductor.exc import InductorError

    @functools.wraps(compiled)
    def forward(*args, **kwargs):
        try:
            return compiled(*args, **kwargs)
        except (TorchDynamoException, InductorError) as err:
            first = (str(err).strip().splitlines() or [""])[0][:300]
            raise InputError(f"torch.compile could not compile the model here ({type(err).__name__}: {first}); "
                             "run without --compile") from err
    return forward


def check_can_compile(device: torch.device | str | None = None) -> None:
    """Inductor builds C++ for the CPU (and Triton, which CUDA builds of torch bring, for GPUs);
    `device` None is where assay would put the model (`runtime.default_device`)."""
    from assay.runtime import default_device

    device = torch.device(device) if device is not None else default_device()
    if device.type == "cpu" and not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        raise InputError("compiling the model on the CPU needs a C++ compiler (g++ or clang++), and none is on "
                         "PATH: install one, or extract without --compile")
