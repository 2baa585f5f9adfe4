"""RoPE as docs/profile-format.md §4.1 defines it, per layer: inverse frequencies (linear, llama3,
yarn and longrope scaling), float64 angles, pairs (i, i + R/2) for "half" or (2i, 2i+1) for
"interleaved", cos/sin times the layer's attention factor (divided by it to un-rotate)."""

from __future__ import annotations

import math
from typing import Tuple

import numpy as np


def inv_freq(rope, seq_len=None) -> np.ndarray:
    """Inverse frequencies [R/2], float64, in the same operation order as kvtc's encoder.
    seq_len (start_position + tokens of the cache) chooses longrope's factor set."""
    R = rope.rotary_dim
    half = R // 2
    inv = np.array([1.0 / rope.theta ** ((2 * i) / R) for i in range(half)], dtype=np.float64)
    sc = rope.scaling
    if not sc:
        return inv
    if sc["type"] == "linear":
        return inv / float(sc["factor"])
    if sc["type"] == "yarn":
        factor = float(sc["factor"])
        orig = float(sc["original_max_position_embeddings"])

        def dim(rot):
            return (R * math.log(orig / (rot * 2 * math.pi))) / (2 * math.log(rope.theta))

        low, high = dim(float(sc["beta_fast"])), dim(float(sc["beta_slow"]))
        if sc["truncate"]:
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, R - 1)
        if low == high:
            high += 0.001
        out = inv.copy()
        for i in range(half):
            ramp = min(1.0, max(0.0, (i - low) / (high - low)))
            e = 1 - ramp
            out[i] = (inv[i] / factor) * (1 - e) + inv[i] * e
        return out
    if sc["type"] == "longrope":
        if seq_len is None:
            raise ValueError("longrope needs the cache length (start_position + tokens)")
        ext = sc["long_factor"] if seq_len > sc["original_max_position_embeddings"] else sc["short_factor"]
        return np.array([1.0 / (float(ext[i]) * rope.theta ** ((2 * i) / R)) for i in range(half)], dtype=np.float64)
    # llama3; kvtc uses transformers' defaults when a field is absent (1, 4, 8192)
    factor = float(sc["factor"])
    low = float(sc.get("low_freq_factor", 1.0))
    high = float(sc.get("high_freq_factor", 4.0))
    orig = float(sc.get("original_max_position_embeddings", 8192.0))
    low_wavelen = orig / low
    high_wavelen = orig / high
    out = inv.copy()
    for i in range(half):
        wavelen = (2 * math.pi) / inv[i]
        if wavelen < high_wavelen:
            continue
        if wavelen > low_wavelen:
            out[i] = inv[i] / factor
            continue
        smooth = (orig / wavelen - low) / (high - low)
        out[i] = (1 - smooth) * (inv[i] / factor) + smooth * inv[i]
    return out


def pairs(rope, head_dim: int) -> Tuple[np.ndarray, np.ndarray]:
    half = rope.rotary_dim // 2
    i = np.arange(half)
    if rope.layout == "half":
        return i, i + half
    return 2 * i, 2 * i + 1


def tables(inv: np.ndarray, start: int, n: int, scale: float = 1.0) -> Tuple[np.ndarray, np.ndarray]:
    """cos/sin [n, R/2] (float64) of positions start .. start+n-1 (angles in float64), times scale."""
    pos = (start + np.arange(n, dtype=np.int64)).astype(np.float64)
    ang = pos[:, None] * inv[None, :]
    if scale == 1.0:
        return np.cos(ang), np.sin(ang)
    return np.cos(ang) * scale, np.sin(ang) * scale


def layer_tables(ropes, head_dim: int, start: int, n: int, seq_len: int):
    """Per layer: None (no RoPE) or (apply cos32, apply sin32, undo cos32, undo sin32, ia, ib) for
    positions start .. start+n-1, float32 as kvtc feeds them (cos·f to re-rotate, cos/f to un-rotate,
    each rounded once from float64); layers sharing a RoPE share the arrays."""
    memo = {}
    out = []
    for r in ropes:
        if r is None:
            out.append(None)
            continue
        k = r.key()
        if k not in memo:
            inv = inv_freq(r, seq_len)
            f = float(r.attention_factor)
            ca, sa = tables(inv, start, n, f)
            cu, su = (ca, sa) if f == 1.0 else tables(inv, start, n, 1.0 / f)
            ia, ib = pairs(r, head_dim)
            memo[k] = (ca.astype(np.float32), sa.astype(np.float32), cu.astype(np.float32), su.astype(np.float32), ia, ib)
        out.append(memo[k])
    return out


def rotate64(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, ia: np.ndarray, ib: np.ndarray) -> np.ndarray:
    """Applies RoPE to x [..., n, head_dim] (float64), cos/sin [n, R/2]; returns a new array."""
    out = x.copy()
    a = x[..., ia]
    b = x[..., ib]
    out[..., ia] = a * cos - b * sin
    out[..., ib] = b * cos + a * sin
    return out


def rotate32(x: np.ndarray, cos32: np.ndarray, sin32: np.ndarray, ia: np.ndarray, ib: np.ndarray) -> np.ndarray:
    """Applies RoPE to float32 x [..., n, head_dim] in float32 arithmetic (as kvtc's decoder does)."""
    out = x.copy()
    a = x[..., ia]
    b = x[..., ib]
    out[..., ia] = a * cos32 - b * sin32
    out[..., ib] = b * cos32 + a * sin32
    return out


def unrotate32(x: np.ndarray, cos32: np.ndarray, sin32: np.ndarray, ia: np.ndarray, ib: np.ndarray) -> np.ndarray:
    """Undoes RoPE on float32 x [..., n, head_dim] in float32 arithmetic, cos/sin float32 [n, R/2].

    Each product is rounded to float32, then the float32 sum: the same bits as kvtc's encoder,
    which matters because the static int codes are computed from these values.
    """
    out = x.copy()
    a = x[..., ia]
    b = x[..., ib]
    out[..., ia] = a * cos32 + b * sin32
    out[..., ib] = b * cos32 - a * sin32
    return out
