"""Errors a user can act on.

Anything raised as an `AssayError` (or one of the OS and decode errors in `USER_ERRORS`) reaches
the user as one line, `error: <message>`, and exit status 1; the traceback only with `assay -v`.
Messages name the problem and what to do about it.
"""

from __future__ import annotations

import json


class AssayError(Exception):
    """A problem with the user's input, files or environment; the message says what to do."""


class InputError(AssayError, ValueError):
    """A bad argument or input file, found before any expensive work starts."""


class ConfigMismatchError(AssayError, ValueError):
    """A saved file (checkpoint, run.json, cfg.json) disagrees with what it claims or is asked for."""


# Errors from the environment rather than from assay's code: shown as one line, not a traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (
    AssayError, FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError,
    FileExistsError, UnicodeDecodeError, json.JSONDecodeError, MemoryError,
)


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
        return f"{err.strerror or type(err).__name__}{where}"
    if isinstance(err, MemoryError):
        return "out of memory; lower --batch-size or the number of tokens"
    return f"{type(err).__name__}: {err}"
