"""The forward pass up to the deepest requested layer: no later blocks, no final norm, no LM head."""

from __future__ import annotations

import shutil
import threading

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
    back on the batch's device. Safe to call from several threads on one model at once (a server's scoring workers): a module's
    hooks fire for every thread's forward, so each call's hooks act only on its own thread's."""
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


def compile_blocks(lm: LoadedModel, deepest: int) -> None:
    """Compile blocks 0..`deepest` with inductor, once per model (a second call is a no-op).

    Each block's `forward` is compiled with dynamic shapes (a new batch shape does not recompile; the
    blocks share one graph), and its hooks stay eager, so `residual_stream` works unchanged. It pays
    where the time goes to the elementwise work around the matmuls (norms, activation, casts), as in
    bf16 on a GPU: several times the tokens/s after a first pass of seconds, with the same error
    against float32 (benchmarks/results/gpu-compile-h200.json, rendered in docs/scale.md). It gains
    less in fp32, and on an AMX CPU in bf16 the worst token moved further from float32
    (benchmarks/results/forward_compile.json).
    """
    check_can_compile(lm.device)
    for block in lm.blocks[: deepest + 1]:
        if not getattr(block, "_assay_compiled", False):
            block.forward = torch.compile(block.forward, dynamic=True)
            block._assay_compiled = True


def check_can_compile(device: torch.device) -> None:
    """Inductor builds C++ for the CPU (and Triton, which CUDA builds of torch bring, for GPUs)."""
    if device.type == "cpu" and not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        raise InputError("compiling the model on the CPU needs a C++ compiler (g++ or clang++), and none is on "
                         "PATH: install one, or extract without --compile")
