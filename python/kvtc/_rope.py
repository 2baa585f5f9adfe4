"""RoPE as docs/profile-format.md §4 defines it: inverse frequencies (with linear / llama3
scaling), float64 angles, pairs (i, i + R/2) for "half" or (2i, 2i+1) for "interleaved"."""

from __future__ import annotations

import math
from typing import Tuple

import numpy as np


def inv_freq(rope) -> np.ndarray:
    """Inverse frequencies [R/2], float64, in the same operation order as kvtc's encoder."""
    R = rope.rotary_dim
    half = R // 2
    inv = np.array([1.0 / rope.theta ** ((2 * i) / R) for i in range(half)], dtype=np.float64)
    sc = rope.scaling
    if not sc:
        return inv
    if sc["type"] == "linear":
        return inv / float(sc["factor"])
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


def tables(inv: np.ndarray, start: int, n: int) -> Tuple[np.ndarray, np.ndarray]:
    """cos/sin [n, R/2] (float64) of positions start .. start+n-1 (angles in float64)."""
    pos = (start + np.arange(n, dtype=np.int64)).astype(np.float64)
    ang = pos[:, None] * inv[None, :]
    return np.cos(ang), np.sin(ang)


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
