"""Which part of the work this process does: a torchrun rank, or `--shard i/n` in an array job.

Extraction needs no communication between processes (every part writes its own shards into the one
content-addressed cache entry), so it reads torchrun's environment rather than joining a process group.
"""

from __future__ import annotations

import os
import re

from assay.errors import InputError


def launched_part() -> tuple[int, int] | None:
    """(rank, world size) under torchrun (or any launcher that sets RANK and WORLD_SIZE), else None."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return None
    return int(os.environ.get("RANK", "0")), world


def local_device() -> str | None:
    """This rank's GPU under torchrun (`cuda:LOCAL_RANK`), else None (the default device)."""
    import torch

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
