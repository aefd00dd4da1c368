"""Which part of the work this process does (a torchrun rank, or `--shard i/n` in an array job), and
the few collective operations SAE training needs.

Extraction needs no communication between processes (every part writes its own shards into the one
content-addressed cache entry), so it reads torchrun's environment rather than joining a process group.
SAE training joins one (`join()`): gradients, firing counts and batch statistics are summed
across ranks so that every rank holds the same SAE after every step. Every helper below is the
identity in a single process, so the trainer has one code path.
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from typing import Any, Iterator

import torch

from assay.errors import InputError


def launched_part() -> tuple[int, int] | None:
    """(rank, world size) under torchrun (or any launcher that sets RANK and WORLD_SIZE), else None."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return None
    return int(os.environ.get("RANK", "0")), world


def local_device() -> str | None:
    """This rank's GPU under torchrun (`cuda:LOCAL_RANK`), else None (the default device)."""
    if launched_part() is None or not torch.cuda.is_available():
        return None
    return f"cuda:{int(os.environ.get('LOCAL_RANK', '0')) % torch.cuda.device_count()}"


def parse_part(text: str) -> tuple[int, int]:
    """`i/n` (0-based i) as a tuple; anything else is an error that says what is wanted."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if m is None or not (int(m[2]) >= 1 and int(m[1]) < int(m[2])):
        raise InputError(f"--shard {text!r}: write it as i/n with 0 <= i < n (e.g. 0/4 for the first of 4 parts; "
                         "a Slurm array passes $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT)")
    return int(m[1]), int(m[2])


# --- the process group (SAE training) ----------------------------------------------------------

def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def rank() -> int:
    d = _dist()
    return d.get_rank() if d else 0


def world_size() -> int:
    d = _dist()
    return d.get_world_size() if d else 1


def is_main() -> bool:
    """True on the one process that writes files and prints (rank 0, or a lone process)."""
    return rank() == 0


def my_part() -> tuple[int, int] | None:
    """(rank, world size) inside a process group of more than one rank, else None."""
    return (rank(), world_size()) if world_size() > 1 else None


def join() -> bool:
    """Join torchrun's process group (NCCL with GPUs, gloo on CPUs), left again at exit. False when
    not launched by torchrun; a second call is a no-op. Collectives wait up to ASSAY_DIST_TIMEOUT
    minutes (default 180): a rank may legitimately wait hours for the slowest one's extraction, and
    a rank that dies is torchrun's to detect (it stops the others)."""
    import atexit
    from datetime import timedelta

    import torch.distributed as dist

    if launched_part() is None:
        return False
    if _dist() is not None:
        return True
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    minutes = float(os.environ.get("ASSAY_DIST_TIMEOUT", "180"))
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", timeout=timedelta(minutes=minutes))
    atexit.register(_leave)
    return True


def _leave() -> None:
    """At exit: wait for every rank, then tear the group down. A rank that left while another still
    worked (rank 0 writing results) made gloo abort the latter at its own teardown (SIGABRT)."""
    import torch.distributed as dist

    if dist.is_initialized():
        try:
            dist.barrier()
            _all_done_with_gloo()
        finally:
            dist.destroy_process_group()


def _all_done_with_gloo(store: Any = None, world: int | None = None, timeout_s: float = 60.0) -> bool:
    """Wait until every rank has returned from the last collective (True; False after `timeout_s`),
    counted on torchrun's store rather than through the group: a rank can leave gloo's final barrier
    while its last message is still in flight to another, and tearing its sockets down then aborted
    that rank (a CI run: `terminate called without an active exception` in rank 1, after rank 0 had
    written its results)."""
    import time

    if store is None:
        from torch.distributed.distributed_c10d import _get_default_store

        store, world = _get_default_store(), world_size()
    key = f"assay/left-{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"  # a restarted group counts afresh
    deadline = time.monotonic() + timeout_s  # a rank that died is torchrun's to report: never hang here
    try:
        store.add(key, 1)
        while store.add(key, 0) < world:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
    except Exception:  # noqa: BLE001  a store hosted by rank 0 (no torchrun agent) may be gone: leave anyway
        return False
    return True


@contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (building the caches it fills), then the other ranks (reading them)."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def barrier() -> None:
    d = _dist()
    if d:
        d.barrier()


def sum_(t: torch.Tensor) -> torch.Tensor:
    """Sum `t` over ranks, in place (and returned)."""
    d = _dist()
    if d:
        d.all_reduce(t)
    return t


def gather_ints(value: int) -> list[int]:
    """`value` from every rank, in rank order (on this rank's GPU under NCCL, which moves no CPU tensors)."""
    d = _dist()
    if not d:
        return [int(value)]
    device = torch.device("cuda", torch.cuda.current_device()) if d.get_backend() == "nccl" else torch.device("cpu")
    mine = torch.tensor([int(value)], dtype=torch.long, device=device)
    out = [torch.zeros_like(mine) for _ in range(d.get_world_size())]
    d.all_gather(out, mine)
    return [int(t) for t in out]


def broadcast_(tensors: list[torch.Tensor]) -> None:
    """Overwrite each tensor with rank 0's (in place)."""
    d = _dist()
    if d:
        for t in tensors:
            d.broadcast(t.data, src=0)


def batch_mean(local_mean: torch.Tensor, n: int) -> torch.Tensor:
    """The mean over the global batch of a per-token statistic, from this rank's mean over its `n`
    tokens (detached: a loss built on it takes its gradient through the local mean). In one
    process, `local_mean` itself."""
    d = _dist()
    if not d:
        return local_mean.detach()
    both = torch.cat([local_mean.detach().reshape(-1).double() * n,
                      torch.tensor([float(n)], dtype=torch.float64, device=local_mean.device)])
    d.all_reduce(both)
    return (both[:-1] / both[-1]).to(local_mean.dtype).reshape(local_mean.shape)
