"""Shared helpers of the kvtc pytest suite: fixture paths, profile surgery, comparisons.

Profile surgery edits a copy of a committed profile in a temporary directory and, where the test
is about a check that runs after the profile id is verified, re-derives tensors.sha256,
tensors.bytes and profile_id (spec §2.1) so that the check under test is the one that refuses.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import shutil
import struct
from typing import Any, Callable, Dict, Optional, Tuple

import kvtc
import numpy as np
from kvtc import _safetensors
from kvtc.profile import MANIFEST_FILE, TENSORS_FILE, expected_profile_id

HERE = pathlib.Path(__file__).resolve().parent
FIXTURES = HERE / "fixtures"
PYTHON_DIR = HERE.parent

#: (case, profile folder, cache file) of the committed Node blobs and decodes (fixtures/README.md).
NODE_CASES = [
    ("v2-f32", "profile-v2", "cache-f32"),
    ("v2-f16", "profile-v2", "cache-f16"),
    ("v1-f32", "profile-v1", "cache-f32"),
]


def read_blob(case: str) -> bytes:
    return (FIXTURES / f"{case}.kvtc").read_bytes()


def copy_profile(dst: pathlib.Path, name: str = "profile-v2") -> pathlib.Path:
    shutil.copytree(FIXTURES / name, dst)
    return dst


def load_manifest(d: pathlib.Path) -> Dict[str, Any]:
    return json.loads((d / MANIFEST_FILE).read_text("utf-8"))


def save_manifest(d: pathlib.Path, m: Dict[str, Any], *, fix_id: bool = False) -> None:
    """Writes the manifest; fix_id re-derives profile_id from the (edited) fields."""
    if fix_id:
        m["profile_id"] = expected_profile_id(m)
    (d / MANIFEST_FILE).write_text(json.dumps(m, indent=2), "utf-8")


def edit_manifest(d: pathlib.Path, edit: Callable[[Dict[str, Any]], None], *, fix_id: bool = False) -> None:
    m = load_manifest(d)
    edit(m)
    save_manifest(d, m, fix_id=fix_id)


def load_tensors(d: pathlib.Path) -> Dict[str, np.ndarray]:
    buf = (d / TENSORS_FILE).read_bytes()
    infos, _ = _safetensors.parse(buf)
    return {name: _safetensors.array(buf, t).copy() for name, t in infos.items()}


def write_tensor_bytes(d: pathlib.Path, data: bytes) -> None:
    """Replaces the tensor file and re-binds the manifest to it (bytes, sha256, profile_id)."""
    (d / TENSORS_FILE).write_bytes(data)
    m = load_manifest(d)
    m["tensors"]["bytes"] = len(data)
    m["tensors"]["sha256"] = hashlib.sha256(data).hexdigest()
    save_manifest(d, m, fix_id=True)


def raw_tensor_file(header: Dict[str, Any], data: bytes, *, pad: bool = True) -> bytes:
    """A safetensors file from a literal header (for malformed ones), padded with spaces to 8."""
    hb = json.dumps(header, separators=(",", ":")).encode("utf-8")
    if pad:
        hb += b" " * ((8 - len(hb) % 8) % 8)
    return struct.pack("<Q", len(hb)) + hb + data


def layout(tensors: Dict[str, np.ndarray]) -> Tuple[Dict[str, Any], bytes]:
    """(header, data) of float32 tensors laid out contiguously in name order, as kvtc writes them."""
    header: Dict[str, Any] = {"__metadata__": {"format": "pt"}}
    parts = []
    at = 0
    for name in sorted(tensors):
        b = np.ascontiguousarray(tensors[name], dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(tensors[name].shape), "data_offsets": [at, at + len(b)]}
        parts.append(b)
        at += len(b)
    return header, b"".join(parts)


def write_tensors(d: pathlib.Path, tensors: Dict[str, np.ndarray]) -> None:
    header, data = layout(tensors)
    write_tensor_bytes(d, raw_tensor_file(header, data))


def regroup(d: pathlib.Path, plans: Dict[int, Tuple[int, list]]) -> None:
    """Gives plan i the rank r and groups [(start, end, type, mode)]: truncates its tensors to r
    and sets bits_per_token (and budget_bits, if smaller) to what the groups use."""
    m = load_manifest(d)
    t = load_tensors(d)
    for i, (rank, groups) in plans.items():
        pe = m["plans"][i]
        names = pe["tensors"]
        t[names["basis"]] = t[names["basis"]][:, :rank]
        for role in ("variances", "lo", "hi"):
            t[names[role]] = t[names[role]][:rank]
        pe["rank"] = rank
        pe["groups"] = [{"start": s, "end": e, "type": ty, "mode": mo} for s, e, ty, mo in groups]
        bits = sum((e - s) * kvtc.profile.TYPE_BITS[ty] + (32 if mo == "dynamic" else 0) for s, e, ty, mo in groups)
        pe["bits_per_token"] = bits
        pe["budget_bits"] = max(pe["budget_bits"], bits)
    save_manifest(d, m)
    write_tensors(d, t)


def as64(layers) -> list:
    return [(np.asarray(k, dtype=np.float64), np.asarray(v, dtype=np.float64)) for k, v in layers]


def max_abs_diff(a, b, tokens: Optional[slice] = None) -> float:
    """max |a − b| over every layer's K and V ([kv_heads, tokens, head_dim]), optionally a token range."""
    sl = tokens or slice(None)
    return max(float(np.max(np.abs(x[:, sl] - y[:, sl]))) for (ka, va), (kb, vb) in zip(as64(a), as64(b)) for x, y in ((ka, kb), (va, vb)))


def relative_errors(decoded, original, s: int, w: int) -> np.ndarray:
    """‖x̂ − x‖ / ‖x‖ over the compressed tokens, per layer and kind: [layers, 2]."""
    out = []
    for (kd, vd), (ko, vo) in zip(as64(decoded), as64(original)):
        T = ko.shape[1]
        out.append([float(np.linalg.norm((d - o)[:, s : T - w]) / np.linalg.norm(o[:, s : T - w])) for d, o in ((kd, ko), (vd, vo))])
    return np.array(out)


# ------------------------------------------------------------------------------------------------
# An independent RoPE (written from Hugging Face transformers' rope functions, not from kvtc._rope)


def hf_inv_freq(desc: Dict[str, Any], seq_len: int) -> np.ndarray:
    """inv_freq [R/2] of one manifest RoPE description, as transformers' ROPE_INIT_FUNCTIONS compute it."""
    base, R = float(desc["theta"]), int(desc["rotary_dim"])
    pos_freqs = base ** (np.arange(0, R, 2, dtype=np.float64) / R)
    inv = 1.0 / pos_freqs
    sc = desc.get("scaling")
    if not sc:
        return inv
    if sc["type"] == "linear":
        return inv / sc["factor"]
    if sc["type"] == "llama3":
        factor, low, high, orig = sc["factor"], sc["low_freq_factor"], sc["high_freq_factor"], sc["original_max_position_embeddings"]
        wavelen = 2 * np.pi / inv
        out = np.where(wavelen > orig / low, inv / factor, inv)
        smooth = (orig / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * out / factor + smooth * out
        medium = ~(wavelen < orig / high) & ~(wavelen > orig / low)
        return np.where(medium, smoothed, out)
    if sc["type"] == "yarn":
        factor, orig = sc["factor"], sc["original_max_position_embeddings"]

        def corr(rot):
            return (R * np.log(orig / (rot * 2 * np.pi))) / (2 * np.log(base))

        low, high = corr(sc["beta_fast"]), corr(sc["beta_slow"])
        if sc["truncate"]:
            low, high = np.floor(low), np.ceil(high)
        low, high = max(low, 0), min(high, R - 1)
        if low == high:
            high += 0.001
        ramp = np.clip((np.arange(R // 2, dtype=np.float64) - low) / (high - low), 0, 1)
        extrapolation = 1 - ramp
        return (inv / factor) * (1 - extrapolation) + inv * extrapolation
    if sc["type"] == "longrope":
        ext = np.array(sc["long_factor"] if seq_len > sc["original_max_position_embeddings"] else sc["short_factor"], dtype=np.float64)
        return 1.0 / (ext * pos_freqs)
    raise ValueError(sc["type"])


def unrotate_ref(x: np.ndarray, desc: Optional[Dict[str, Any]], start: int, seq_len: int) -> np.ndarray:
    """Keys x [H, n, D] (float64) at positions start.. with RoPE `desc` undone (None: unchanged)."""
    if desc is None or desc.get("none"):
        return x
    R = int(desc["rotary_dim"])
    ang = (start + np.arange(x.shape[1], dtype=np.float64))[:, None] * hf_inv_freq(desc, seq_len)[None, :]
    f = float(desc.get("attention_factor", 1.0))
    cos, sin = np.cos(ang) / f, np.sin(ang) / f
    i = np.arange(R // 2)
    ia, ib = (i, i + R // 2) if desc["layout"] == "half" else (2 * i, 2 * i + 1)
    out = x.copy()
    a, b = x[..., ia], x[..., ib]
    out[..., ia] = a * cos + b * sin
    out[..., ib] = b * cos - a * sin
    return out


def layer_descs(manifest: Dict[str, Any]) -> list:
    """Each layer's RoPE description from a manifest's model.rope (format 1 or 2)."""
    rope, L = manifest["model"]["rope"], manifest["model"]["layers"]
    if isinstance(rope, dict):
        return [rope] * L
    out: list = [None] * L
    for g in rope:
        for l in g["layers"]:
            out[l] = g
    return out


def plan_features(plan, layers, descs, start: int, s: int, n: int, seq_len: int) -> np.ndarray:
    """The plan's features of the compressed tokens, float64 [n, p] (layer, head, dim order), keys
    un-rotated with the independent RoPE."""
    rows = []
    for l in plan.layers:
        a = np.asarray(layers[l][0 if plan.kind == "key" else 1], dtype=np.float64)[:, s : s + n]
        if plan.kind == "key":
            a = unrotate_ref(a, descs[l], start + s, seq_len)
        rows.append(a)
    return np.stack(rows).transpose(2, 0, 1, 3).reshape(n, plan.dim)
