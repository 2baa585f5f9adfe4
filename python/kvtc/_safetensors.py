"""safetensors reading and writing (NumPy), strict about every size before it is used.

The one safetensors parser of the Python runtime (kvfile.py and profile.py call ``parse``;
profiles with ``strict``). Tested by python/tests/test_safetensors.py, test_safetensors_strict.py and test_profile.py.

Format: u64 little-endian header length N, N bytes of UTF-8 JSON
``{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {str: str}}``, then the data
buffer (offsets are relative to its start). Written like kvtc does: names sorted, data
contiguous in that order, header padded with spaces to a multiple of 8, ``format: pt``.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Callable, Dict, Mapping, Optional, Tuple

import numpy as np

from ._errors import KvtcError

#: Largest JSON header accepted (kvtc's own limit).
MAX_HEADER_BYTES = 100 * 1024 * 1024

DTYPES = {
    "F64": ("<f8", 8),
    "F32": ("<f4", 4),
    "F16": ("<f2", 2),
    "BF16": ("<u2", 2),  # raw bits; kvtc files never hold BF16
    "I64": ("<i8", 8),
    "I32": ("<i4", 4),
    "I16": ("<i2", 2),
    "I8": ("i1", 1),
    "U64": ("<u8", 8),
    "U32": ("<u4", 4),
    "U16": ("<u2", 2),
    "U8": ("u1", 1),
    "BOOL": ("u1", 1),
}
_KIND_TO_DTYPE = {
    ("f", 8): "F64",
    ("f", 4): "F32",
    ("f", 2): "F16",
    ("i", 8): "I64",
    ("i", 4): "I32",
    ("i", 2): "I16",
    ("i", 1): "I8",
    ("u", 8): "U64",
    ("u", 4): "U32",
    ("u", 2): "U16",
    ("u", 1): "U8",
    ("b", 1): "BOOL",
}


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: Tuple[int, ...]
    begin: int  # absolute offset in the file buffer
    nbytes: int


def _bad(source: str, message: str, fix: Optional[str] = None) -> KvtcError:
    return KvtcError(
        "SAFETENSORS_INVALID",
        f"{source}: {message}",
        fix or "The file is truncated or is not a safetensors file: re-create it.",
        {"file": source},
    )


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class Strict:
    """What strict mode adds, for files whose writer kvtc specifies (profiles, docs/profile-format.md §3)."""

    #: The most header bytes the caller's tensors can need (checked before the header is parsed).
    max_header_bytes: int
    #: The only dtypes allowed.
    dtypes: Tuple[str, ...] = tuple(DTYPES)
    #: When given, exactly these tensors with these shapes (an extra, missing or reshaped one is refused).
    tensors: Optional[Mapping[str, Tuple[int, ...]]] = None


def parse(
    buf, source: str = "<buffer>", strict: Optional[Strict] = None, error: Optional[Callable[[str], Exception]] = None
) -> Tuple[Dict[str, TensorInfo], Dict[str, str]]:
    """The one safetensors parser in Python: every reader calls it, lenient or strict.

    Both modes check the header length against the file (and a bound), the header as UTF-8 JSON,
    each tensor's dtype, shape, offsets within the data buffer and byte size = element count ×
    dtype size. ``strict`` also requires a header length that is a multiple of 8, entries of
    exactly {dtype, shape, data_offsets}, ``__metadata__`` a map of strings, only
    ``strict.dtypes`` (and ``strict.tensors`` when given), and data contiguous from offset 0 to
    the end of the file (sorted by offset, no gap, overlap or trailing byte). The first problem
    raises ``error(message)`` (default: SAFETENSORS_INVALID naming ``source``).
    """
    fail = error or (lambda message: _bad(source, message))
    size = len(buf)
    if size < 8:
        raise fail(f"only {size} bytes, shorter than the 8-byte header length")
    max_header = strict.max_header_bytes if strict else MAX_HEADER_BYTES
    (n,) = struct.unpack_from("<Q", buf, 0)
    if n > size - 8 or n > max_header:
        raise fail(
            f"header length {n} does not fit (file {size} bytes, header at most {max_header})"
            if strict
            else f"header length {n} does not fit in a file of {size} bytes"
        )
    if strict and n % 8:
        raise fail(f"header length {n} is not a multiple of 8 (the header is padded with spaces to one)")
    try:
        header = json.loads(bytes(buf[8 : 8 + n]).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise fail(f"header is not valid UTF-8 JSON ({e})") from None
    if not isinstance(header, dict):
        raise fail("header is not a JSON object")
    base = 8 + n
    data_len = size - base
    allowed = strict.dtypes if strict else tuple(DTYPES)
    wanted = strict.tensors if strict else None
    tensors: Dict[str, TensorInfo] = {}
    metadata: Dict[str, str] = {}
    for name, e in header.items():
        if name == "__metadata__":
            is_map = isinstance(e, dict)
            if strict and not (is_map and all(isinstance(v, str) for v in e.values())):
                raise fail("__metadata__ is not an object of strings")
            if is_map:
                metadata = {str(k): str(v) for k, v in e.items()}
            continue
        if wanted is not None and name not in wanted:
            raise fail(f"tensor {name} is not used by any plan (an extra tensor)")
        # The messages are the ones each mode's readers have always given (kv files: lenient,
        # profiles: strict, the same words as the TypeScript reader's), so the tests pin them.
        if strict and (not isinstance(e, dict) or sorted(e) != ["data_offsets", "dtype", "shape"]):
            raise fail(f"tensor {name}: entry must be exactly {{dtype, shape, data_offsets}}")
        dtype = e.get("dtype") if isinstance(e, dict) else None
        if dtype not in allowed:
            raise fail(
                f"tensor {name} has dtype {json.dumps(dtype)}, expected {' or '.join(allowed)}"
                if strict
                else f'tensor "{name}" has unknown dtype {json.dumps(dtype)}'
            )
        shape, offs = e.get("shape"), e.get("data_offsets")
        if not _counts(shape) or (wanted is not None and tuple(shape) != tuple(wanted[name])):
            if wanted is not None:
                raise fail(f"tensor {name} has shape {json.dumps(shape)}, the plan declares {list(wanted[name])}")
            raise fail(f"tensor {name} has an invalid shape {json.dumps(shape)}" if strict else f'tensor "{name}" has an invalid shape')
        if not isinstance(offs, list) or len(offs) != 2 or not all(_is_int(o) for o in offs) or (strict and not _counts(offs)):
            raise fail(
                f"tensor {name} has data_offsets {json.dumps(offs)} outside the {data_len}-byte data buffer"
                if strict
                else f'tensor "{name}" has invalid data_offsets'
            )
        b, end = offs
        if not 0 <= b <= end <= data_len:
            raise fail(
                f"tensor {name} has data_offsets {json.dumps(offs)} outside the {data_len}-byte data buffer"
                if strict
                else f'tensor "{name}" data_offsets [{b}, {end}] fall outside the {data_len}-byte data buffer (truncated file?)'
            )
        count = 1
        for d in shape:  # Python ints do not overflow: a huge product simply cannot match
            count *= d
        need = count * DTYPES[dtype][1]
        if end - b != need:
            raise fail(
                f"tensor {name} has {end - b} bytes, but {dtype}{shape} needs {need}"
                if strict
                else f'tensor "{name}" has {end - b} bytes but shape {shape} of {dtype} needs {need}'
            )
        tensors[name] = TensorInfo(dtype, tuple(shape), base + b, end - b)
    if wanted is not None:
        for name in wanted:
            if name not in tensors:
                raise fail(f"tensor {name} is missing")
    if strict:
        at = 0
        for begin, end, name in sorted((t.begin - base, t.begin - base + t.nbytes, name) for name, t in tensors.items()):
            if begin != at:
                raise fail(
                    f"tensor {name} starts at data offset {begin}, but the previous tensor ends at {at} (the data must be contiguous)"
                )
            at = end
        if at != data_len:
            raise fail(f"{data_len - at} bytes after the last tensor's data (trailing bytes, or a wrong header length)")
    return tensors, metadata


def _counts(xs) -> bool:
    return isinstance(xs, list) and all(_is_int(x) and x >= 0 for x in xs)


def array(buf, t: TensorInfo) -> np.ndarray:
    """A read-only little-endian view of one tensor (no copy)."""
    dt, _ = DTYPES[t.dtype]
    count = t.nbytes // np.dtype(dt).itemsize
    return np.frombuffer(buf, dtype=dt, count=count, offset=t.begin).reshape(t.shape)


def serialize(tensors: Mapping[str, np.ndarray], metadata: Optional[Mapping[str, str]] = None) -> bytes:
    """Tensors sorted by name, contiguous, after a space-padded header with ``format: pt``."""
    header: Dict[str, object] = {"__metadata__": {"format": "pt", **{str(k): str(v) for k, v in (metadata or {}).items()}}}
    parts = []
    offset = 0
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        dtype = _KIND_TO_DTYPE.get((a.dtype.kind, a.dtype.itemsize))
        if dtype is None:
            raise KvtcError(
                "SAFETENSORS_INVALID",
                f'tensor "{name}" has dtype {a.dtype}, which safetensors cannot hold',
                "Cast it to float16 or float32.",
            )
        a = a.astype(a.dtype.newbyteorder("<"), copy=False)
        data = a.tobytes()
        header[name] = {"dtype": dtype, "shape": list(a.shape), "data_offsets": [offset, offset + len(data)]}
        parts.append(data)
        offset += len(data)
    hb = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    hb += b" " * ((8 - len(hb) % 8) % 8)
    return b"".join([struct.pack("<Q", len(hb)), hb, *parts])
