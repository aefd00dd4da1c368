"""Residual-stream extraction into the disk cache: bucketed, budgeted, resumable, checksummed."""

from __future__ import annotations

import logging
import re
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from safetensors.torch import save_file

from assay.activations.batching import length_order, shard_plan, token_budget_batches
from assay.activations.aggregation import DEFAULT_AGGREGATIONS, Aggregation, pool_roles, real_tokens
from assay.activations.forward import compiled_blocks, residual_stream
from assay.activations.reuse import borrow, borrowed_examples, borrowed_ok, prompt_keys, view_name
from assay.activations.store import (
    MANIFEST, ActivationSet, activations_root, part_record, read_manifest, record_name, shard_name,
    verify_shard,
)
from assay.errors import ConfigMismatchError
from assay.fileio import atomic_path, sha256_file, sha256_json, write_json
from assay.models.chat import FormattedPrompt, format_prompts
from assay.models.loading import LoadedModel, check_layer
from assay.provenance import provenance
from assay.runtime import dtype_name

log = logging.getLogger(__name__)

# Bump when a change to extraction changes the numbers it stores. 2: documents (`chat=False`)
# keep their special tokens again; entries written since b08aa9a hold chat-template markers of the
# SAE corpus's conversations split into plain text, under the same key, so none is reused.
EXTRACTION_VERSION = 2


def default_token_budget(device: torch.device) -> int:
    """Padded tokens per forward batch: bounds memory, and big enough to keep matmuls efficient."""
    return 32768 if device.type == "cuda" else 4096


def cache_spec(
    lm: LoadedModel, layers: list[int], aggregations: list[str], dataset: str, chat: bool,
    max_tokens: int | None, store_tokens: bool, compiled: bool = False,
) -> dict[str, Any]:
    """Everything that changes the stored numbers; its hash is the cache key."""
    prefix, suffix = lm.chat_affixes() if chat else ("", "")
    spec = {
        "version": EXTRACTION_VERSION,
        "model": lm.fingerprint | {"model": lm.fingerprint.get("model", lm.name)},
        "dtype": dtype_name(lm.dtype),
        "layers": sorted(set(layers)),
        "features": list(aggregations),  # the on-disk name: existing cache keys stay valid
        "dataset": dataset,
        "chat_format": [prefix, suffix] if chat else None,
        "max_tokens": max_tokens,
        "store_tokens": store_tokens,
    }
    if compiled:  # compiled kernels round differently from eager ones: their own entry; eager keys unchanged
        spec["compiled"] = True
    return spec


def extract(
    lm: LoadedModel,
    texts: Sequence[str],
    layers: int | Sequence[int],
    *,
    dataset_fingerprint: str | None = None,
    aggregations: Sequence[str] = DEFAULT_AGGREGATIONS,
    store_tokens: bool = True,
    chat: bool = True,
    max_tokens: int | None = None,
    token_budget: int | None = None,
    shard_tokens: int = 1 << 15,
    root: str | Path | None = None,
    progress: bool = True,
    part: tuple[int, int] | None = None,
    reuse: bool = True,
    compile: bool = False,
) -> ActivationSet | None:
    """Residual-stream activations of `texts` at `layers`, from the cache or extracted into it.

    Runs the model only up to the deepest layer. An interrupted extraction resumes from its last
    complete shard; a shard whose checksum fails is extracted again. Prompts another complete entry
    already holds (same model, dtype and token ids; at least these layers and aggregations) are
    read from there, not run again: re-labelling, re-splitting, subsetting or extending a dataset
    extracts only its new prompts (see `assay.activations.reuse`). `reuse=False` extracts every
    prompt into the entry's own shards: a shuffled token stream (`iter_tokens`) follows the shard
    layout, so SAE training corpora use it to stream the same tokens in the same order whatever the
    cache held before.

    `part=(i, n)` extracts only shards s with s % n == i, for n processes sharing the work (torchrun
    ranks, or a Slurm or Ray array with `--shard i/n`). Parts never write the shared manifest while
    they work: each shard gets a record beside it, written after the shard, and whichever part finds
    every shard there writes the complete manifest and gets the `ActivationSet`; the others get None.
    A killed part's missing shards are extracted by its next run; finished ones are kept.

    `compile=True` runs the blocks compiled (`assay.activations.forward.compiled_blocks`): worth its
    first-pass cost on a GPU for a large extraction. Its numbers go to their own cache entry.
    """
    if part is not None and not (part[1] >= 1 and 0 <= part[0] < part[1]):
        raise ValueError(f"part {part[0]}/{part[1]}: need 0 <= i < n")
    layers = [layers] if isinstance(layers, int) else list(layers)
    if not layers:
        raise ValueError("no layers requested")
    for layer in layers:
        check_layer(layer, lm.n_layers)
    parsed = [Aggregation.parse(a) for a in aggregations]
    max_tokens = max_tokens or lm.max_positions
    texts = list(texts)
    dataset = dataset_fingerprint or sha256_json(texts)
    spec = cache_spec(lm, layers, list(aggregations), dataset, chat, max_tokens, store_tokens, compile)
    path = activations_root(root) / sha256_json(spec)[:20]
    manifest = _existing_manifest(path, spec, len(texts), lm)
    # A finished, intact entry is reused as it is, whatever shard size made it (sharding never
    # changes the numbers), and before any tokenising: its spec already names the tokenizer and
    # the texts, so a rerun from a warm cache need not even load the tokenizer.
    if manifest is not None and manifest.get("complete") and all(
            _shard_ok(path, manifest, s) for s in range(len(manifest["shards"]))):
        return ActivationSet(path)
    prompts = format_prompts(lm.tokenizer, texts, max_tokens=max_tokens, chat=chat)
    keys = prompt_keys(prompts)
    lengths = [len(p.input_ids) for p in prompts]
    plan = _resumable_plan(path, manifest, lengths, shard_tokens) if manifest is not None else None
    if plan is None and part is not None and manifest is not None:
        _check_parts_agree(path, manifest, shard_tokens)
    if plan is None:  # new, or unfinished under another shard size, or a donor it borrowed from is gone
        path.mkdir(parents=True, exist_ok=True)
        borrowed, covered = borrow(activations_root(root), path, spec, keys) if reuse else ([], set())
        plan = _own_plan(lengths, covered, shard_tokens)
        manifest = _start_manifest(path, spec, plan, borrowed, prompts, lm, shard_tokens)
    _adopt_records(path, manifest)
    mine = range(len(plan)) if part is None else range(part[0], len(plan), part[1])
    todo = [s for s in mine if not _shard_ok(path, manifest, s)]
    if todo:
        budget = token_budget or default_token_budget(lm.device)
        log.info("extracting %d/%d shards of %s into %s%s", len(todo), len(plan), lm.name, path,
                 "" if part is None else f" (part {part[0]}/{part[1]})")
        with (compiled_blocks(lm, max(layers)) if compile else nullcontext()), \
                _progress(progress, sum(lengths[i] for s in todo for i in plan[s])) as advance:
            for s in todo:
                t0 = time.perf_counter()
                tensors = _extract_shard(lm, prompts, plan[s], layers, parsed, store_tokens, budget, advance)
                tensors["prompt_key"] = keys[plan[s]]
                with atomic_path(path / shard_name(s)) as tmp:
                    save_file(tensors, str(tmp))
                manifest["shards"][s] = {
                    "file": shard_name(s), "sha256": sha256_file(path / shard_name(s)),
                    "n_examples": len(plan[s]), "seconds": round(time.perf_counter() - t0, 3),
                }
                if part is None:
                    write_json(path / MANIFEST, manifest)
                else:  # the manifest is shared by every part: each shard's record goes beside it
                    write_json(path / record_name(s), manifest["shards"][s] | {"plan": manifest["plan"]})
    if part is not None:
        _adopt_records(path, manifest)
        missing = [s for s in range(len(manifest["shards"])) if not _shard_ok(path, manifest, s)]
        if missing:
            # the entry's key lets a user see that parts run with another --dtype, layer or --compile
            # fill another entry (each waiting for the rest of its own)
            log.info("part %d/%d done; %d of %d shards of entry %s are still to come from other parts (the last "
                     "part to finish writes the manifest)", part[0], part[1], len(missing), len(plan), path.name)
            return None
    manifest["complete"] = True
    write_json(path / MANIFEST, manifest)
    return ActivationSet(path)


def extract_on_all_ranks(lm: LoadedModel, texts: Sequence[str], layers: int | Sequence[int],
                         **kwargs: Any) -> ActivationSet:
    """`extract` inside a torch.distributed process group: each rank extracts its share of the shards,
    all wait for the last, and every rank gets the complete entry. In one process, `extract`."""
    from assay import distributed

    part = distributed.my_part()
    if part is None:
        return extract(lm, texts, layers, **kwargs)
    progress = kwargs.pop("progress", True) and distributed.is_main()
    extract(lm, texts, layers, part=part, progress=progress, **kwargs)
    distributed.barrier()
    return extract(lm, texts, layers, progress=False, **kwargs)  # complete now: read from the cache


def _adopt_records(path: Path, manifest: dict[str, Any]) -> None:
    """Take into `manifest` the records parts wrote beside the shards it does not list yet."""
    for s, info in enumerate(manifest["shards"]):
        if info is None and (found := part_record(path, s, manifest["plan"])) is not None:
            manifest["shards"][s] = found


def _existing_manifest(path: Path, spec: dict[str, Any], n_examples: int, lm: LoadedModel) -> dict[str, Any] | None:
    """The entry's manifest if it was made for this extraction (same spec, and counts that fit it:
    a hand-edited count would index past the data or leave rows unfilled), else None."""
    if not (path / MANIFEST).exists():
        return None
    manifest = read_manifest(path)
    if (manifest is not None and manifest["spec"] == spec and manifest["n_examples"] == n_examples
            and manifest["d_model"] == lm.d_model):
        return manifest
    log.warning("cache entry %s has an unreadable or foreign manifest; starting it again", path.name)
    return None


def _own_plan(lengths: list[int], borrowed: set[int], shard_tokens: int) -> list[list[int]]:
    """Shards of the examples no other entry holds, longest first."""
    return shard_plan([i for i in length_order(lengths) if i not in borrowed], lengths, shard_tokens)


def _resumable_plan(path: Path, manifest: dict[str, Any], lengths: list[int],
                    shard_tokens: int) -> list[list[int]] | None:
    """The shard plan an unfinished entry resumes under: its own shards come first in the manifest,
    the borrowed ones after. None when it must start again: another shard size, or a donor shard
    that is gone or changed."""
    shards = manifest["shards"]
    n_own = sum(1 for info in shards if info is None or "entry" not in info)
    if any(info is None or "entry" not in info for info in shards[n_own:]):
        return None
    covered = borrowed_examples(path, shards[n_own:])
    if covered is None or any(not 0 <= i < len(lengths) for i in covered):
        return None
    plan = _own_plan(lengths, covered, shard_tokens)
    return plan if manifest["plan"] == sha256_json(plan) and len(plan) == n_own else None


def _start_manifest(path: Path, spec: dict[str, Any], plan: list[list[int]], borrowed: list[dict[str, Any]],
                    prompts: list[FormattedPrompt], lm: LoadedModel, shard_tokens: int) -> dict[str, Any]:
    manifest = {
        "spec": spec, "plan": sha256_json(plan), "n_examples": len(prompts), "d_model": lm.d_model,
        "n_truncated": sum(p.truncated for p in prompts), "complete": False,
        "shards": [None] * len(plan) + borrowed, "provenance": provenance(),
        "shard_tokens": shard_tokens,  # parts of one extraction must agree on it (`_check_parts_agree`)
    }
    write_json(path / MANIFEST, manifest)
    used = {info["view"] for info in borrowed}
    for stale in path.glob(view_name(0).replace("00000", "*")):
        if stale.name not in used:
            stale.unlink(missing_ok=True)
    # An abandoned plan's shards beyond this plan's count, and parts' records made under another plan,
    # would lie in the entry for good (shards within the count are extracted again and overwritten).
    for stale in path.glob("shard-*.safetensors*"):
        m = re.fullmatch(r"shard-(\d+)\.safetensors(\.json)?", stale.name)
        if m and (int(m[1]) >= len(plan) or (m[2] and part_record(path, int(m[1]), manifest["plan"]) is None)):
            stale.unlink(missing_ok=True)
    return manifest


def _check_parts_agree(path: Path, manifest: dict[str, Any], shard_tokens: int) -> None:
    """A part must not re-plan an entry other parts are filling under another shard size: that
    would drop their finished shards, and parts running at once would each wait for shards
    the other's plan never makes."""
    planned = manifest.get("shard_tokens")
    # (a hand-edited, meaningless value is not a size to send the user back to: that entry re-plans)
    if not manifest.get("complete") and type(planned) is int and planned >= 1 and planned != shard_tokens:
        raise ConfigMismatchError(
            f"{path} is being extracted in parts with --shard-tokens {planned}, and this part was given "
            f"{shard_tokens}: every part of one extraction must use the same value. Rerun this part with "
            f"--shard-tokens {planned}, or remove the entry (assay activations rm {path.name}) to start "
            "every part again with another size")


def _shard_ok(path: Path, manifest: dict[str, Any], s: int) -> bool:
    info = manifest["shards"][s]
    if info is None:
        return False
    if "entry" in info:
        if borrowed_ok(path, info):
            return True
        log.warning("shard %s borrowed from cache entry %s is gone or changed: its prompts are extracted again",
                    info["file"], info["entry"])
    elif verify_shard(path / info["file"], info["sha256"]):
        return True
    else:
        log.warning("shard %s of %s failed its checksum: extracting it again", info["file"], path.name)
    manifest["complete"] = False
    return False


def _extract_shard(
    lm: LoadedModel, prompts: list[FormattedPrompt], members: list[int], layers: list[int],
    aggregations: list[Aggregation], store_tokens: bool, token_budget: int, advance: Callable[[int], None],
) -> dict[str, torch.Tensor]:
    position = {i: j for j, i in enumerate(members)}
    pooled = {(L, a.name): torch.empty(len(members), lm.d_model) for L in layers for a in aggregations}
    per_example: dict[int, list[torch.Tensor | None]] = {L: [None] * len(members) for L in layers}
    for batch in token_budget_batches(members, {i: len(prompts[i].input_ids) for i in members}, token_budget):
        ids, attn, roles, lens = pad_prompts([prompts[i] for i in batch], lm.tokenizer.pad_token_id, lm.device)
        acts = residual_stream(lm, ids, attn, layers)
        rows = [position[i] for i in batch]
        for L in layers:
            for name, value in pool_roles(acts[L], roles, aggregations).items():
                pooled[(L, name)][rows] = value.cpu()
            if store_tokens:
                h = acts[L].cpu()
                for j, r in enumerate(rows):
                    per_example[L][r] = h[j, : lens[j]][real_tokens(roles[j, : lens[j]].cpu())]
        advance(int(lens.sum()))
    tensors: dict[str, torch.Tensor] = {"example_index": torch.tensor(members, dtype=torch.long)}
    for (L, name), value in pooled.items():
        tensors[f"pooled.L{L}.{name}"] = value.contiguous()
    if store_tokens:
        keep = [real_tokens(torch.tensor(prompts[i].roles)) for i in members]
        tensors["token_roles"] = torch.cat([torch.tensor(prompts[i].roles)[k] for i, k in zip(members, keep)]).to(torch.uint8)
        tensors["token_ids"] = torch.cat([torch.tensor(prompts[i].input_ids)[k] for i, k in zip(members, keep)]).to(torch.int32)
        counts = torch.tensor([int(k.sum()) for k in keep])
        tensors["token_offsets"] = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
        for L in layers:
            tensors[f"tokens.L{L}"] = torch.cat(per_example[L]).contiguous()
    return tensors


def pad_prompts(
    prompts: list[FormattedPrompt], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right padding: real tokens keep the positions they have alone, so no position-id fix-up."""
    longest = max(len(p.input_ids) for p in prompts)
    ids = torch.full((len(prompts), longest), pad_id, dtype=torch.long)
    roles = torch.full((len(prompts), longest), -1, dtype=torch.long)
    for j, p in enumerate(prompts):
        ids[j, : len(p.input_ids)] = torch.tensor(p.input_ids)
        roles[j, : len(p.roles)] = torch.tensor(p.roles)
    lens = torch.tensor([len(p.input_ids) for p in prompts])
    attn = (roles >= 0).long()
    return ids.to(device), attn.to(device), roles.to(device), lens.to(device)


@contextmanager
def _progress(enabled: bool, total: int) -> Iterator[Callable[[int], None]]:
    """A rich progress bar over tokens; yields the function that advances it."""
    if not enabled:
        yield lambda n: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("extracting"), BarColumn(), MofNCompleteColumn(), TextColumn("tokens"),
                  TimeRemainingColumn()) as bar:
        task = bar.add_task("extract", total=total)
        yield lambda n: bar.advance(task, n)
