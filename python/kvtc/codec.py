"""Decoding and encoding whole KV caches (docs/profile-format.md §4–§8).

decode: blob → per layer (K, V), K [kv_heads, tokens, head_dim] and V [kv_heads, tokens,
        value_head_dim] (value_head_dim = head_dim unless a format-3 profile says otherwise), in
        the cache's dtype.
encode: per layer (K, V) → blob, written the way kvtc's Node encoder writes it, so that the
        Node decoder reads it and, for the deflate-rle / deflate-huffman / stored coders, the
        bytes are normally identical (see python/README.md, "Bit-identical blobs").

The CPU path is NumPy (``device="cpu"``). ``device="cuda"`` / ``"cuda:N"`` moves the matrix work
to PyTorch on a GPU, ``"torch:cpu"`` (or ``torch.device("cpu")``) runs that same torch code on the
CPU; see kvtc._torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import _quant as q
from . import _rope
from ._errors import KvtcError
from .blob import (
    CODEC_STORED,
    KIND_PLAN,
    KIND_RAW,
    MAX_POSITIONS,
    MAX_TOKENS,
    BlobHeader,
    as_buffer,
    assemble,
    check_crc,
    check_positions,
    compress,
    inflate,
    parse_sections,
    read_blob_header,
)
from .profile import ENTROPY_CODERS, Plan, Profile

#: Default bound on what one decode may allocate for its output (K and V of every layer).
DEFAULT_MAX_OUTPUT_BYTES = 32 * 1024**3

Layers = List[Tuple[Any, Any]]


# ------------------------------------------------------------------------------------------------
# Blob → checked parts


@dataclass
class BlobParts:
    header: BlobHeader
    sink: int
    window: int
    n: int
    raw: bytes
    payloads: Dict[int, bytes]


def _parse(profile: Profile, blob, max_output_bytes: int, source: str) -> BlobParts:
    """Every header and table field checked against the file and the profile before anything is
    allocated or inflated (§6), in kvtc's order: header, CRC, profile id, shape, sink/window,
    output size, section table; then the sections are inflated, capped at their declared sizes."""
    buf = as_buffer(blob)
    h = read_blob_header(buf, source)
    check_crc(buf, source)
    if bytes.fromhex(h.profile_id) != profile.blob_id:
        raise KvtcError(
            "BLOB_MISMATCH",
            f"{source} was encoded with profile {h.profile_id}, not with this profile ({profile.blob_id.hex()})",
            "Decode with the profile the blob was encoded with (its id is in `kvtc inspect`).",
            {"blob": source, "blob_profile": h.profile_id, "profile": profile.profile_id},
        )
    check_positions(h.start_position, h.tokens, profile.max_positions, profile.max_positions_recorded, source)
    for field, got, want in (
        ("layers", h.layers, profile.layers),
        ("kv_heads", h.kv_heads, profile.kv_heads),
        ("head_dim", h.head_dim, profile.head_dim),
    ):
        if got != want:
            raise KvtcError(
                "BLOB_INVALID",
                f"{source}: header {field} is {got}, but the profile's model has {want}",
                "The blob is corrupt or was written for another model: re-encode it.",
                {"blob": source, "field": field, "value": got, "profile": want},
            )
    T = h.tokens
    s, w, n = profile.split(T)
    if (h.sink, h.window) != (s, w):
        raise KvtcError(
            "BLOB_INVALID",
            f"{source}: header says sink {h.sink} and window {h.window} for {T} tokens; the profile (sink {profile.sink}, window {profile.window}) gives {s} and {w}",
            "The blob is corrupt or was not encoded with this profile: re-encode it.",
            {"blob": source, "tokens": T, "sink": h.sink, "window": h.window},
        )
    L, H, D, Dv = profile.layers, profile.kv_heads, profile.head_dim, profile.dims("value")
    out_bytes = L * H * T * (D + Dv) * (2 if h.float16 else 4)
    if out_bytes > max_output_bytes:
        raise KvtcError(
            "BLOB_INVALID",
            f"{source}: decoding {T} tokens would allocate {out_bytes} bytes, more than max_output_bytes={max_output_bytes}",
            "Pass a larger max_output_bytes if the blob is trusted.",
            {"blob": source, "tokens": T, "output_bytes": out_bytes},
        )
    expected = [(KIND_RAW, 0, L * H * (s + w) * (D + Dv) * (4 if h.raw_float32 else 2))]
    if n > 0:
        expected += [(KIND_PLAN, p.index, p.payload_bytes(n)) for p in profile.plans if p.rank > 0]
    sections = parse_sections(buf, h, expected, source)
    raw = inflate(buf, sections[0], source, 0)
    payloads = {sec.plan: inflate(buf, sec, source, i) for i, sec in enumerate(sections) if i > 0}
    return BlobParts(h, s, w, n, raw, payloads)


def _bad(source: str, message: str) -> KvtcError:
    return KvtcError(
        "BLOB_INVALID", f"{source}: {message}", "The blob is corrupt or was not encoded with this profile: re-encode it.", {"blob": source}
    )


def raw_values(parts: BlobParts, L: int, H: int, D: int, source: str) -> np.ndarray:
    """The raw section as float32 [L, 2 (key, value), H, s + w, D] (keys and values of one width D;
    see raw_kv for profiles whose values are wider or narrower); every value must be finite."""
    keys, values = raw_kv(parts, L, H, D, D, source)
    return np.stack([keys, values], axis=1)


def raw_kv(parts: BlobParts, L: int, H: int, D: int, Dv: int, source: str) -> Tuple[np.ndarray, np.ndarray]:
    """The raw section as float32 keys [L, H, s + w, D] and values [L, H, s + w, Dv] (§6: for each
    layer its keys, then its values, each head's sink rows then window rows); every value finite."""
    s, w = parts.sink, parts.window
    if parts.header.raw_float32:
        v = np.frombuffer(parts.raw, dtype="<f4").astype(np.float32)
        bad = np.nonzero(~np.isfinite(v))[0]
    else:
        bits = np.frombuffer(parts.raw, dtype="<u2")
        bad = np.nonzero((bits & 0x7C00) == 0x7C00)[0]
        v = bits.view("<f2").astype(np.float32)
    per_k, per_v = H * (s + w) * D, H * (s + w) * Dv
    if bad.size:
        i = int(bad[0])
        layer, at = divmod(i, per_k + per_v)
        which, at = (0, at) if at < per_k else (1, at - per_k)
        row, dim = divmod(at, D if which == 0 else Dv)
        head, r = divmod(row, s + w)
        token = r if r < s else parts.header.tokens - w + (r - s)
        raise _bad(
            source,
            f"the raw section stores a non-finite {'key' if which == 0 else 'value'} for layer {layer}, head {head}, token {token}, dim {dim}; no encoder writes one",
        )
    per_layer = v.reshape(L, per_k + per_v)
    return per_layer[:, :per_k].reshape(L, H, s + w, D), per_layer[:, per_k:].reshape(L, H, s + w, Dv)


# ------------------------------------------------------------------------------------------------
# Payload ↔ codes ↔ coefficients (§5, §7)


@dataclass
class GroupCodes:
    """One group of a plan section: codes [width, n] (component-major, as stored) and, for a
    dynamic group, the per-token fp16 offset and scale bit patterns [n]."""

    start: int
    end: int
    type: str
    mode: str
    codes: np.ndarray
    offsets: Optional[np.ndarray] = None
    scales: Optional[np.ndarray] = None


def payload_codes(plan: Plan, n: int, payload: bytes, source: str = "<blob>") -> List[GroupCodes]:
    if len(payload) != plan.payload_bytes(n):
        raise _bad(source, f"plan {plan.index}: payload of {len(payload)} bytes, expected {plan.payload_bytes(n)}")
    out: List[GroupCodes] = []
    at = 0
    for g in plan.groups:
        count = n * g.width
        codes = q.unpack(payload, at, count, g.bits).reshape(g.width, n)
        if g.type == "fp8" and np.any(q.is_fp8_nan(codes)):
            j, t = (int(i[0]) for i in np.nonzero(q.is_fp8_nan(codes)))
            raise _bad(
                source,
                f"plan {plan.index} stores fp8 code 0x{int(codes[j, t]):02x} (NaN, never written) for component {g.start + j} of compressed token {t}",
            )
        at += q.packed_length(count, g.bits)
        out.append(GroupCodes(g.start, g.end, g.type, g.mode, codes))
    for gc in out:
        if gc.mode == "dynamic":
            gc.offsets = np.frombuffer(payload, dtype="<u2", count=n, offset=at).copy()
            gc.scales = np.frombuffer(payload, dtype="<u2", count=n, offset=at + 2 * n).copy()
            at += 4 * n
            for which, bits in (("offset", gc.offsets), ("scale", gc.scales)):
                bad = np.nonzero((bits & 0x7C00) == 0x7C00)[0]  # exponent all ones: ±inf or NaN
                if bad.size:
                    raise _bad(
                        source,
                        f"plan {plan.index}, dynamic group {gc.start}–{gc.end - 1}: the fp16 {which} of compressed token {int(bad[0])} "
                        f"is 0x{int(bits[bad[0]]):04x} (not finite); a dynamic {which} must be finite",
                    )
    return out


def coefficients(plan: Plan, n: int, groups: Sequence[GroupCodes]) -> np.ndarray:
    """ĉ [n, r] float32 (dropped components 0): offset + q·scale evaluated in float64, rounded once."""
    C = np.zeros((n, plan.rank), dtype=np.float32)
    for gc in groups:
        qv = q.dequantize(gc.codes, gc.type)  # [w, n] float64
        if gc.mode == "static":
            off, sc = q.static_offset_scale(plan.lo[gc.start : gc.end], plan.hi[gc.start : gc.end], gc.type)
            vals = off[:, None] + qv * sc[:, None]
        else:
            vals = q.half_value(gc.offsets)[None, :] + qv * q.half_value(gc.scales)[None, :]
        C[:, gc.start : gc.end] = vals.T.astype(np.float32)
    return C


@dataclass
class _Prepared:
    """A plan's encode matrices, as kvtc's encode graph holds them (float32)."""

    affine: np.ndarray  # stored components of static int groups, in order
    other: np.ndarray  # the rest (dynamic groups, static fp8)
    w_affine: np.ndarray  # float32 [p, kA]: basis column j · 1/scale_j
    bias: np.ndarray  # float32 [kA]: ½ − offset_j/scale_j
    levels: np.ndarray  # float32 [kA]
    v_other: np.ndarray  # float32 [p, kB]


def _affine(g) -> bool:
    return g.mode == "static" and g.type != "fp8"


def prepared(plan: Plan) -> _Prepared:
    got = plan._cache.get("encode")
    if got is not None:
        return got
    a: List[int] = []
    o: List[int] = []
    off: List[float] = []
    sc: List[float] = []
    lv: List[float] = []
    for g in plan.groups:
        for c in range(g.start, g.end):
            if not _affine(g):
                o.append(c)
                continue
            a.append(c)
            of, s = q.static_offset_scale(plan.lo[c : c + 1], plan.hi[c : c + 1], g.type)
            off.append(float(of[0]))
            sc.append(float(s[0]))
            lv.append(float(g.levels))
    scale = np.array(sc, dtype=np.float64)
    inv = np.where(scale > 0, 1.0 / np.where(scale > 0, scale, 1.0), 0.0)
    ai = np.array(a, dtype=np.int64)
    oi = np.array(o, dtype=np.int64)
    p = _Prepared(
        affine=ai,
        other=oi,
        w_affine=(plan.basis[:, ai].astype(np.float64) * inv[None, :]).astype(np.float32),
        bias=(0.5 - np.array(off, dtype=np.float64) * inv).astype(np.float32),
        levels=np.array(lv, dtype=np.float32),
        v_other=np.ascontiguousarray(plan.basis[:, oi]),
    )
    plan._cache["encode"] = p
    return p


def _seq_fma(rows64: np.ndarray, w64: np.ndarray) -> np.ndarray:
    """Σ_i rows[:, i]·w[i, :] accumulated in float32 one term at a time, each step one rounding
    (a fused multiply-add): products of float32 values are exact in float64 and the float64 sum
    rounded to float32 is the FMA result (double rounding cannot bite at 53 vs 24 bits but for
    ties of probability ~2^-29)."""
    acc = np.zeros((rows64.shape[0], w64.shape[1]), dtype=np.float64)
    tmp = np.empty_like(acc)
    for i in range(rows64.shape[1]):
        np.multiply(rows64[:, i : i + 1], w64[i : i + 1, :], out=tmp)
        acc += tmp
        acc[...] = acc.astype(np.float32)
    return acc.astype(np.float32)


def kvtc_sgemm(rows64: np.ndarray, w32: np.ndarray, bias32: Optional[np.ndarray] = None) -> np.ndarray:
    """rows [n, p] · w [p, k] (+ bias [k]) in float32 with the summation order of kvtc's CPU encode
    graph: ONNX Runtime's Gemm on x86 MLAS, which walks K = p in blocks (MLAS's K stride: 128, halved
    while half still covers K when N ≥ K, doubled while N is small), each block summed from zero
    with one FMA per term, then added to the output (bias, or the previous blocks) in float32.
    An emulation of that library's current kernels, used by ``encode(..., bit_exact=True)``; other
    builds (ARM, M = 1 kernels) may sum in another order."""
    n, p = rows64.shape
    stride_n, stride_k = 128, 128
    if n >= p:
        while stride_k // 2 >= p:
            stride_n, stride_k = stride_n * 2, stride_k // 2
    else:
        while stride_n > 16 and stride_n // 2 >= n:
            stride_n, stride_k = stride_n // 2, stride_k * 2
    w64 = w32.astype(np.float64)
    out: Optional[np.ndarray] = None if bias32 is None else np.broadcast_to(bias32[None, :], (n, w32.shape[1])).astype(np.float32)
    chunk = max(1, (1 << 21) // max(1, w32.shape[1]))  # tokens at a time: bounded scratch
    res = np.empty((n, w32.shape[1]), dtype=np.float32)
    for t0 in range(0, n, chunk):
        r = rows64[t0 : t0 + chunk]
        acc = None if out is None else out[t0 : t0 + chunk]
        for k0 in range(0, p, stride_k):
            block = _seq_fma(r[:, k0 : k0 + stride_k], w64[k0 : k0 + stride_k])
            acc = block if acc is None else (acc + block).astype(np.float32)
        res[t0 : t0 + chunk] = acc
    return res


def payload_from(
    plan: Plan, n: int, codes_affine: np.ndarray, coeffs_other: np.ndarray, source: str = "the KV cache", first_token: int = 0
) -> bytes:
    """Section payload from the static-int codes [n, kA] (uint8) and the other coefficients [n, kB]
    (float32), quantizing the latter here (dynamic groups and static fp8)."""
    parts: List[bytes] = []
    dyn: List[Tuple[np.ndarray, np.ndarray]] = []
    ca = 0
    cb = 0
    for g in plan.groups:
        w = g.width
        if _affine(g):
            codes = codes_affine[:, ca : ca + w]
            ca += w
        else:
            v = coeffs_other[:, cb : cb + w].astype(np.float64)
            cb += w
            if g.mode == "dynamic":
                mn, mx = v.min(axis=1), v.max(axis=1)
                out_of_range = np.nonzero((mn < -q.HALF_MAX) | (mx > q.HALF_MAX))[0]
                if out_of_range.size:
                    t = int(out_of_range[0])
                    val = float(mn[t] if mn[t] < -q.HALF_MAX else mx[t])
                    raise KvtcError(
                        "KV_OUT_OF_RANGE",
                        f"{source}: token {first_token + t} has a coefficient of {val} in plan {plan.index} ({plan.kind}s of layer{'s' if len(plan.layers) > 1 else ''} "
                        f"{', '.join(map(str, plan.layers))}), dynamic group {g.start}–{g.end - 1}; its per-token range is stored as fp16, which holds at most ±65504",
                        "The cache is far outside what the profile was calibrated on: recalibrate the profile on representative data (`kvtc calibrate`), or check the cache.",
                        {"source": source, "plan": plan.index, "token": first_token + t, "value": val, "components": [g.start, g.end]},
                    )
                offh, sch = q.dynamic_halves(mn, mx, g.type)
                codes = q.encode_values(v, q.half_value(offh)[:, None], q.half_value(sch)[:, None], g.type)
                dyn.append((offh, sch))
            else:
                off, sc = q.static_offset_scale(plan.lo[g.start : g.end], plan.hi[g.start : g.end], g.type)
                codes = q.encode_values(v, off[None, :], sc[None, :], g.type)
        parts.append(q.pack(np.ascontiguousarray(codes.T), g.bits))
    for offh, sch in dyn:
        parts.append(offh.astype("<u2").tobytes())
        parts.append(sch.astype("<u2").tobytes())
    out = b"".join(parts)
    assert len(out) == plan.payload_bytes(n)
    return out


# ------------------------------------------------------------------------------------------------
# Caches in


def _to_numpy(x: Any, what: str) -> np.ndarray:
    """NumPy arrays as they are; PyTorch tensors (duck-typed, no torch import) copied to host."""
    if hasattr(x, "detach") and hasattr(x, "cpu") and hasattr(x, "numpy"):
        t = x.detach()
        if str(getattr(t, "dtype", "")) == "torch.bfloat16":
            t = t.float()  # the blob records float16 or float32 only: bfloat16 caches travel as float32
        return t.cpu().numpy()
    if isinstance(x, np.ndarray):
        return x
    raise KvtcError(
        "KV_INVALID",
        f"{what} is a {type(x).__name__}; expected a NumPy array (or a torch tensor)",
        "Pass per layer (K, V) arrays of shape [kv_heads, tokens, head_dim].",
    )


def check_cache(profile: Profile, layers_kv: Sequence[Tuple[Any, Any]], convert=_to_numpy):
    """Validates per layer (K, V) → (list of (K, V) in `convert`'s array type, float16 flag, tokens).

    Each K is [kv_heads, tokens, head_dim] and each V [kv_heads, tokens, value_head_dim] (or with a
    leading batch dim of 1), float16 or float32 (all the same dtype), finite.
    """
    L, H = profile.layers, profile.kv_heads
    try:
        n_layers = len(layers_kv)
    except TypeError:
        raise KvtcError(
            "KV_INVALID", "layers_kv is not a sequence of (K, V) pairs", "Pass a list with one (K, V) pair per layer."
        ) from None
    if n_layers != L:
        raise KvtcError(
            "PROFILE_MISMATCH",
            f"the KV cache has {n_layers} layers, but the profile is for {L}",
            "Use the profile calibrated for the model that produced this cache.",
            {"layers": n_layers, "profile_layers": L},
        )
    out = []
    dtype = None
    tokens = None
    for l, pair in enumerate(layers_kv):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise KvtcError("KV_INVALID", f"layer {l} is not a (K, V) pair", "Pass a list with one (K, V) pair per layer.")
        conv = []
        for kind, x in zip(("key", "value"), pair):
            a = convert(x, f"layer {l} {kind}s")
            shape = tuple(a.shape)
            if len(shape) == 4 and shape[0] == 1:
                a = a[0]
                shape = shape[1:]
            D = profile.dims(kind)
            dname = "head_dim" if kind == "key" else "value_head_dim"
            if len(shape) != 3 or shape[0] != H or shape[2] != D:
                raise KvtcError(
                    "PROFILE_MISMATCH",
                    f"layer {l} {kind}s have shape {list(shape)}; the profile is for [kv_heads={H}, tokens, {dname}={D}]",
                    "Use the profile calibrated for the model (and rank) that produced this cache: keys [kv_heads, tokens, head_dim] and "
                    "values [kv_heads, tokens, value_head_dim] per layer.",
                    {"layer": l, "kind": kind, "shape": list(shape)},
                )
            dt = str(a.dtype).replace("torch.", "")
            if dt not in ("float16", "float32"):
                raise KvtcError(
                    "KV_INVALID",
                    f"layer {l} {kind}s are {dt}; a kvtc blob holds float16 or float32 caches",
                    "Cast the cache to float16 or float32 first.",
                    {"layer": l, "dtype": dt},
                )
            if dtype is None:
                dtype, tokens = dt, shape[1]
            if dt != dtype or shape[1] != tokens:
                raise KvtcError(
                    "KV_INVALID",
                    f"layer {l} {kind}s are {dt}[{', '.join(map(str, shape))}], layer 0 keys are {dtype} with {tokens} tokens",
                    "Every K and V must have the same dtype and token count.",
                )
            conv.append(a)
        out.append(tuple(conv))
    if tokens is None or tokens > MAX_TOKENS:
        raise KvtcError(
            "KV_INVALID",
            f"the cache has {tokens} tokens; a kvtc blob holds at most {MAX_TOKENS} (2^24)",
            f"Split the cache into pieces of at most {MAX_TOKENS} tokens (each with its own start position).",
            {"tokens": tokens},
        )
    return out, dtype == "float16", tokens


#: A compressed token whose feature norm exceeds ‖μ‖ + OUTLIER_FACTOR·√(Σ variances) of its plan is
#: refused (KV_OUT_OF_RANGE): its deviation from the mean is over 16× the calibration RMS.
OUTLIER_FACTOR = 16


def norm_bound(plan: Plan) -> float:
    v = float(np.sum(plan.variances.astype(np.float64)))
    if plan.rank == 0 or not v > 0:
        return math.inf  # a rank-0 plan keeps nothing (x̂ = μ); zero calibrated variance gives no scale
    return math.sqrt(float(np.sum(plan.mean.astype(np.float64) ** 2))) + OUTLIER_FACTOR * math.sqrt(v)


def _sumsq_numpy(a) -> np.ndarray:
    a = a.astype(np.float64)
    return np.einsum("htd,htd->t", a, a)


def _token_numpy(a, t: int) -> np.ndarray:
    return np.asarray(a[:, t, :])


def scan_cache(
    profile: Profile, layers, s: int, n: int, start: int, source: str = "the KV cache", sumsq=_sumsq_numpy, token=_token_numpy
) -> None:
    """The checks on a cache's values before encoding: every value finite (KV_INVALID), and every
    compressed token within its plans' calibrated range (OUTLIER_FACTOR; KV_OUT_OF_RANGE). The norm
    of a token's keys is RoPE-invariant, so the cache is read as stored. sumsq(a) → float64 NumPy
    [T] sums of squares of a [H, T, D]; token(a, t) → NumPy [H, D] (other array types: kvc._torch)."""
    for plan in profile.plans:
        which = 0 if plan.kind == "key" else 1
        s2 = None
        for l in plan.layers:
            r = profile.layer_ropes[l] if plan.kind == "key" and profile.layer_ropes else None
            if r is not None and r.attention_factor != 1.0:
                # the un-rotated key's norm: the rotated dims divided by the attention factor (§4.1)
                a = layers[l][which]
                part = sumsq(a[..., : r.rotary_dim]) / (r.attention_factor**2) + sumsq(a[..., r.rotary_dim :])
            else:
                part = sumsq(layers[l][which])
            s2 = part if s2 is None else s2 + part
        if s2 is None or s2.size == 0:
            continue
        bound = norm_bound(plan)
        with np.errstate(invalid="ignore", over="ignore"):
            bad = ~np.isfinite(s2)
            over = np.zeros_like(bad)
            over[s : s + n] = np.sqrt(s2[s : s + n]) > bound
        hits = np.nonzero(bad | over)[0]
        if not hits.size:
            continue
        t = int(hits[0])
        vals = np.stack([token(layers[l][which], t) for l in plan.layers]).astype(np.float32)  # [nl, H, D]
        if bad[t]:
            li, h, d = (int(i[0]) for i in np.nonzero(~np.isfinite(vals)))
            raise KvtcError(
                "KV_INVALID",
                f"{source}: the {plan.kind} of layer {plan.layers[li]}, head {h}, token {t} (position {start + t}), dim {d} is {vals[li, h, d]}; a KV cache holds finite values",
                "Check how the cache was produced (a NaN or ∞ in the model's KV output usually means an overflow in the model run).",
                {"source": source, "kind": plan.kind, "layer": plan.layers[li], "head": h, "token": t, "position": start + t, "dim": d},
            )
        li, h, d = np.unravel_index(int(np.argmax(np.abs(vals))), vals.shape)
        norm = float(math.sqrt(s2[t]))
        raise KvtcError(
            "KV_OUT_OF_RANGE",
            f"{source}: token {t} (position {start + t}) is far outside the range the profile was calibrated on: the norm of its {plan.kind}s in "
            f"layer{'s' if len(plan.layers) > 1 else ''} {', '.join(map(str, plan.layers))} (plan {plan.index}) is {norm:.4g}, above the profile's bound "
            f"{bound:.4g} (‖mean‖ + {OUTLIER_FACTOR}× the calibration RMS deviation); its largest value is {vals[li, h, d]} (layer {plan.layers[int(li)]}, head {int(h)}, dim {int(d)})",
            "Recalibrate the profile on data representative of this cache (`kvtc calibrate --data ...`), or check the cache: values this far from the calibration data usually mean an overflow or the wrong model.",
            {"source": source, "plan": plan.index, "kind": plan.kind, "token": t, "position": start + t, "norm": norm, "bound": bound},
        )


def _start_position(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= int(v) < MAX_POSITIONS:
        raise KvtcError(
            "KV_INVALID",
            f"start_position {v!r} is not an integer in [0, 2^32)",
            "Pass the absolute position of token 0 (0 for a cache from the start of a prompt).",
        )
    return int(v)


def _entropy(profile: Profile, entropy: Optional[str]) -> str:
    e = profile.entropy if entropy is None else entropy
    if e not in ENTROPY_CODERS:
        raise KvtcError("USAGE", f"entropy {e!r} is not one of {', '.join(ENTROPY_CODERS)}")
    return e


def raw_section(layers_np, s: int, w: int) -> Tuple[bytes, bool]:
    """For each layer, keys then values, for each head: the s sink rows then the w window rows, as
    fp16 — or, when a value fp16 cannot hold (|x| ≥ 65520 rounds to ∞) is among them, as float32
    (header flag bit 1, lossless). Returns (bytes, stored as float32). Values are finite (scan_cache);
    a float16 cache never holds such a value."""
    rows = []
    for k, v in layers_np:
        for a in (k, v):  # keys and values may differ in width (value_head_dim): flattened, in order
            T = a.shape[1]
            rows.append(np.concatenate([a[:, :s, :], a[:, T - w :, :]], axis=1).astype(np.float32).reshape(-1))
    vals = np.concatenate(rows)
    with np.errstate(over="ignore"):
        half = vals.astype("<f2")
    if np.all(np.isfinite(half)):
        return half.tobytes(), False
    return vals.astype("<f4").tobytes(), True


# ------------------------------------------------------------------------------------------------
# Public API


def _is_cpu(device: Any) -> bool:
    return device is None or (isinstance(device, str) and device == "cpu")


def decode(
    profile: Profile, blob, *, device: Any = "cpu", max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES, source: str = "<blob>"
) -> Layers:
    """Decodes a blob: per layer (K, V), K [kv_heads, tokens, head_dim] and V [kv_heads, tokens,
    value_head_dim] (profile.value_head_dim, = head_dim but in format 3 profiles), float16 when the cache
    was float16 (blob flag bit 0), else float32.

    device: "cpu" (NumPy arrays, reconstruction in float64), or a torch device — "cuda" / "cuda:N",
    "torch:cpu", or a torch.device — (torch tensors on that device, reconstruction in float32; see
    kvtc._torch).
    max_output_bytes: the most the output may take; a blob claiming more is refused before
    anything is allocated (blobs are untrusted input).
    Raises KvtcError: BLOB_INVALID (corrupt, truncated, inconsistent), BLOB_MISMATCH (another
    profile's blob), DEVICE_UNAVAILABLE.
    """
    if not _is_cpu(device):
        from . import _torch

        torch, dev = _torch.resolve(device)
        return _torch.decode(profile, _parse(profile, blob, max_output_bytes, source), torch, dev, source)
    parts = _parse(profile, blob, max_output_bytes, source)
    h, s, w, n = parts.header, parts.sink, parts.window, parts.n
    L, H, D, Dv, T = profile.layers, profile.kv_heads, profile.head_dim, profile.dims("value"), h.tokens
    keys = [np.empty((H, T, D), dtype=np.float32) for _ in range(L)]
    values = [np.empty((H, T, Dv), dtype=np.float32) for _ in range(L)]
    rawk, rawv = raw_kv(parts, L, H, D, Dv, source)
    for l in range(L):
        for src, dst in ((rawk[l], keys[l]), (rawv[l], values[l])):
            dst[:, :s, :] = src[:, :s, :]
            dst[:, T - w :, :] = src[:, s:, :]
    if n > 0:
        rt = _rope.layer_tables(profile.layer_ropes, D, h.start_position + s, n, h.start_position + T)
        for plan in profile.plans:
            nl = len(plan.layers)
            if plan.rank > 0:
                C = coefficients(plan, n, payload_codes(plan, n, parts.payloads[plan.index], source))
                X = C.astype(np.float64) @ plan.basis.astype(np.float64).T + plan.mean.astype(np.float64)
            else:
                X = np.broadcast_to(plan.mean.astype(np.float64), (n, plan.dim))
            blk = X.astype(np.float32).reshape(n, nl, H, profile.dims(plan.kind)).transpose(1, 2, 0, 3)  # [nl, H, n, D or Dv]
            if plan.kind == "key":
                # each layer with its own RoPE; float32 with float32 cos/sin tables, as kvtc's decoder
                blk = blk.copy()
                for li, l in enumerate(plan.layers):
                    t = rt[l]
                    if t is not None:
                        blk[li] = _rope.rotate32(blk[li], t[0], t[1], t[4], t[5])
            if h.float16:  # restored as float16: saturate at ±65504 (the nearest value it holds), never ∞
                blk = np.clip(blk, -q.HALF_MAX, q.HALF_MAX)
            dst = keys if plan.kind == "key" else values
            for li, l in enumerate(plan.layers):
                dst[l][:, s : T - w, :] = blk[li]
    if h.float16:
        return [(k.astype(np.float16), v.astype(np.float16)) for k, v in zip(keys, values)]
    return list(zip(keys, values))


def encode(
    profile: Profile,
    layers_kv: Sequence[Tuple[Any, Any]],
    start_position: int = 0,
    *,
    entropy: Optional[str] = None,
    device: Any = "cpu",
    bit_exact: bool = False,
) -> bytes:
    """Encodes a KV cache into a blob that kvtc (Node) and this package decode.

    layers_kv: per layer (K, V), K [kv_heads, tokens, head_dim] and V [kv_heads, tokens,
    value_head_dim] (a leading batch dim of 1 is accepted; profile layer l is the model's layer
    profile.cache_layers[l]), float16 or float32 NumPy arrays or torch tensors, with RoPE applied as the model
    stores them. start_position: the absolute position of token 0. entropy: override the
    profile's DEFLATE setting (``settings.entropy``). device: as for decode.

    The projection runs as one float64 matrix product per plan, rounded to float32: the codes
    equal kvtc's except where a coefficient lies within float32 rounding of a decision boundary
    (rare; a neighbouring code or fp16 scale). ``bit_exact=True`` instead sums in float32 in the
    order of kvtc's CPU encoder (see kvtc_sgemm), for byte-identical blobs; it costs about p
    (features per plan) vector passes per plan, so keep it for tests and small caches.
    Raises KvtcError: PROFILE_MISMATCH (shape), KV_INVALID (dtype, non-finite values).
    """
    start = _start_position(start_position)
    coder = _entropy(profile, entropy)
    if not _is_cpu(device):
        from . import _torch

        torch, dev = _torch.resolve(device)
        return _torch.encode(profile, layers_kv, start, coder, torch, dev)
    layers_np, fp16, T = check_cache(profile, layers_kv)
    if start + T > MAX_POSITIONS:
        raise KvtcError(
            "KV_INVALID",
            f"the cache starts at position {start} with {T} tokens; positions must be integers in [0, 2^32)",
            "Give the cache its real start position (the absolute position of its first token).",
            {"start_position": start, "tokens": T},
        )
    check_positions(start, T, profile.max_positions, profile.max_positions_recorded, "the cache", encoding=True)
    s, w, n = profile.split(T)
    scan_cache(profile, layers_np, s, n, start)
    raw, raw_f32 = raw_section(layers_np, s, w)
    sections = [(KIND_RAW, CODEC_STORED, 0, raw, len(raw))]
    if n > 0:
        H = profile.kv_heads
        rt = _rope.layer_tables(profile.layer_ropes, profile.head_dim, start + s, n, start + T)
        for plan in profile.plans:
            if plan.rank == 0:
                continue
            D = profile.dims(plan.kind)
            src = [layers_np[l][0 if plan.kind == "key" else 1] for l in plan.layers]
            X = np.stack([a[:, s : T - w, :] for a in src]).astype(np.float32).reshape(len(plan.layers) * H, n, D)
            if plan.kind == "key":
                X = X.copy()
                for li, l in enumerate(plan.layers):
                    t = rt[l]
                    if t is not None:
                        X[li * H : (li + 1) * H] = _rope.unrotate32(X[li * H : (li + 1) * H], t[2], t[3], t[4], t[5])
            d = X - plan.mean.reshape(-1, 1, D)  # float32, as the graph's Sub
            rows = np.ascontiguousarray(d.transpose(1, 0, 2)).reshape(n, plan.dim).astype(np.float64)
            pr = prepared(plan)
            codes_a = np.zeros((n, 0), dtype=np.uint8)
            coeffs_b = np.zeros((n, 0), dtype=np.float32)
            if pr.affine.size:
                if bit_exact:
                    u = kvtc_sgemm(rows, pr.w_affine, pr.bias)
                else:
                    u = (rows @ pr.w_affine.astype(np.float64)).astype(np.float32) + pr.bias[None, :]
                codes_a = np.clip(np.floor(u), 0, pr.levels[None, :]).astype(np.uint8)
            if pr.other.size:
                coeffs_b = kvtc_sgemm(rows, pr.v_other) if bit_exact else (rows @ pr.v_other.astype(np.float64)).astype(np.float32)
            payload = payload_from(plan, n, codes_a, coeffs_b, first_token=s)
            codec, stored = compress(KIND_PLAN, payload, coder)
            sections.append((KIND_PLAN, codec, plan.index, stored, len(payload)))
    return assemble_blob(profile, fp16, raw_f32, T, start, s, w, sections)


def plan_codes(
    profile: Profile, blob, *, max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES, source: str = "<blob>"
) -> Dict[int, List[GroupCodes]]:
    """Debugging: the integer codes stored in a blob, per plan index → its groups (GroupCodes:
    codes [width, n] uint8, component-major, and fp16 offset/scale bits of dynamic groups).
    The blob is checked exactly as decode checks it."""
    parts = _parse(profile, blob, max_output_bytes, source)
    return {i: payload_codes(profile.plans[i], parts.n, p, source) for i, p in sorted(parts.payloads.items())}


def assemble_blob(profile, fp16: bool, raw_f32: bool, tokens: int, start: int, sink: int, window: int, sections) -> bytes:
    """The blob of an encode (NumPy or torch path): the header from the profile, then the sections."""
    return assemble(
        float16=fp16,
        raw_float32=raw_f32,
        profile_id=profile.blob_id,
        tokens=tokens,
        start_position=start,
        layers=profile.layers,
        kv_heads=profile.kv_heads,
        head_dim=profile.head_dim,
        sink=sink,
        window=window,
        sections=sections,
    )
