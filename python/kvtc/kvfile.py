"""KV caches as safetensors, in kvtc's layout (the one `kvtc capture` / `kvtc decode` write):

    present.{i}.key: [1, kv_heads, tokens, head_dim], F16 or F32
    present.{i}.value: [1, kv_heads, tokens, value_head_dim] (value_head_dim = head_dim but for
                       MLA latents and other format-3 geometries), the keys' dtype
    __metadata__: format "pt", producer, tokens, start_position, layers, kv_heads, head_dim,
                  [value_head_dim,] dtype, ...

BF16 files (KV dumps of bf16 models) are read as float32, exactly. i counts the cache's layers from 0, or, with layer_ids (e.g. a profile's cache_layers), is the
model's layer index of each, as a KV dump names them (docs/kv-dumps.md §3).
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
    """A cache read from safetensors: per layer (K, V), K [kv_heads, tokens, head_dim] and V
    [kv_heads, tokens, value_head_dim], in the file's dtype."""

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

    @property
    def value_head_dim(self) -> int:
        return int(self.layers[0][1].shape[2])


def tensor_name(layer: int, kind: str) -> str:
    return f"present.{layer}.{kind}"


def _invalid(source: str, message: str, context: Optional[Dict[str, Any]] = None) -> KvtcError:
    return KvtcError(
        "KV_INVALID",
        f"{source}: {message}",
        "Re-create the file with `kvtc capture` (or `kvtc decode`).",
        {"file": source, **(context or {})},
    )


def _layer_ids(layer_ids: Optional[Sequence[int]]) -> Optional[List[int]]:
    if layer_ids is None:
        return None
    ids = [int(i) for i in layer_ids]
    if not ids or any(i < 0 for i in ids) or any(b <= a for a, b in zip(ids, ids[1:])):
        raise KvtcError(
            "USAGE",
            f"layer_ids {ids} must be non-negative and strictly increasing (a profile's cache_layers)",
            "Pass profile.cache_layers, or nothing for files whose layers count from 0.",
        )
    return ids


def _ids_for_cache_layers(tensors, cache_layers: Sequence[int], source: str) -> List[int]:
    """Which names hold a format-3 profile's layers: the model's layer numbers when the file has
    every one (a KV dump's files, a whole-model capture read by one pipeline stage), else the
    profile's own order 0..L-1 when the file holds exactly those (what kvtc decode writes)."""
    ids = [int(i) for i in cache_layers]
    if all(tensor_name(i, "key") in tensors for i in ids):
        return ids
    named = sorted(int(m.group(1)) for m in (re.fullmatch(r"present\.([0-9]{1,9})\.key", k) for k in tensors) if m)
    if named == list(range(len(ids))):
        return named
    raise _invalid(
        source,
        f"the file's layers are present.{{{','.join(map(str, named[:12]))}{',…' if len(named) > 12 else ''}}}; the profile's cache layers are "
        f"model layers {ids}: the file must name them so (as a KV dump does) or hold exactly {len(ids)} layers 0..{len(ids) - 1} in the profile's order",
    )


def parse_kv_safetensors(
    data,
    source: str = "<buffer>",
    *,
    layer_ids: Optional[Sequence[int]] = None,
    cache_layers: Optional[Sequence[int]] = None,
) -> KvFile:
    """A KV cache from safetensors bytes. layer_ids: the tensor index of each layer to read (e.g. a
    profile's cache_layers, for files named by model layer); default: every present.{i} from 0.
    cache_layers (a format-3 profile's): read either naming, the model's layer numbers when the
    file has all of them, else the profile's order (what kvtc decode writes)."""
    buf = memoryview(data)
    tensors, metadata = st.parse(buf, source)
    if cache_layers is not None and layer_ids is None:
        layer_ids = _ids_for_cache_layers(tensors, cache_layers, source)
    ids = _layer_ids(layer_ids)
    if ids is None:
        ids = []
        while tensor_name(len(ids), "key") in tensors:
            ids.append(len(ids))
        if not ids:
            named = sorted(int(m.group(1)) for m in (re.fullmatch(r"present\.([0-9]{1,9})\.key", k) for k in tensors) if m)
            hint = f" (it has present.{named[0]}.key: a file named by model layer; pass layer_ids)" if named else ""
            raise _invalid(source, f"no tensor named {tensor_name(0, 'key')}; expected present.{{i}}.key|value{hint}")
    L = len(ids)
    k0 = tensor_name(ids[0], "key")
    first = tensors.get(k0)
    if first is None:
        raise _invalid(source, f"missing {k0} (layer_ids names layer {ids[0]})")
    if len(first.shape) != 4 or first.shape[0] != 1:
        raise _invalid(source, f"{k0} has shape {list(first.shape)}; expected [1, kv_heads, tokens, head_dim]")
    if first.dtype not in ("F16", "F32", "BF16"):
        raise _invalid(source, f"{k0} is {first.dtype}; expected F16 or F32 (or BF16, read as float32)")
    v0 = tensors.get(tensor_name(ids[0], "value"))
    vshape = None
    if v0 is not None:
        if len(v0.shape) != 4 or tuple(v0.shape[:3]) != tuple(first.shape[:3]):
            raise _invalid(
                source,
                f"{tensor_name(ids[0], 'value')} has shape {list(v0.shape)}, expected {list(first.shape)} "
                "(values may differ from keys only in their last dim, value_head_dim)",
            )
        vshape = v0.shape
    layers = []
    for l in ids:
        pair = []
        for kind in ("key", "value"):
            name = tensor_name(l, kind)
            t = tensors.get(name)
            if t is None:
                raise _invalid(source, f"missing {name} (found {tensor_name(l, 'key')})" if kind == "value" else f"missing {name}")
            if t.dtype != first.dtype:
                raise _invalid(source, f"{name} is {t.dtype} but {k0} is {first.dtype}")
            want = first.shape if kind == "key" else vshape
            if t.shape != want:
                raise _invalid(source, f"{name} has shape {list(t.shape)}, expected {list(want)}")
            a = _as_float(st.array(buf, t)[0], t.dtype)
            bad = ~np.isfinite(a)
            if bad.any():
                h, tok, d = (int(i[0]) for i in np.nonzero(bad))
                raise _invalid(
                    source, f"{name} has a non-finite value ({a[h, tok, d]}) at head {h}, token {tok}, dim {d}", {"tensor": name}
                )
            pair.append(a)
        layers.append(tuple(pair))
    if layer_ids is None and tensor_name(L, "value") in tensors:
        raise _invalid(source, f"{tensor_name(L, 'value')} has no matching key")
    if layer_ids is None and "layers" in metadata and metadata["layers"] != str(L):
        raise _invalid(source, f"metadata says {metadata['layers']} layers but the file has {L}")
    sp = metadata.get("start_position", "0")
    if not re.fullmatch(r"[0-9]+", sp) or int(sp) > 0xFFFFFFFF:
        raise _invalid(source, f'metadata start_position "{sp}" is not a non-negative integer')
    # BF16 (a float32 with its low 16 bits dropped) reads exactly as float32, as kvtc reads it
    return KvFile(layers, int(sp), "float16" if first.dtype == "F16" else "float32", metadata)


def _as_float(a: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "BF16":
        return (a.astype(np.uint32) << 16).view(np.float32)
    return a.astype(np.float16 if dtype == "F16" else np.float32)


def read_kv_safetensors(path, *, layer_ids: Optional[Sequence[int]] = None, cache_layers: Optional[Sequence[int]] = None) -> KvFile:
    """Reads a KV cache safetensors file (kvtc capture / kvtc decode output; a KV dump's sequence
    file with layer_ids=profile.cache_layers)."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise KvtcError("SAFETENSORS_INVALID", f"cannot read {path}: {e.strerror or e}", "Check the path.", {"file": path}) from None
    return parse_kv_safetensors(data, path, layer_ids=layer_ids, cache_layers=cache_layers)


def serialize_kv_safetensors(
    layers_kv: Sequence[Tuple[Any, Any]],
    start_position: int = 0,
    *,
    dtype: Optional[str] = None,
    metadata: Optional[Mapping[str, str]] = None,
    producer: str = "kvtc-python",
    layer_ids: Optional[Sequence[int]] = None,
) -> bytes:
    """Per layer (K, V) → safetensors bytes in kvtc's layout: K [kv_heads, tokens, head_dim], V
    [kv_heads, tokens, value_head_dim].

    dtype: "float16" or "float32" (default: the arrays' own dtype). metadata: extra string
    entries (model, fingerprint, ...), written before the standard ones, as kvtc does.
    layer_ids: the tensor index of each layer (default 0, 1, …; a profile's cache_layers names them
    by model layer, as a KV dump does).
    """
    ids = _layer_ids(layer_ids)
    if ids is not None and len(ids) != len(layers_kv):
        raise KvtcError("USAGE", f"layer_ids names {len(ids)} layers but the cache has {len(layers_kv)}", "Pass one id per layer.")
    tensors: Dict[str, np.ndarray] = {}
    shape = None
    shapes: Dict[str, Tuple[int, ...]] = {}
    for l, (k, v) in enumerate(layers_kv):
        for kind, a in (("key", k), ("value", v)):
            a = np.asarray(a)
            if a.ndim == 4 and a.shape[0] == 1:
                a = a[0]
            ref = shapes.get(kind)
            if a.ndim != 3 or (ref is not None and a.shape != ref) or (shape is not None and a.shape[:2] != shape[:2]):
                raise KvtcError(
                    "KV_INVALID",
                    f"layer {l} {kind}s have shape {list(a.shape)}; expected [kv_heads, tokens, {'head_dim' if kind == 'key' else 'value_head_dim'}] like layer 0 {kind}s"
                    + (
                        f" ({list(ref)})"
                        if ref is not None
                        else f" and the same kv_heads and tokens as its keys ({list(shape[:2])})"
                        if shape
                        else ""
                    ),
                )
            shapes.setdefault(kind, a.shape)
            if shape is None:
                shape = a.shape
            dt = dtype or str(a.dtype)
            if dt not in ("float16", "float32"):
                raise KvtcError(
                    "KV_INVALID",
                    f"layer {l} {kind}s are {dt}; kvtc's layout holds float16 or float32",
                    'Pass dtype="float16" or "float32".',
                )
            dtype = dt
            tensors[tensor_name(ids[l] if ids is not None else l, kind)] = a.astype(np.float16 if dt == "float16" else np.float32)[None]
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
            **({"value_head_dim": str(shapes["value"][2])} if shapes["value"][2] != shape[2] else {}),
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
    layer_ids: Optional[Sequence[int]] = None,
) -> int:
    """Writes a KV cache safetensors file atomically (a temporary name, then a rename); returns its size."""
    data = serialize_kv_safetensors(layers_kv, start_position, dtype=dtype, metadata=metadata, layer_ids=layer_ids)
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
