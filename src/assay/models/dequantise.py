"""A GGUF dequantised once to safetensors in the cache: converted, checked against the checksums
recorded when it was written, and written safely beside other processes converting it too."""

from __future__ import annotations

import logging
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

from assay.fileio import read_json, write_json
from assay.models.bundled import DEFAULT_MODEL
from assay.models.fingerprints import file_digest
from assay.models.gguf_reading import fast_gguf_reading
from assay.models.load_errors import ModelLoadError, _gist, _load_errors
from assay.runtime import cache_dir

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)


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
