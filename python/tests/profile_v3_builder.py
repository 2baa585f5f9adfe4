"""Format-3 profiles for the Python tests, written from the specification (docs/profile-format.md,
docs/kv-dumps.md and the issue-20 format-3 fields), independently of kvtc.profile: the manifest,
the tensor file, the canonical id text and the RoPE are this module's own, so a test that reads
what it writes checks kvtc's reader and codec against a second implementation of the spec.

A profile is fitted on the caches it is given: one plan per layer and kind, PCA by SVD (float64)
of the features (keys un-rotated with the independent RoPE of kvtc_testutil), static ranges from
the coefficients' min/max with a margin, groups as asked.
"""

from __future__ import annotations

import copy
import hashlib
import json
import pathlib
import struct
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from kvtc_testutil import layout, raw_tensor_file, unrotate_ref

BITS = {"int2": 2, "int4": 4, "int8": 8, "fp8": 8}


def f64_hex(v: float) -> str:
    return struct.pack(">d", float(v)).hex()


def spec_rope_lines(rope: List[Dict[str, Any]]) -> List[str]:
    """§2.1's model.rope lines for a group list: format 1's lines when one group covers every layer
    with RoPE, attention factor 1 and no scaling (all this builder writes in that form), else the blocks."""
    g0 = rope[0]
    if len(rope) == 1 and not g0.get("none") and float(g0.get("attention_factor", 1)) == 1 and g0.get("scaling") is None:
        return [
            f"model.rope.theta {f64_hex(g0['theta'])}",
            f"model.rope.rotary_dim {g0['rotary_dim']}",
            f"model.rope.layout {g0['layout']}",
        ]
    out = [f"model.rope.groups {len(rope)}"]
    for j, g in enumerate(rope):
        out.append(f"model.rope.{j}.layers {','.join(map(str, g['layers']))}")
        if g.get("none"):
            out.append(f"model.rope.{j}.none")
            continue
        assert g.get("scaling") is None, "this builder writes unscaled RoPE only"
        out += [
            f"model.rope.{j}.theta {f64_hex(g['theta'])}",
            f"model.rope.{j}.rotary_dim {g['rotary_dim']}",
            f"model.rope.{j}.layout {g['layout']}",
            f"model.rope.{j}.attention_factor {f64_hex(g.get('attention_factor', 1.0))}",
        ]
    return out


def spec_id_text(m: Dict[str, Any]) -> str:
    """The canonical text of §2.1 with format 3's lines after model.kv_dtype, each only when present."""
    md, st = m["model"], m["settings"]
    lines = ["kvtc-profile-id 1", f"tensors.sha256 {m['tensors']['sha256']}"]
    lines += [f"model.layers {md['layers']}", f"model.kv_heads {md['kv_heads']}", f"model.head_dim {md['head_dim']}"]
    lines.append(f"model.kv_dtype {md['kv_dtype']}")
    if "value_head_dim" in md:
        lines.append(f"model.value_head_dim {md['value_head_dim']}")
    if "cache" in md:
        lines.append(f"model.cache {md['cache']}")
    if "model_layers" in md:
        lines.append(f"model.model_layers {md['model_layers']}")
    if "cache_layers" in md:
        lines.append(f"model.cache_layers {','.join(map(str, md['cache_layers']))}")
    if "shard" in m:
        s = m["shard"]
        lines.append(f"shard {s['tp_rank']} {s['tp_size']} {s['pp_rank']} {s['pp_size']}")
        lines.append(f"shard.kv_heads {','.join(map(str, s['kv_heads']))}")
    lines += spec_rope_lines(md["rope"])
    lines += [f"settings.sink {st['sink']}", f"settings.window {st['window']}", f"settings.entropy {st['entropy']}"]
    lines.append(f"plans {len(m['plans'])}")
    for i, p in enumerate(m["plans"]):
        lines += [f"plan {i} index {p['index']}", f"plan {i} kind {p['kind']}", f"plan {i} layers {','.join(map(str, p['layers']))}"]
        lines += [f"plan {i} {k} {p[k]}" for k in ("dim", "rank", "budget_bits", "bits_per_token")]
        lines.append(f"plan {i} groups {len(p['groups'])}")
        lines += [f"plan {i} group {g} {x['start']} {x['end']} {x['type']} {x['mode']}" for g, x in enumerate(p["groups"])]
        lines += [f"plan {i} tensor {role} {p['tensors'][role]}" for role in ("mean", "basis", "variances", "lo", "hi")]
    return "".join(line + "\n" for line in lines)


def spec_id(m: Dict[str, Any]) -> str:
    return hashlib.sha256(spec_id_text(m).encode("utf-8")).hexdigest()[:16]


def rotate_ref(x: np.ndarray, desc: Optional[Dict[str, Any]], start: int) -> np.ndarray:
    """Keys x [H, n, D] at positions start.. rotated with an unscaled RoPE `desc` (§4.1: (a, b) →
    (a cos − b sin, b cos + a sin)); None or none: unchanged."""
    if desc is None or desc.get("none"):
        return x
    R = int(desc["rotary_dim"])
    inv = 1.0 / float(desc["theta"]) ** (np.arange(0, R, 2, dtype=np.float64) / R)
    ang = (start + np.arange(x.shape[1], dtype=np.float64))[:, None] * inv[None, :]
    cos, sin = np.cos(ang), np.sin(ang)
    i = np.arange(R // 2)
    ia, ib = (i, i + R // 2) if desc["layout"] == "half" else (2 * i, 2 * i + 1)
    out = x.astype(np.float64).copy()
    a, b = out[..., ia].copy(), out[..., ib].copy()
    out[..., ia] = a * cos - b * sin
    out[..., ib] = b * cos + a * sin
    return out


def layer_desc(rope: List[Dict[str, Any]], l: int) -> Optional[Dict[str, Any]]:
    for g in rope:
        if l in g["layers"]:
            return None if g.get("none") else g
    raise AssertionError(f"layer {l} has no RoPE group")


def synthetic_cache(
    rng: np.random.Generator, L: int, H: int, D: int, Dv: int, T: int, rope: List[Dict[str, Any]], start: int = 0, rank: int = 3
) -> List[Tuple[np.ndarray, np.ndarray]]:
    """A cache with low-rank structure (what PCA is for): per layer, keys (rotated by the layer's
    RoPE at positions start..) and values from `rank` latent factors plus small noise; float32."""
    out = []
    for l in range(L):
        pair = []
        for kind, width in (("key", D), ("value", Dv)):
            z = rng.standard_normal((T, rank))
            A = rng.standard_normal((rank, H * width)) * (1.0 + l)
            x = (z @ A + 0.05 * rng.standard_normal((T, H * width)) + rng.standard_normal(H * width)).reshape(T, H, width)
            x = x.transpose(1, 0, 2)  # [H, T, width]
            if kind == "key":
                x = rotate_ref(x, layer_desc(rope, l), start)
            pair.append(x.astype(np.float32))
        out.append(tuple(pair))
    return out


def _features(caches, l: int, kind: str, rope, s: int, w: int, starts: Sequence[int]) -> np.ndarray:
    rows = []
    for cache, start in zip(caches, starts):
        a = np.asarray(cache[l][0 if kind == "key" else 1], dtype=np.float64)
        T = a.shape[1]
        a = a[:, s : T - w]
        if kind == "key":
            a = unrotate_ref(a, layer_desc(rope, l), start + s, start + T)
        rows.append(a.transpose(1, 0, 2).reshape(a.shape[1], -1))
    return np.concatenate(rows)


def build(
    d: pathlib.Path,
    caches: Sequence[Sequence[Tuple[np.ndarray, np.ndarray]]],
    *,
    heads: int,
    kv_heads: int,
    head_dim: int,
    value_head_dim: Optional[int] = None,
    rope: List[Dict[str, Any]],
    starts: Optional[Sequence[int]] = None,
    sink: int = 2,
    window: int = 3,
    groups: Optional[Dict[str, List[Tuple[float, str, str]]]] = None,
    rank_fraction: float = 1.0,
    model_extra: Optional[Dict[str, Any]] = None,
    shard: Optional[Dict[str, Any]] = None,
    family: str = "deepseek_v3",
    kv_dump: bool = True,
    format_version: int = 3,
    kv_dtype: str = "float32",
) -> Dict[str, Any]:
    """Fits and writes a profile to d (kvtc-profile.json + kvtc-profile.safetensors); returns the
    manifest. groups[kind]: (fraction of the rank where the group ends, type, mode) in order.
    model_extra: format-3 model fields (value_head_dim is passed on its own)."""
    d.mkdir(parents=True, exist_ok=True)
    starts = list(starts or [0] * len(caches))
    L = len(caches[0])
    Dv = value_head_dim if value_head_dim is not None else head_dim
    groups = groups or {"key": [(1.0, "int8", "static")], "value": [(1.0, "int8", "static")]}
    tensors: Dict[str, np.ndarray] = {}
    plans = []
    for kind in ("key", "value"):
        for l in range(L):
            i = len(plans)
            X = _features(caches, l, kind, rope, sink, window, starts)
            p = X.shape[1]
            assert p == kv_heads * (head_dim if kind == "key" else Dv)
            mu = X.mean(axis=0)
            _, sv, Vt = np.linalg.svd(X - mu, full_matrices=False)
            r = max(1, int(round(rank_fraction * min(p, Vt.shape[0]))))
            V = Vt[:r].T
            C = (X - mu) @ V
            lo, hi = C.min(axis=0), C.max(axis=0)
            pad = 0.01 * (hi - lo) + 1e-3
            gs, at = [], 0
            for frac, ty, mode in groups[kind]:
                end = r if frac >= 1 else max(at + 1, min(r - 1, int(round(frac * r))))
                if end > at:
                    gs.append({"start": at, "end": end, "type": ty, "mode": mode})
                    at = end
            bits = sum((g["end"] - g["start"]) * BITS[g["type"]] + (32 if g["mode"] == "dynamic" else 0) for g in gs)
            names = {role: f"plan.{i}.{role}" for role in ("mean", "basis", "variances", "lo", "hi")}
            tensors[names["mean"]] = mu.astype(np.float32)
            tensors[names["basis"]] = V.astype(np.float32)
            tensors[names["variances"]] = (sv[:r] ** 2 / max(1, X.shape[0] - 1)).astype(np.float32)
            tensors[names["lo"]] = (lo - pad).astype(np.float32)
            tensors[names["hi"]] = (hi + pad).astype(np.float32)
            plans.append(
                {
                    "index": i,
                    "kind": kind,
                    "layers": [l],
                    "dim": p,
                    "rank": r,
                    "budget_bits": bits + 64,
                    "bits_per_token": bits,
                    "groups": gs,
                    "tensors": names,
                }
            )
    header, data = layout(tensors)
    blob = raw_tensor_file(header, data)
    (d / "kvtc-profile.safetensors").write_bytes(blob)
    spec = hashlib.sha256(b"dump model").hexdigest()
    fingerprint = (
        {"id": hashlib.sha256(f"kv-dump:{spec}\n".encode()).hexdigest()[:16], "spec_sha256": spec, "source": "kv-dump"}
        if kv_dump
        else {"id": "0123456789abcdef", "spec_sha256": spec, "onnx_sha256": hashlib.sha256(b"graph").hexdigest()}
    )
    model: Dict[str, Any] = {
        "name": "synthetic",
        "architecture": "DeepseekV3ForCausalLM",
        "family": family,
        "fingerprint": fingerprint,
        "layers": L,
        "heads": heads,
        "kv_heads": kv_heads,
        "head_dim": head_dim,
        "kv_dtype": kv_dtype,
        "rope": rope,
        "max_positions": 4096,
    }
    if value_head_dim is not None:
        model["value_head_dim"] = value_head_dim
    model.update(model_extra or {})
    T = caches[0][0][0].shape[1]
    m: Dict[str, Any] = {
        "format": "kvtc-profile",
        "format_version": format_version,
        "producer": {"name": "profile_v3_builder", "version": "1"},
        "profile_id": "",
        "model": model,
        **({"shard": shard} if shard is not None else {}),
        "settings": {
            "ratio_target": 4,
            "sink": sink,
            "window": window,
            "grouping": "layer",
            "tokens": 100,
            "heldout": 100,
            "chunk": 64,
            "seed": 0,
            "granule": 1,
            "entropy": "deflate-rle",
        },
        "calibration": {
            "sources": [{"name": "synthetic", "sha256": hashlib.sha256(b"synthetic").hexdigest(), "bytes": 1}],
            "tokens_fit": 100,
            "tokens_heldout": 100,
            "sequences": len(caches),
        },
        "plans": plans,
        "measured": {
            "context_tokens": max(T, sink + window + 1),
            "ratio_compressed": 4.0,
            "ratio_blob": 3.0,
            "rel_error": {"key": [0.01] * L, "value": [0.01] * L, "key_mean": 0.01, "value_mean": 0.01},
        },
        "tensors": {"file": "kvtc-profile.safetensors", "sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob)},
    }
    m["profile_id"] = spec_id(m)
    write_manifest(d, m)
    return m


def write_manifest(d: pathlib.Path, m: Dict[str, Any], *, rederive_id: bool = False) -> None:
    if rederive_id:
        m["profile_id"] = spec_id(m)
    (d / "kvtc-profile.json").write_text(json.dumps(m, indent=2), "utf-8")


def edited(m: Dict[str, Any], path: Sequence[Any], value: Any) -> Dict[str, Any]:
    """A deep copy of m with m[path...] = value (value DELETE removes the key)."""
    out = copy.deepcopy(m)
    o = out
    for k in path[:-1]:
        o = o[k]
    if value is DELETE:
        del o[path[-1]]
    else:
        o[path[-1]] = value
    return out


DELETE = object()
