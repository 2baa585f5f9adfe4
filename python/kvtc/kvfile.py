"""KV caches as safetensors, in kvtc's layout (the one `kvtc capture` / `kvtc decode` write):

    present.{i}.key, present.{i}.value: [1, kv_heads, tokens, head_dim], F16 or F32
    __metadata__: format "pt", producer, tokens, start_position, layers, kv_heads, head_dim, dtype, ...

Reading checks names, shapes, dtypes and that every value is finite.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from . import _safetensors as st
from ._errors import KvtcError


@dataclass
class KvFile:
    """A cache read from safetensors: per layer (K, V) [kv_heads, tokens, head_dim] in the file's dtype."""

    layers: List[Tuple[np.ndarray, np.ndarray]]
    start_position: int
    dtype: str  # float16 | float32
    metadata: Dict[str, str] = field(default_factory=dict)

    @property
    def tokens(self) -> int:
        return int(self.layers[0][0].shape[1])

    @property
    def kv_heads(self) -> int:
        return int(self.layers[0][0].shape[0])

    @property
    def head_dim(self) -> int:
        return int(self.layers[0][0].shape[2])


def tensor_name(layer: int, kind: str) -> str:
    return f"present.{layer}.{kind}"


def _invalid(source: str, message: str, context: Optional[Dict[str, Any]] = None) -> KvtcError:
    return KvtcError(
        "KV_INVALID",
        f"{source}: {message}",
        "Re-create the file with `kvtc capture` (or `kvtc decode`).",
        {"file": source, **(context or {})},
    )


def parse_kv_safetensors(data, source: str = "<buffer>") -> KvFile:
    """A KV cache from safetensors bytes."""
    buf = memoryview(data)
    tensors, metadata = st.parse(buf, source)
    L = 0
    while tensor_name(L, "key") in tensors:
        L += 1
    if L == 0:
        raise _invalid(source, f"no tensor named {tensor_name(0, 'key')}; expected present.{{i}}.key|value")
    first = tensors[tensor_name(0, "key")]
    if len(first.shape) != 4 or first.shape[0] != 1:
        raise _invalid(source, f"{tensor_name(0, 'key')} has shape {list(first.shape)}; expected [1, kv_heads, tokens, head_dim]")
    if first.dtype not in ("F16", "F32"):
        raise _invalid(source, f"{tensor_name(0, 'key')} is {first.dtype}; expected F16 or F32")
    layers = []
    for l in range(L):
        pair = []
        for kind in ("key", "value"):
            name = tensor_name(l, kind)
            t = tensors.get(name)
            if t is None:
                raise _invalid(source, f"missing {name} (found {tensor_name(l, 'key')})")
            if t.dtype != first.dtype:
                raise _invalid(source, f"{name} is {t.dtype} but {tensor_name(0, 'key')} is {first.dtype}")
            if t.shape != first.shape:
                raise _invalid(source, f"{name} has shape {list(t.shape)}, expected {list(first.shape)}")
            a = st.array(buf, t)[0].astype(np.float16 if t.dtype == "F16" else np.float32)
            bad = ~np.isfinite(a)
            if bad.any():
                h, tok, d = (int(i[0]) for i in np.nonzero(bad))
                raise _invalid(
                    source, f"{name} has a non-finite value ({a[h, tok, d]}) at head {h}, token {tok}, dim {d}", {"tensor": name}
                )
            pair.append(a)
        layers.append(tuple(pair))
    if tensor_name(L, "value") in tensors:
        raise _invalid(source, f"{tensor_name(L, 'value')} has no matching key")
    if "layers" in metadata and metadata["layers"] != str(L):
        raise _invalid(source, f"metadata says {metadata['layers']} layers but the file has {L}")
    sp = metadata.get("start_position", "0")
    if not re.fullmatch(r"[0-9]+", sp) or int(sp) > 0xFFFFFFFF:
        raise _invalid(source, f'metadata start_position "{sp}" is not a non-negative integer')
    return KvFile(layers, int(sp), "float16" if first.dtype == "F16" else "float32", metadata)


def read_kv_safetensors(path) -> KvFile:
    """Reads a KV cache safetensors file (kvtc capture / kvtc decode output)."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise KvtcError("SAFETENSORS_INVALID", f"cannot read {path}: {e.strerror or e}", "Check the path.", {"file": path}) from None
    return parse_kv_safetensors(data, path)


def serialize_kv_safetensors(
    layers_kv: Sequence[Tuple[Any, Any]],
    start_position: int = 0,
    *,
    dtype: Optional[str] = None,
    metadata: Optional[Mapping[str, str]] = None,
    producer: str = "kvtc-python",
) -> bytes:
    """Per layer (K, V) [kv_heads, tokens, head_dim] → safetensors bytes in kvtc's layout.

    dtype: "float16" or "float32" (default: the arrays' own dtype). metadata: extra string
    entries (model, fingerprint, ...), written before the standard ones, as kvtc does.
    """
    tensors: Dict[str, np.ndarray] = {}
    shape = None
    for l, (k, v) in enumerate(layers_kv):
        for kind, a in (("key", k), ("value", v)):
            a = np.asarray(a)
            if a.ndim == 4 and a.shape[0] == 1:
                a = a[0]
            if a.ndim != 3 or (shape is not None and a.shape != shape):
                raise KvtcError(
                    "KV_INVALID", f"layer {l} {kind}s have shape {list(a.shape)}; expected [kv_heads, tokens, head_dim] like layer 0 keys"
                )
            shape = a.shape
            dt = dtype or str(a.dtype)
            if dt not in ("float16", "float32"):
                raise KvtcError(
                    "KV_INVALID",
                    f"layer {l} {kind}s are {dt}; kvtc's layout holds float16 or float32",
                    'Pass dtype="float16" or "float32".',
                )
            dtype = dt
            tensors[tensor_name(l, kind)] = a.astype(np.float16 if dt == "float16" else np.float32)[None]
    if shape is None:
        raise KvtcError("KV_INVALID", "the cache has no layers")
    meta: Dict[str, str] = {str(k): str(v) for k, v in (metadata or {}).items()}
    meta.update(
        {
            "producer": producer,
            "tokens": str(shape[1]),
            "start_position": str(int(start_position)),
            "layers": str(len(layers_kv)),
            "kv_heads": str(shape[0]),
            "head_dim": str(shape[2]),
            "dtype": str(dtype),
        }
    )
    for k in ("model", "fingerprint"):  # kvtc writes these last
        if k in meta:
            meta[k] = meta.pop(k)
    return st.serialize(tensors, meta)


def write_kv_safetensors(
    path,
    layers_kv: Sequence[Tuple[Any, Any]],
    start_position: int = 0,
    *,
    dtype: Optional[str] = None,
    metadata: Optional[Mapping[str, str]] = None,
    force: bool = True,
) -> int:
    """Writes a KV cache safetensors file atomically (a temporary name, then a rename); returns its size."""
    data = serialize_kv_safetensors(layers_kv, start_position, dtype=dtype, metadata=metadata)
    write_atomic(os.fspath(path), data, force=force)
    return len(data)


def write_atomic(path: str, data: bytes, *, force: bool = True) -> None:
    if not force and os.path.exists(path):
        raise KvtcError(
            "OUTPUT_EXISTS", f"output {path} already exists", "Pass --force to replace it, or choose another --out.", {"out": path}
        )
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise KvtcError(
            "OUTPUT_UNWRITABLE",
            f"cannot write {path}: {e.strerror or e}",
            "Check that the directory exists and is writable.",
            {"out": path},
        ) from None
