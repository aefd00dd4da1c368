"""Make transformers' one-off GGUF conversion fast without changing what it produces.

transformers reads a GGUF through gguf-py's `GGUFReader` and turns its metadata into Python values
with `_gguf_parse_value`. For the bundled Gemma 3 the metadata holds a 262k-token vocabulary. On a
2-core CPU:

- transformers opens the file three times (config, weights, tokenizer), and each opening parsed
  that vocabulary again: one shared reader took the conversion from 67 s to 35 s (an earlier
  session's measurement);
- with one reader, py-spy still put 21.2 s of a 68.6 s conversion (AVX2 machine) in building its
  fields, since every slice it takes is a slice of an `np.memmap`, whose `__getitem__` and
  `__array_finalize__` run Python code per slice;
- and 12.1 s in `_gguf_parse_value`, which decodes each string through `array("B", list(value))`,
  one memmap item per byte.

Inside `fast_gguf_reading()` every `GGUFReader(path)` of one file is one reader, its slices are
plain ndarray views of the same read-only mapping (no copy, nothing but the memmap subclass
dropped), and strings decode with `ndarray.tobytes().decode()`, which gives the same bytes: the
same conversion took 40.4 s (py-spy) and wrote byte-identical files. The patches are undone on
exit, and each one is skipped if the library it patches has changed shape, since each only saves
time.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any, Callable, Iterator

_STRING, _ARRAY = 8, 9  # GGUFValueType.STRING, GGUFValueType.ARRAY


def plain_reader_class(base: type) -> type:
    """A `GGUFReader` subclass whose slices are plain ndarray views of its memory map."""
    import numpy as np

    class PlainViewReader(base):  # type: ignore[misc, valid-type]
        def _get(self, offset: int, dtype: Any, count: int = 1, override_order: Any = None) -> Any:
            plain = self.__dict__.get("_plain")
            if plain is None:  # first call, in __init__, just after it maps the file to `self.data`
                plain = self.__dict__["_plain"] = self.data.view(np.ndarray)
            count = int(count)
            end = offset + int(np.dtype(dtype).itemsize) * count
            arr = plain[offset:end].view(dtype=dtype)[:count]
            return arr.view(arr.dtype.newbyteorder(self.byte_order if override_order is None else override_order))

    return PlainViewReader


def fast_parse_value(original: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    """`_gguf_parse_value` with strings (and arrays of strings) decoded in one call; every other
    type, and anything unexpected, goes to the original."""
    import numpy as np

    def parse(value: Any, data_type: Any) -> Any:
        types = data_type if isinstance(data_type, list) else [data_type]
        if (types == [_STRING] or types == [_ARRAY, _STRING]) and isinstance(value, np.ndarray) \
                and value.dtype == np.uint8 and value.ndim == 1:
            return value.tobytes().decode()
        return original(value, data_type)

    return parse


@contextmanager
def _patched(module: Any, name: str, make: Callable[[Any], Any]) -> Iterator[None]:
    original = getattr(module, name, None)
    if original is None:
        yield
        return
    setattr(module, name, make(original))
    try:
        yield
    finally:
        setattr(module, name, original)


@contextmanager
def fast_gguf_reading() -> Iterator[None]:
    """Within it, `gguf.GGUFReader(path)` returns one plain-view reader per (file, mode), and
    transformers' `_gguf_parse_value` decodes strings in one call. The patches are module-wide, so
    any other thread reading a GGUF meanwhile gets them too (harmless: same values); a background
    conversion runs in a process of its own (`convert_in_background`)."""
    import gguf
    import transformers.modeling_gguf_pytorch_utils as hf_gguf

    if not isinstance(gguf.GGUFReader, type):  # inside another fast_gguf_reading(): its readers serve
        yield
        return

    def one_reader(real: type) -> Callable[..., Any]:
        plain, readers = plain_reader_class(real), {}

        def reader(path: Any, mode: str = "r") -> Any:
            key = (os.path.realpath(path), mode)
            if key not in readers:
                readers[key] = plain(path, mode)
            return readers[key]

        return reader

    with _patched(gguf, "GGUFReader", one_reader), _patched(hf_gguf, "_gguf_parse_value", fast_parse_value):
        yield
