"""safetensors reading and writing (NumPy), strict about every size before it is used.

Format: u64 little-endian header length N, N bytes of UTF-8 JSON
``{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {str: str}}``, then the data
buffer (offsets are relative to its start). Written like kvtc does: names sorted, data
contiguous in that order, header padded with spaces to a multiple of 8, ``format: pt``.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Tuple

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
_KIND_TO_DTYPE = {("f", 8): "F64", ("f", 4): "F32", ("f", 2): "F16", ("i", 8): "I64", ("i", 4): "I32", ("i", 2): "I16",
                  ("i", 1): "I8", ("u", 8): "U64", ("u", 4): "U32", ("u", 2): "U16", ("u", 1): "U8", ("b", 1): "BOOL"}


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


def parse(buf, source: str = "<buffer>") -> Tuple[Dict[str, TensorInfo], Dict[str, str]]:
    """Parses the header of a safetensors buffer; checks every tensor's offsets against the buffer."""
    size = len(buf)
    if size < 8:
        raise _bad(source, f"only {size} bytes, shorter than the 8-byte header length")
    (n,) = struct.unpack_from("<Q", buf, 0)
    if n > MAX_HEADER_BYTES or 8 + n > size:
        raise _bad(source, f"header length {n} does not fit in a file of {size} bytes")
    try:
        header = json.loads(bytes(buf[8 : 8 + n]).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise _bad(source, f"header is not valid UTF-8 JSON ({e})") from None
    if not isinstance(header, dict):
        raise _bad(source, "header is not a JSON object")
    base = 8 + n
    data_len = size - base
    tensors: Dict[str, TensorInfo] = {}
    metadata: Dict[str, str] = {}
    for name, e in header.items():
        if name == "__metadata__":
            if isinstance(e, dict):
                metadata = {str(k): str(v) for k, v in e.items()}
            continue
        if not isinstance(e, dict) or e.get("dtype") not in DTYPES:
            raise _bad(source, f'tensor "{name}" has unknown dtype {json.dumps(e.get("dtype") if isinstance(e, dict) else None)}')
        shape = e.get("shape")
        if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
            raise _bad(source, f'tensor "{name}" has an invalid shape')
        offs = e.get("data_offsets")
        if not isinstance(offs, list) or len(offs) != 2 or not all(_is_int(o) for o in offs):
            raise _bad(source, f'tensor "{name}" has invalid data_offsets')
        b, end = offs
        if not (0 <= b <= end <= data_len):
            raise _bad(source, f'tensor "{name}" data_offsets [{b}, {end}] fall outside the {data_len}-byte data buffer (truncated file?)')
        count = 1
        for d in shape:
            count *= d
        need = count * DTYPES[e["dtype"]][1]
        if end - b != need:
            raise _bad(source, f'tensor "{name}" has {end - b} bytes but shape {shape} of {e["dtype"]} needs {need}')
        tensors[name] = TensorInfo(e["dtype"], tuple(shape), base + b, end - b)
    return tensors, metadata


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
            raise KvtcError("SAFETENSORS_INVALID", f'tensor "{name}" has dtype {a.dtype}, which safetensors cannot hold', "Cast it to float16 or float32.")
        a = a.astype(a.dtype.newbyteorder("<"), copy=False)
        data = a.tobytes()
        header[name] = {"dtype": dtype, "shape": list(a.shape), "data_offsets": [offset, offset + len(data)]}
        parts.append(data)
        offset += len(data)
    hb = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    hb += b" " * ((8 - len(hb) % 8) % 8)
    return b"".join([struct.pack("<Q", len(hb)), hb, *parts])

