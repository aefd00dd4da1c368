"""Errors a user can act on.

Anything raised as an `AssayError` (or one of the OS and decode errors in `USER_ERRORS`) reaches
the user as one line, `error: <message>`, and exit status 1; the traceback only with `assay -v`.
Messages name the problem and what to do about it.
"""

from __future__ import annotations

import errno
import json


class AssayError(Exception):
    """A problem with the user's input, files or environment; the message says what to do."""


class InputError(AssayError, ValueError):
    """A bad argument or input file, found before any expensive work starts."""


class ConfigMismatchError(AssayError, ValueError):
    """A saved file (checkpoint, run.json, cfg.json) disagrees with what it claims or is asked for."""


class ScoringError(AssayError, RuntimeError):
    """A monitor could not give a verdict it can stand behind (a score that is not a finite number):
    answered as an error, never as `flagged: false`."""


# Errors from the environment rather than from assay's code: shown as one line, not a traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (
    AssayError, FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError,
    FileExistsError, UnicodeDecodeError, json.JSONDecodeError, MemoryError, OSError,
)
# What to do about the disk and permission errors a long job meets (a full disk, a read-only cache).
_OS_HINTS = {
    errno.ENOSPC: "free some space there, or point ASSAY_CACHE at a disk with room, and run the command again",
    errno.EDQUOT: "your disk quota is used up: free some space, or point ASSAY_CACHE elsewhere",
    errno.EROFS: "that file system is read-only: point ASSAY_CACHE (or --out) at a writable folder",
    errno.EACCES: "you may not write there: point ASSAY_CACHE (or --out) at a folder you own",
}


def describe(err: BaseException) -> str:
    """One line for the user: the message, plus the file an OS or decode error is about."""
    if isinstance(err, AssayError):
        return str(err)
    if isinstance(err, json.JSONDecodeError):
        return f"invalid JSON ({err.msg} at line {err.lineno}, column {err.colno}); fix or delete the file"
    if isinstance(err, UnicodeDecodeError):
        return (f"file is not UTF-8 text (byte {err.object[err.start:err.start + 1]!r} at offset {err.start}); "
                "save it as UTF-8")
    if isinstance(err, OSError):
        where = f": {err.filename}" if err.filename else ""
        hint = _OS_HINTS.get(err.errno)
        return f"{err.strerror or type(err).__name__}{where}" + (f"; {hint}" if hint else "")
    if isinstance(err, MemoryError):
        return "out of memory; lower --batch-size or the number of tokens"
    return f"{type(err).__name__}: {err}"
