"""Per-prompt reuse across cache entries: a prompt already extracted under the same model, dtype
and layers is read from the entry that holds it instead of being run through the model again.

A cache entry is keyed by its whole spec, dataset included, so re-labelling, re-splitting,
subsetting or extending a dataset makes a new entry. Every shard assay writes also stores each
example's `prompt_key` (a hash of its formatted token ids and roles, which covers the chat format
and any truncation). A new extraction looks its prompts up in the shards of compatible complete
entries (same extraction version, model fingerprint and dtype; at least its layers and
aggregations; per-token activations if it stores them) and borrows the shards that hold them.

A borrowed shard stays where it is. The borrowing entry writes a small view file beside its own
shards, `example_index [m]` over the donor shard's m rows: the borrower's example index of each
row, or -1 for a row it does not hold. Its manifest records the donor's entry, file and sha256,
and the view's sha256, so both are checked before use like any shard.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from assay.activations.store import MANIFEST, read_manifest, verify_shard
from assay.fileio import atomic_path, sha256_file
from assay.models.chat import FormattedPrompt

log = logging.getLogger(__name__)

KEY_BYTES = 16  # 128 bits of sha256: no collision among any number of prompts a cache will hold


def prompt_keys(prompts: Sequence[FormattedPrompt]) -> torch.Tensor:
    """`[n, 16]` uint8: each prompt's identity as the model sees it (token ids and their roles)."""
    out = np.empty((len(prompts), KEY_BYTES), dtype=np.uint8)
    for i, p in enumerate(prompts):
        h = hashlib.sha256(np.asarray(p.input_ids, dtype=np.int64).tobytes())
        h.update(np.asarray(p.roles, dtype=np.int8).tobytes())
        out[i] = np.frombuffer(h.digest()[:KEY_BYTES], dtype=np.uint8)
    return torch.from_numpy(out)


def view_name(j: int) -> str:
    return f"view-{j:05d}.safetensors"


def can_donate(donor: dict[str, Any], spec: dict[str, Any]) -> bool:
    """Whether an entry made under `donor` holds every number an extraction under `spec` stores."""
    return (donor.get("version") == spec["version"] and donor.get("compiled") == spec.get("compiled")
            and donor["model"] == spec["model"]
            and donor["dtype"] == spec["dtype"] and set(spec["layers"]) <= set(donor["layers"])
            and set(spec["features"]) <= set(donor["features"]) and (donor["store_tokens"] or not spec["store_tokens"]))


def borrow(root: Path, entry: Path, spec: dict[str, Any],
           keys: torch.Tensor) -> tuple[list[dict[str, Any]], set[int]]:
    """Find this extraction's prompts in other complete entries under `root`, write a view for each
    donor shard used, and return the shard records for the manifest and the examples they hold
    (none if nothing is found).

    A prompt that occurs more than once among `keys` is not borrowed (a view maps each donor row to
    one example): it is extracted like any new prompt."""
    wanted: dict[bytes, int] = {}
    repeated: set[bytes] = set()
    for i, k in enumerate(keys.numpy()):
        b = k.tobytes()
        if b in wanted:
            repeated.add(b)
        wanted[b] = i
    for b in repeated:
        del wanted[b]
    if not wanted or not root.is_dir():
        return [], set()
    # every candidate shard's matches: (donor, manifest record, [(row, example)])
    candidates: list[tuple[str, dict[str, Any], list[tuple[int, int]]]] = []
    for donor in sorted(p for p in root.iterdir() if p.is_dir() and p != entry and (p / MANIFEST).is_file()):
        m = read_manifest(donor)
        if m is None or not m.get("complete") or not can_donate(m["spec"], spec):
            continue
        for info in m["shards"]:
            if "entry" in info:  # itself borrowed: found at its owner
                continue
            rows = _shard_keys(donor / info["file"])
            if rows is None:
                continue
            hits = [(r, wanted[k.tobytes()]) for r, k in enumerate(rows.numpy()) if k.tobytes() in wanted]
            if hits:
                candidates.append((donor.name, info, hits))
    # the shards that cover most first: fewest files to open, and the choice is the same on every rank
    candidates.sort(key=lambda c: (-len(c[2]), c[0], c[1]["file"]))
    taken: set[int] = set()
    records: list[dict[str, Any]] = []
    for donor, info, hits in candidates:
        fresh = [(r, i) for r, i in hits if i not in taken]
        if not fresh or not verify_shard(root / donor / info["file"], info["sha256"]):
            continue
        n_rows = _n_rows(root / donor / info["file"])
        index = torch.full((n_rows,), -1, dtype=torch.long)
        for r, i in fresh:
            index[r] = i
        view = entry / view_name(len(records))
        with atomic_path(view) as tmp:
            save_file({"example_index": index}, str(tmp))
        records.append({"file": info["file"], "entry": donor, "sha256": info["sha256"], "n_examples": len(fresh),
                        "view": view.name, "view_sha256": sha256_file(view)})
        taken.update(i for _, i in fresh)
    if records:
        log.info("reusing %d cached prompts from %d shards of other entries", len(taken), len(records))
    return records, taken


def borrowed_examples(entry: Path, records: Sequence[dict[str, Any]]) -> set[int] | None:
    """The examples the borrowed `records` hold, or None if any donor shard or view is gone or
    changed (the entry then starts again, borrowing what is still there)."""
    covered: set[int] = set()
    for info in records:
        if not borrowed_ok(entry, info):
            return None
        with safe_open(str(entry / info["view"]), framework="pt") as f:
            index = f.get_tensor("example_index")
        covered.update(index[index >= 0].tolist())
    return covered


def borrowed_ok(entry: Path, info: dict[str, Any]) -> bool:
    return (verify_shard(entry.parent / info["entry"] / info["file"], info["sha256"])
            and verify_shard(entry / info["view"], info["view_sha256"]))


def dependents(key: str, root: Path) -> list[str]:
    """Entries under `root` that borrow shards from entry `key`."""
    out = []
    for d in sorted(root.iterdir()) if root.is_dir() else []:
        m = read_manifest(d) if d.name != key and (d / MANIFEST).is_file() else None
        if m is not None and any(s is not None and s.get("entry") == key for s in m["shards"]):
            out.append(d.name)
    return out


def _shard_keys(path: Path) -> torch.Tensor | None:
    """A shard's `prompt_key` rows, or None when it has none (written before keys were stored) or
    cannot be read (the donor is skipped; its checksum is checked only if it is chosen)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.get_tensor("prompt_key") if "prompt_key" in f.keys() else None
    except Exception as err:  # noqa: BLE001 - any unreadable file just donates nothing
        log.debug("skipping %s as a donor: %s", path, err)
        return None


def _n_rows(path: Path) -> int:
    with safe_open(str(path), framework="pt") as f:
        return f.get_slice("example_index").get_shape()[0]
