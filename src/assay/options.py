"""The command-line grammar every `assay` command shares: one flag name, default and help text
for the dataset, the model, the layer, the aggregation, the dtype, the seed and a k-sparse probe's
k and selector.

Each is a typer `OptionInfo`, used as a parameter default (`model: str = options.MODEL`), so a
command cannot spell one differently. A layer of None means the model's middle block, resolved by
`resolve_layer` before any weights load.
"""

from __future__ import annotations

import typer

DEFAULT_MODEL = "gemma-3-270m"  # assay.models.loading.DEFAULT_MODEL, without importing torch

DATA = typer.Option(..., "--data", "-d", help="A benchmark preset (quick|full), a benchmark directory, or a user "
                    "JSONL/CSV (text,label[,split,group,cluster]).")
MODEL = typer.Option(DEFAULT_MODEL, "--model", "-m", help="HF id, local directory, .gguf file, or the bundled "
                     "gemma-3-270m.")
LAYER = typer.Option(None, "--layer", "-l", help="Residual stream after this block (0-indexed); default: the "
                     "model's middle block (9 of 18 for the bundled model).")
STUDY_LAYER = typer.Option(None, "--layer", "-l", help="Residual stream after this block (0-indexed); default: "
                           "the layer whose dense probe is best on validation in the study's layer sweep.")
AGGREGATION = typer.Option(None, "--aggregation", "-a", help="How a prompt's tokens become one vector: "
                           "'<mask>.<pool>' (mask all|user|lastN, pool mean|max|last) or 'resp-K'; default all.max "
                           "(only for methods that read one vector per prompt).")
DTYPE = typer.Option("auto", "--dtype", help="auto | float32 | bfloat16 for every forward pass (auto: bfloat16 "
                     "where this hardware multiplies in it at least 1.5x faster, else float32).")
DEVICE_MAP = typer.Option(None, "--device-map", help="auto | balanced | sequential: spread a model too big for one "
                          "GPU over all of them (accelerate); one process, not under torchrun.")
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


def check_device_map(device_map: str | None) -> str | None:
    """The --device-map value, refused before anything loads when unknown or under torchrun."""
    from assay.distributed import launched_part

    if device_map is None:
        return None
    if device_map not in DEVICE_MAPS:
        raise typer.BadParameter(f"{device_map!r}; choose one of {', '.join(DEVICE_MAPS)}", param_hint="--device-map")
    if launched_part() is not None:
        raise typer.BadParameter("under torchrun each rank has its own GPU; a device map spreads one process over "
                                 "all of them: drop one or the other", param_hint="--device-map")
    return device_map


def check_compile(compile_: bool, device_map: str | None, device: str | None = None) -> None:
    """--compile on a CPU without a C++ compiler, refused before the data and the model load (with a
    device map, accelerate picks the device: `compiled_blocks` checks it once the model is placed)."""
    if compile_ and not device_map:
        from assay.activations.forward import check_can_compile

        check_can_compile(device)


K = typer.Option(20, "--k", help="Latents a k-sparse probe may use (20: the k the study's headline quotes).")
SELECT = typer.Option("mean_diff", "--select", help="How a k-sparse probe chooses its latents: mean_diff | l1.")
LAST_TOKENS = typer.Option(512, "--last-tokens", help="Probes that read tokens (attention) read at most the last "
                           "N tokens of a prompt.")
SEED = typer.Option(0, "--seed", help="Seed of every random choice (data sampling, initialisation, bootstrap).")


def resolve_layer(model: str, layer: int | None) -> int | None:
    """`layer` checked against the model's config, or its middle block when None. None when the
    config cannot be read cheaply (the model is not local yet): `load` then decides."""
    from assay.models.peek import check_layers, n_layers

    if layer is not None:
        check_layers(model, [layer])
        return layer
    n = n_layers(model)
    return None if n is None else n // 2


def resolve_dtype_choice(dtype: str) -> str:
    """`auto` made concrete from a matmul measured here; an unknown name is a one-line error."""
    from assay.runtime import DTYPES, choose_dtype

    if dtype != "auto" and dtype.lower() not in DTYPES:
        raise typer.BadParameter(f"unknown dtype {dtype!r}: use auto, float32 or bfloat16", param_hint="--dtype")
    return choose_dtype(dtype)[0]
