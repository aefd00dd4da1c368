"""The on-disk activation cache: safetensors shards plus a JSON manifest, read memory-mapped.

An entry is a directory `cache_dir()/activations/<key>/` where the key hashes everything that
changes the numbers (see `extract.cache_spec`). Each shard holds a length-sorted run of examples:

- `example_index [m]`: which examples (in the caller's order) the shard holds
- `pooled.L{layer}.{feature} [m, d]` float32: pooled features
- `tokens.L{layer} [t, d]` (extraction dtype), `token_roles [t]`, `token_ids [t]`,
  `token_offsets [m + 1]`: per-token activations of every token but BOS, when stored
- `prompt_key [m, 16]` uint8: each prompt's identity, so other entries can reuse it

The manifest lists each finished shard with its sha256; a shard is checked before its first use in
a process, and one that fails is never read. An entry may also borrow shards of another entry (its
manifest records name that entry, and a view file maps the shard's rows onto this entry's
examples; see `assay.activations.reuse`).
"""

from __future__ import annotations

import json
import logging
import shutil
from functools import cached_property
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from safetensors import safe_open

from assay.errors import AssayError, InputError
from assay.fileio import read_json, sha256_file
from assay.activations.aggregation import token_mask
from assay.runtime import cache_dir

MANIFEST = "manifest.json"
log = logging.getLogger(__name__)


class CacheCorruptError(AssayError, RuntimeError):
    """A shard's bytes do not match the checksum recorded when it was written."""


def activations_root(root: str | Path | None = None) -> Path:
    return Path(root) if root is not None else cache_dir() / "activations"


def shard_name(i: int) -> str:
    return f"shard-{i:05d}.safetensors"


def record_name(i: int) -> str:
    """The record a part of a split extraction writes beside shard `i` once the shard is written
    (the manifest is written by the last part to finish)."""
    return shard_name(i) + ".json"


def part_record(entry: Path, i: int, plan: str) -> dict[str, Any] | None:
    """The record a part left for shard `i` of `entry` under `plan`, if there is one (a record is
    written only after its shard, so it names a finished shard or a corrupt one, which the checksum
    then catches; a record left by a run under another plan names other examples' shard)."""
    record = entry / record_name(i)
    if not record.is_file():
        return None
    try:
        found = read_json(record)
    except (OSError, ValueError):
        log.warning("unreadable shard record %s: that shard counts as not done", record)
        return None
    if (isinstance(found, dict) and found.get("file") == shard_name(i) and isinstance(found.get("sha256"), str)
            and found.get("plan") == plan):
        return found
    return None


_VERIFIED: set[tuple[str, float, int]] = set()


def verify_shard(path: Path, sha256: str) -> bool:
    """True if the file matches its recorded checksum (each file is hashed once per process)."""
    if not path.is_file():
        return False
    stat = path.stat()
    tag = (str(path), stat.st_mtime, stat.st_size)
    if tag in _VERIFIED:
        return True
    ok = sha256_file(path) == sha256
    if ok:
        _VERIFIED.add(tag)
    return ok


class ActivationSet:
    """One cache entry: pooled features and per-token activations of a list of texts."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        manifest_path = self.path / MANIFEST
        if not manifest_path.exists():
            raise FileNotFoundError(f"no activation cache entry at {self.path} (no {MANIFEST})")
        manifest = read_manifest(self.path)
        if manifest is None:
            raise CacheCorruptError(f"cache entry {self.path.name} has an unreadable manifest.json; run the same "
                                    "extraction again to rebuild it, or `assay activations rm` it")
        self.manifest: dict[str, Any] = manifest
        if not self.manifest.get("complete"):
            raise CacheCorruptError(
                f"cache entry {self.path.name} is incomplete (an extraction was interrupted); "
                "run the same extraction again to resume it"
            )

    # --- what it holds -------------------------------------------------------------------------
    @property
    def key(self) -> str:
        return self.path.name

    @property
    def spec(self) -> dict[str, Any]:
        return self.manifest["spec"]

    @property
    def n(self) -> int:
        return int(self.manifest["n_examples"])

    @property
    def d_model(self) -> int:
        return int(self.manifest["d_model"])

    @property
    def layers(self) -> list[int]:
        return list(self.spec["layers"])

    @property
    def aggregations(self) -> list[str]:
        return list(self.spec["features"])

    @property
    def has_tokens(self) -> bool:
        return bool(self.spec["store_tokens"])

    def __repr__(self) -> str:
        return f"ActivationSet({self.key}, n={self.n}, layers={self.layers}, model={self.spec['model']['model']})"

    # --- shards --------------------------------------------------------------------------------
    @property
    def _shards(self) -> list[dict[str, Any]]:
        return self.manifest["shards"]

    def _open(self, i: int):
        info = self._shards[i]
        borrowed = "entry" in info
        path = (self.path.parent / info["entry"] if borrowed else self.path) / info["file"]
        if not verify_shard(path, info["sha256"]) or (
                borrowed and not verify_shard(self.path / info["view"], info["view_sha256"])):
            raise CacheCorruptError(
                f"{path} is missing, truncated or corrupt (checksum mismatch); run the extraction "
                "again: it re-extracts the bad shard"
                if not borrowed else
                f"{path}, which entry {self.key} borrows from entry {info['entry']}, is gone or changed; run "
                "the same extraction again: it extracts those prompts anew"
            )
        return safe_open(str(path), framework="pt")

    def _rows(self, i: int, f: Any) -> torch.Tensor:
        """Shard i's example index of each of its rows (-1: a borrowed shard's row this entry lacks);
        `f` is the shard, open."""
        info = self._shards[i]
        if "entry" not in info:
            return f.get_tensor("example_index")
        with safe_open(str(self.path / info["view"]), framework="pt") as view:
            return view.get_tensor("example_index")

    @cached_property
    def _index(self) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """For every example, (shard, row); and each shard's token offsets."""
        where = torch.full((self.n, 2), -1, dtype=torch.long)
        offsets, roles = [], []
        for s in range(len(self._shards)):
            with self._open(s) as f:
                idx = self._rows(s, f)
                mine = idx >= 0
                where[idx[mine], 0] = s
                where[idx[mine], 1] = torch.arange(len(idx))[mine]
                if self.has_tokens:
                    offsets.append(f.get_tensor("token_offsets"))
                    roles.append(f.get_tensor("token_roles"))
        return where, offsets, roles

    def _check(self, layer: int, aggregation: str | None = None) -> None:
        if layer not in self.layers:
            raise KeyError(f"layer {layer} not in this cache entry (layers {self.layers})")
        if aggregation is not None and aggregation not in self.aggregations:
            raise KeyError(f"aggregation {aggregation!r} not in this cache entry ({', '.join(self.aggregations)})")

    # --- reads ---------------------------------------------------------------------------------
    def pooled(self, layer: int, aggregation: str) -> torch.Tensor:
        """Pooled activations `[n, d]` (float32) in the order the texts were given."""
        self._check(layer, aggregation)
        out = torch.empty(self.n, self.d_model, dtype=torch.float32)
        for s in range(len(self._shards)):
            with self._open(s) as f:
                idx = self._rows(s, f)
                mine = idx >= 0
                out[idx[mine]] = f.get_tensor(f"pooled.L{layer}.{aggregation}")[mine]
        return out

    def token_counts(self, mask: str = "all") -> torch.Tensor:
        """Tokens per example `[n]` under a per-token mask (`all` or `user`)."""
        where, offsets, roles = self._index
        out = torch.zeros(self.n, dtype=torch.long)
        for s in range(len(offsets)):
            kept = torch.cat([torch.zeros(1, dtype=torch.long), _role_filter(roles[s], mask).long().cumsum(0)])
            per_row = kept[offsets[s][1:]] - kept[offsets[s][:-1]]
            rows = (where[:, 0] == s).nonzero().flatten()
            out[rows] = per_row[where[rows, 1]]
        return out

    def example_tokens(self, layer: int, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-token activations `[t, d]` float32, roles `[t]` and token ids `[t]` of example i (BOS dropped)."""
        self._need_tokens(layer)
        where, offsets, _ = self._index
        s, row = where[i].tolist()
        a, b = offsets[s][row].item(), offsets[s][row + 1].item()
        with self._open(s) as f:
            return (f.get_slice(f"tokens.L{layer}")[a:b].float(), f.get_slice("token_roles")[a:b],
                    f.get_slice("token_ids")[a:b])

    def token_batch(
        self, layer: int, indices: Sequence[int], mask: str = "all"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded per-token activations `[b, T, d]` and their mask `[b, T]` (all or user tokens)."""
        rows = []
        for i in indices:
            x, roles, _ = self.example_tokens(layer, int(i))
            keep = _role_filter(roles, mask)
            rows.append(x[keep])
        longest = max(1, max(len(r) for r in rows))
        x = torch.zeros(len(rows), longest, self.d_model)
        m = torch.zeros(len(rows), longest, dtype=torch.bool)
        for j, r in enumerate(rows):
            x[j, : len(r)] = r
            m[j, : len(r)] = True
        return x, m

    def token_batch_roles(self, layer: int, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded per-token activations `[b, T, d]` of every stored token (BOS dropped) and
        their roles `[b, T]` (-1 on padding), so any role mask can be taken from one read."""
        rows = [self.example_tokens(layer, int(i))[:2] for i in indices]
        longest = max(1, max(len(x) for x, _ in rows))
        x = torch.zeros(len(rows), longest, self.d_model)
        roles = torch.full((len(rows), longest), -1, dtype=torch.long)
        for j, (xj, rj) in enumerate(rows):
            x[j, : len(xj)] = xj
            roles[j, : len(rj)] = rj.long()
        return x, roles

    def iter_tokens(
        self,
        layer: int,
        chunk_tokens: int = 8192,
        mask: str = "all",
        shuffle_seed: int | None = None,
        indices: Sequence[int] | None = None,
        part: tuple[int, int] | None = None,
    ) -> Iterator[torch.Tensor]:
        """Stream per-token activations `[m, d]` (float32), one memory-mapped slice at a time.

        Only one chunk is in memory at once, so entries far bigger than RAM stream fine. With
        `shuffle_seed`, shards and chunks come in a seeded random order (a trainer's shuffling
        buffer mixes further). `indices` restricts to some examples (e.g. a training split).
        `part=(i, n)` yields the i-th of n contiguous slices of every chunk (one DDP rank's share:
        only it is read), in the chunk's shuffled order; the n parts hold the whole stream's tokens.
        """
        if part is not None and not (part[1] >= 1 and 0 <= part[0] < part[1]):
            raise ValueError(f"part {part[0]}/{part[1]}: need 0 <= i < n")
        self._need_tokens(layer)
        where, offsets, roles = self._index
        keep_example = None
        if indices is not None:
            keep_example = torch.zeros(self.n, dtype=torch.bool)
            keep_example[torch.as_tensor(list(indices), dtype=torch.long)] = True
        gen = torch.Generator().manual_seed(shuffle_seed) if shuffle_seed is not None else None
        shard_order = torch.randperm(len(self._shards), generator=gen) if gen is not None else torch.arange(len(self._shards))
        for s in shard_order.tolist():
            keep = _role_filter(roles[s], mask)
            if keep_example is not None or "entry" in self._shards[s]:
                with self._open(s) as f:
                    idx = self._rows(s, f)
                ours = idx >= 0  # a borrowed shard also holds its donor's other examples
                if keep_example is not None:
                    ours &= keep_example[idx.clamp(min=0)]
                keep &= torch.repeat_interleave(ours, offsets[s].diff())
            total = len(keep)
            starts = list(range(0, total, chunk_tokens))
            if gen is not None:
                starts = [starts[j] for j in torch.randperm(len(starts), generator=gen).tolist()]
            with self._open(s) as f:
                sl = f.get_slice(f"tokens.L{layer}")
                for a in starts:
                    b = min(a + chunk_tokens, total)
                    k = keep[a:b]
                    if not k.any():
                        continue
                    order = torch.randperm(int(k.sum()), generator=gen) if gen is not None else None
                    if part is None:
                        chunk = sl[a:b][k].float()
                        yield chunk[order] if order is not None else chunk
                        continue
                    # this part's kept rows lo..hi-1, read as one contiguous slice; shuffled in the
                    # order the whole chunk's permutation puts them (the draw is the same in every part)
                    rows = k.nonzero().squeeze(1)
                    lo, hi = part[0] * len(rows) // part[1], (part[0] + 1) * len(rows) // part[1]
                    if lo == hi:
                        continue
                    first, last = int(rows[lo]), int(rows[hi - 1]) + 1
                    chunk = sl[a + first:a + last][k[first:last]].float()
                    if order is not None:
                        chunk = chunk[order[(order >= lo) & (order < hi)] - lo]
                    yield chunk

    def _need_tokens(self, layer: int) -> None:
        self._check(layer)
        if not self.has_tokens:
            raise ValueError(f"cache entry {self.key} holds pooled features only; extract with store_tokens=True")


def _role_filter(roles: torch.Tensor, mask: str) -> torch.Tensor:
    if mask not in ("all", "user"):
        raise ValueError(f"per-token mask must be 'all' or 'user', not {mask!r}")
    return token_mask(mask, roles)


def read_manifest(entry: Path) -> dict[str, Any] | None:
    """An entry's manifest, or None (with a warning naming the entry) if it is not one assay wrote:
    invalid JSON, not an object, missing or mistyped fields, or counts that do not add up. Such an
    entry is treated as foreign: listed as corrupt, rebuilt by the next extraction of the same key."""
    try:
        m = read_json(entry / MANIFEST)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        _warn_once(entry, f"unreadable manifest.json ({err})")
        return None
    problem = _manifest_problem(m)
    if problem:
        _warn_once(entry, f"manifest.json {problem}")
        return None
    return m


_WARNED: set[tuple[str, str]] = set()


def _warn_once(entry: Path, problem: str) -> None:
    """Warn about a foreign entry once per process: every extraction reads every manifest to find
    prompts it can reuse, and would otherwise repeat the same warning each time."""
    if (str(entry), problem) not in _WARNED:
        _WARNED.add((str(entry), problem))
        log.warning("activation cache entry %s: %s", entry.name, problem)


# Fields every reader of a manifest relies on, with their types (spec's under "spec").
_MANIFEST_FIELDS = {"plan": str, "n_examples": int, "d_model": int, "shards": list}
_SPEC_FIELDS = {"model": dict, "dtype": str, "layers": list, "features": list, "dataset": str, "store_tokens": bool}


def _manifest_problem(m: Any) -> str | None:
    """What makes `m` something other than a manifest assay wrote, or None."""
    if not isinstance(m, dict) or not isinstance(m.get("spec"), dict):
        return "is not a JSON object with a spec"
    for where, fields in ((m, _MANIFEST_FIELDS), (m["spec"], _SPEC_FIELDS)):
        for key, kind in fields.items():
            if not isinstance(where.get(key), kind):
                return f"lacks {key!r} (or it is not a {kind.__name__})"
    if not isinstance(m["spec"]["model"].get("model"), str) or not all(isinstance(x, int) for x in m["spec"]["layers"]):
        return "names no model or has non-integer layers"
    shards = m["shards"]
    # A shard's file must be a name inside the entry, or inside a sibling entry it borrows from: the
    # manifest must not point reads elsewhere.
    if not all(s is None or (isinstance(s, dict) and _plain(s.get("file")) and isinstance(s.get("sha256"), str)
                             and isinstance(s.get("n_examples"), int)
                             and ("entry" not in s or (_plain(s["entry"]) and _plain(s.get("view"))
                                                       and isinstance(s.get("view_sha256"), str))))
               for s in shards):
        return "has a malformed shard record"
    if m.get("complete") and (None in shards or sum(s["n_examples"] for s in shards) != m["n_examples"]):
        return f"says complete but its shards do not hold its {m['n_examples']} examples"
    return None


def _plain(name: Any) -> bool:
    """A file or folder name with no path in it (not "", ".", ".." or "a/b")."""
    return isinstance(name, str) and name not in ("", ".", "..") and Path(name).name == name and "\\" not in name


def list_entries(root: str | Path | None = None) -> list[dict[str, Any]]:
    """Summary rows of every cache entry, complete or not (a corrupt one as `corrupt: True`)."""
    rows = []
    base = activations_root(root)
    for d in sorted(base.glob("*")) if base.exists() else []:
        if not (d / MANIFEST).exists():
            continue
        size = sum(f.stat().st_size for f in d.iterdir() if f.is_file())
        m = read_manifest(d)
        if m is None:
            rows.append({"key": d.name, "model": "?", "layers": [], "dtype": "?", "n_examples": 0, "dataset": "?",
                         "complete": False, "corrupt": True, "bytes": size, "path": str(d)})
            continue
        complete = m.get("complete", False)
        # an unfinished entry filled by parts: its finished shards are in the manifest or beside it
        done = len(m["shards"]) if complete else sum(
            info is not None or part_record(d, s, m["plan"]) is not None for s, info in enumerate(m["shards"]))
        rows.append({
            "key": d.name, "model": m["spec"]["model"]["model"], "layers": m["spec"]["layers"],
            "dtype": m["spec"]["dtype"], "n_examples": m["n_examples"], "dataset": m["spec"]["dataset"][:12],
            "complete": complete, "corrupt": False, "bytes": size, "path": str(d),
            "shards": len(m["shards"]), "shards_done": done,
        })
    return rows


def remove_entry(key: str, root: str | Path | None = None) -> Path:
    """Delete the cache entry named `key` (as `assay activations list` shows it). Only ever an
    entry directly inside the cache root: a path, `..` or a symlink out of the root is refused."""
    base = activations_root(root)
    path = base / key
    # "", ".", "..", "a/b" and absolute paths all fail the last test: the entry must resolve to a
    # child of the root
    if Path(key).name != key or "\\" in key or path.is_symlink() or path.resolve().parent != base.resolve():
        raise InputError(f"{key!r} is not a cache entry key: pass a key from `assay activations list`, not a path")
    if not (path / MANIFEST).exists():
        raise InputError(f"no activation cache entry {key!r} under {activations_root(root)}; "
                         "`assay activations list` shows the keys")
    shutil.rmtree(path)
    return path
