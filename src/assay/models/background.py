"""A GGUF model's one-off conversion in a child process, so that a cold run overlaps it with its
other first work."""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from assay.models.bundled import _BUNDLED
from assay.models.dequantise import _dequantised_dir, verify_saved
from assay.models.fingerprints import file_digest

log = logging.getLogger(__name__)


def convert_in_background(name: str) -> "BackgroundConversion | None":
    """Start a GGUF model's one-off conversion (the bundled default's included) in a child process,
    so that a cold run overlaps it with its other first work, e.g. building a benchmark; None for a
    model that needs no conversion (not a GGUF, or already converted). `wait()` for it before
    `load`, which converts in the caller if the child did not and raises whatever that meets.

    A process, not a thread: transformers' loading is not thread-safe. A conversion thread beside
    the benchmark build (which loads MiniLM) failed in most cold runs, with an ImportError from
    `transformers` or weights left on the meta device, and the model was then converted again after
    the data; the conversion is also mostly Python, which a thread runs under the caller's GIL. On a
    2-core CPU, building the quick benchmark and converting the bundled model took 43-46 s this way
    and about 85 s one after the other."""
    return BackgroundConversion(name) if _needs_conversion(name) else None


def _needs_conversion(name: str) -> bool:
    """Whether `name` is a GGUF (the bundled default's included) without a dequantised copy in the
    cache yet: a warm run starts no child (its imports would cost a cached rerun seconds). Anything
    this cannot tell (a missing file or package) is left to `load`, which says what is wrong."""
    import importlib

    if name in _BUNDLED:
        try:
            sha = importlib.import_module(_BUNDLED[name]).EXPECTED_SHA256
        except (ImportError, AttributeError):
            return False
    elif (path := Path(name).expanduser()).suffix == ".gguf" and path.is_file():
        sha = file_digest(path)
    else:
        return False
    return bool(verify_saved(_dequantised_dir(sha)))  # a copy never written has no checksums either


@contextmanager
def converted_meanwhile(name: str | None) -> Iterator[Callable[[], object]]:
    """Run the block while model `name` converts in a child process (`convert_in_background`; a
    no-op for a model that needs no conversion, or None). Yields `wait`, to call before loading the
    model. Leaving the block waits for the conversion; leaving it by an error (bad data, say) stops
    it instead, so the error is not held back for a minute and no conversion runs on behind it."""
    conversion = convert_in_background(name) if name is not None else None
    wait: Callable[[], object] = conversion.wait if conversion is not None else (lambda: None)
    try:
        yield wait
    except BaseException:
        if conversion is not None:
            conversion.cancel()
        raise
    wait()


class BackgroundConversion:
    """`_resolve(name)` (which converts and caches the model) in a child process."""

    # `cancel` sends SIGTERM, raised in the child as KeyboardInterrupt so that its cleanup runs (SIGINT
    # would not do: a process started in the background, under nohup or `&`, inherits it ignored)
    _ON_SIGTERM = ("import signal\n"
                   "def _stop(*_):\n"
                   "    raise KeyboardInterrupt\n"
                   "signal.signal(signal.SIGTERM, _stop)\n")
    _CHILD = ("import sys\n"
              "from assay.runtime import tune_malloc\n"
              "tune_malloc()\n"
              "from assay.models.resolve import _resolve\n"
              "_resolve(sys.argv[1], None)\n")

    def __init__(self, name: str) -> None:
        import subprocess
        import sys
        import tempfile

        self.name = name
        self._stderr = tempfile.TemporaryFile()
        # the child imports the assay (and the libraries) this process imported, wherever they came from
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        self._process = subprocess.Popen([sys.executable, "-c", self._ON_SIGTERM + self._CHILD, name],
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._stderr,
                                         env=env)

    def wait(self) -> bool:
        """Wait for the conversion to end; False, with a warning quoting the child's error, if it failed."""
        if self._stderr.closed:
            return self._process.returncode == 0
        code = self._process.wait()
        if code != 0:
            self._stderr.seek(0)
            lines = [ln for ln in self._stderr.read().decode(errors="replace").splitlines() if ln.strip()]
            log.warning("converting %s in a background process failed (exit %s: %s); converting it here", self.name,
                        code, lines[-1] if lines else "no message")
        self._stderr.close()
        return code == 0

    def cancel(self) -> None:
        """Stop the conversion and wait for it: an interrupted child removes its partial copy."""
        if self._process.poll() is None:
            self._process.terminate()
        self._process.wait()
        self._stderr.close()
