"""Quantization primitives of docs/profile-format.md §5 and §7, vectorized with NumPy.

Every stored value decodes as ``c = offset + q * scale``: int types ``q = code``, fp8
``q = E4M3FN(code)``. The encoder side follows the spec's rounding rules exactly (JavaScript
``Math.round`` for int codes, round-to-nearest-even saturating for fp8, fp16 round-down/up for
dynamic offsets and scales), so that the codes match kvtc's Node encoder.
"""

from __future__ import annotations

import numpy as np

TYPE_BITS = {"int2": 2, "int4": 4, "int8": 8, "fp8": 8}
#: Largest code of an int type (2^b - 1); 0 for fp8.
INT_LEVELS = {"int2": 3, "int4": 15, "int8": 255, "fp8": 0}
FP8_MAX = 448.0
HALF_MAX = 65504.0


def _e4m3fn_table() -> np.ndarray:
    t = np.zeros(256, dtype=np.float64)
    for code in range(256):
        sign = -1.0 if code & 0x80 else 1.0
        e = (code >> 3) & 0xF
        m = code & 0x7
        if (code & 0x7F) == 0x7F:
            t[code] = np.nan
        elif e == 0:
            t[code] = sign * (m / 8.0) * 2.0**-6
        else:
            t[code] = sign * (1.0 + m / 8.0) * 2.0 ** (e - 7)
    return t


#: E4M3FN[code] as float64 (exact); NaN for 0x7F and 0xFF.
E4M3FN = _e4m3fn_table()
E4M3FN.flags.writeable = False


def is_fp8_nan(codes: np.ndarray) -> np.ndarray:
    return (codes & 0x7F) == 0x7F


def fp8_codes(u: np.ndarray) -> np.ndarray:
    """E4M3FN codes of float64 values: round to nearest, ties to even, saturating at ±448.

    Negative values (not -0.0) get the sign bit. Finite inputs only.
    """
    u = np.asarray(u, dtype=np.float64)
    neg = u < 0
    a = np.abs(u)
    codes = np.zeros(a.shape, dtype=np.int64)
    # subnormal range (a < 2^-6): round a·2^9 to the nearest integer, ties to even (exact in f64)
    sub = a < 2.0**-6
    t = a[sub] * 512.0
    f = np.floor(t)
    d = t - f
    fi = f.astype(np.int64)
    codes[sub] = np.where(d > 0.5, fi + 1, np.where(d < 0.5, fi, fi + (fi & 1)))
    # normal range: round the float64 mantissa to 3 bits on its bit pattern (no double rounding)
    nrm = ~sub & (a < FP8_MAX)
    bits = np.ascontiguousarray(a[nrm]).view(np.uint64)
    q = (bits >> np.uint64(49)).astype(np.int64)  # exponent (11 bits) and the top 3 mantissa bits
    rnd = ((bits >> np.uint64(48)) & np.uint64(1)).astype(bool)
    sticky = (bits & np.uint64((1 << 48) - 1)) != 0
    q = q + (rnd & (sticky | ((q & 1) == 1))).astype(np.int64)
    codes[nrm] = np.minimum(q - ((1023 - 7) << 3), 126)
    codes[a >= FP8_MAX] = 126
    codes = codes.astype(np.uint8)
    codes[neg] |= 0x80
    return codes


def js_round(u: np.ndarray) -> np.ndarray:
    """JavaScript Math.round: the nearest integer, halves toward +infinity (float64 in and out)."""
    f = np.floor(u)
    return f + ((u - f) >= 0.5)


# ------------------------------------------------------------------------------------------------
# fp16


def half_bits(x: np.ndarray) -> np.ndarray:
    """fp16 bit patterns of float64 values, rounded once to nearest even (as kvtc's floatToHalf)."""
    with np.errstate(over="ignore"):
        return np.asarray(x, dtype=np.float64).astype(np.float16).view(np.uint16)


def half_value(h: np.ndarray) -> np.ndarray:
    return np.asarray(h, dtype=np.uint16).view(np.float16).astype(np.float64)


def half_round_up(x: np.ndarray) -> np.ndarray:
    """The smallest fp16 value >= x, as bits."""
    h = half_bits(x).astype(np.int64)
    low = half_value(h.astype(np.uint16)) < x
    neg = (h & 0x8000) != 0
    h = np.where(low, np.where(neg, np.where(h == 0x8000, 1, h - 1), h + 1), h)
    return h.astype(np.uint16)


def half_round_down(x: np.ndarray) -> np.ndarray:
    """The largest fp16 value <= x, as bits."""
    h = half_bits(x).astype(np.int64)
    high = half_value(h.astype(np.uint16)) > x
    neg = (h & 0x8000) != 0
    h = np.where(high, np.where(neg, h + 1, np.where(h == 0, 0x8001, h - 1)), h)
    return h.astype(np.uint16)


def dynamic_halves(mn: np.ndarray, mx: np.ndarray, gtype: str):
    """Per-token fp16 (offset, scale) bits of a dynamic group spanning [mn, mx] (§5).

    int: offset = round-down(min), scale = round-up((max - offset) / (2^b - 1));
    fp8: offset = fp16((min + max) / 2), scale = round-up(max |c - offset| / 448).
    min/max are clamped to ±65504 first; a zero span stores scale 0.
    """
    mn = np.maximum(np.asarray(mn, dtype=np.float64), -HALF_MAX)
    mx = np.minimum(np.asarray(mx, dtype=np.float64), HALF_MAX)
    mx = np.maximum(mx, mn)
    if gtype == "fp8":
        off = half_bits((mn + mx) / 2)
        o = half_value(off)
        amax = np.maximum(mx - o, o - mn)
        with np.errstate(invalid="ignore"):
            sc = np.where(amax > 0, half_round_up(amax / FP8_MAX), 0).astype(np.uint16)
    else:
        off = half_round_down(mn)
        o = half_value(off)
        span = mx - o
        sc = np.where(span > 0, half_round_up(span / INT_LEVELS[gtype]), 0).astype(np.uint16)
    return off, sc


def encode_values(v: np.ndarray, offset: np.ndarray, scale: np.ndarray, gtype: str) -> np.ndarray:
    """Codes of float64 values v for (broadcast) float64 offset/scale; a zero scale stores code 0."""
    zero = scale == 0
    with np.errstate(divide="ignore", invalid="ignore"):
        u = (v - offset) / np.where(zero, 1.0, scale)
    levels = INT_LEVELS[gtype]
    if levels > 0:
        codes = np.clip(js_round(u), 0, levels).astype(np.uint8)
    else:
        codes = fp8_codes(u)
    return np.where(zero, np.uint8(0), codes).astype(np.uint8)


def static_offset_scale(lo: np.ndarray, hi: np.ndarray, gtype: str):
    """float64 offset and scale of static components from their float32 lo/hi (scale 0 when hi <= lo)."""
    lo = np.asarray(lo, dtype=np.float64)
    hi = np.asarray(hi, dtype=np.float64)
    if gtype == "fp8":
        off = (lo + hi) / 2
        sc = (hi - lo) / (2 * FP8_MAX)
    else:
        off = lo
        sc = (hi - lo) / INT_LEVELS[gtype]
    return off, np.where(sc > 0, sc, 0.0)


def dequantize(codes: np.ndarray, gtype: str) -> np.ndarray:
    """q of each code: the code itself for int types, its E4M3FN value for fp8 (float64)."""
    if gtype == "fp8":
        return E4M3FN[codes]
    return codes.astype(np.float64)


# ------------------------------------------------------------------------------------------------
# bit packing: code k of a byte occupies bits [k·bits, (k+1)·bits); the last byte zero-padded


def packed_length(count: int, bits: int) -> int:
    return (count * bits + 7) // 8


def pack(codes: np.ndarray, bits: int) -> bytes:
    codes = np.ascontiguousarray(codes, dtype=np.uint8).reshape(-1)
    if bits == 8:
        return codes.tobytes()
    per = 8 // bits
    pad = (-codes.size) % per
    if pad:
        codes = np.concatenate([codes, np.zeros(pad, dtype=np.uint8)])
    c = codes.reshape(-1, per)
    out = np.zeros(c.shape[0], dtype=np.uint8)
    for k in range(per):
        out |= (c[:, k] << np.uint8(k * bits)).astype(np.uint8)
    return out.tobytes()


def unpack(buf, offset: int, count: int, bits: int) -> np.ndarray:
    nbytes = packed_length(count, bits)
    raw = np.frombuffer(buf, dtype=np.uint8, count=nbytes, offset=offset)
    if bits == 8:
        return raw.copy()
    per = 8 // bits
    shifts = (np.arange(per, dtype=np.uint8) * bits).astype(np.uint8)
    codes = (raw[:, None] >> shifts[None, :]) & np.uint8((1 << bits) - 1)
    return codes.reshape(-1)[:count].astype(np.uint8)
