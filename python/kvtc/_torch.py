"""The optional PyTorch path: ``decode(..., device="cuda")`` and ``encode(..., device="cuda")``.

UNTESTED: this module was written without PyTorch or a GPU on the machine that wrote it (the
package's tests run the NumPy path only). It follows the NumPy path step for step; run
``python/README.md``'s "Checking the CUDA path" snippet on a CUDA machine before relying on it.

What runs where:
- decode: the blob is parsed, inflated and dequantized to coefficients on the host (NumPy, the
  same code as the CPU path); the reconstruction ĉ·Vᵀ + μ, RoPE and the scatter into the cache
  run on the device in float32. Returns torch tensors on the device (float16 or float32).
- encode: gather, RoPE removal, mean subtraction, projection and the static int quantization run
  on the device in float32; the codes and the other coefficients come back to the host, where
  the dynamic / fp8 quantization, bit-packing and DEFLATE run (NumPy, as on the CPU path).
  float32 matrix products on a GPU sum in another order than kvtc's CPU encoder, so a code may
  differ by one step where a coefficient sits on a rounding boundary (as kvtc's own CUDA
  path does); blobs still decode everywhere.
Matrix products are float32: if TF32 was enabled globally (torch.backends.cuda.matmul.allow_tf32),
they lose precision. torch is imported only when a non-CPU device is asked for.
"""

from __future__ import annotations

from typing import Any, List, Tuple

import numpy as np

from . import _rope
from ._errors import KvtcError


def resolve(device: Any):
    """(torch module, torch.device) for "cuda", "cuda:N" or a torch.device; a clear error otherwise."""
    name = str(device)
    if not (name == "cuda" or name.startswith("cuda:")):
        raise KvtcError(
            "USAGE",
            f'device {name!r} is not supported; use "cpu" (NumPy) or "cuda" / "cuda:N" (PyTorch)',
            'Pass device="cpu" or device="cuda".',
            {"device": name},
        )
    try:
        import torch  # noqa: PLC0415 - optional dependency, imported lazily
    except ImportError:
        raise KvtcError(
            "DEVICE_UNAVAILABLE",
            f"device={name!r} needs PyTorch, which is not installed",
            'Install a CUDA build of PyTorch (pip install torch), or use device="cpu".',
            {"device": name},
        ) from None
    if not torch.cuda.is_available():
        raise KvtcError(
            "DEVICE_UNAVAILABLE",
            f"device={name!r}: PyTorch {torch.__version__} sees no CUDA device",
            'Run on a machine with an NVIDIA GPU and a CUDA build of PyTorch, or use device="cpu".',
            {"device": name},
        )
    dev = torch.device(name)
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise KvtcError(
            "DEVICE_UNAVAILABLE",
            f"device={name!r}: only {torch.cuda.device_count()} CUDA device(s) are visible",
            "Pass an existing device index.",
            {"device": name},
        )
    return torch, dev


def _plan_tensors(torch, plan, dev):
    key = ("torch", str(dev))
    got = plan._cache.get(key)
    if got is None:
        got = {
            "basis": torch.from_numpy(np.ascontiguousarray(plan.basis)).to(dev),
            "mean": torch.from_numpy(np.ascontiguousarray(plan.mean)).to(dev),
        }
        plan._cache[key] = got
    return got


def _rotate(torch, x, cos, sin, ia, ib, undo: bool):
    """RoPE on float32 x [..., n, D] with float32 cos/sin [n, R/2]; separate multiplies and adds."""
    out = x.clone()
    a = x[..., ia]
    b = x[..., ib]
    if undo:
        out[..., ia] = a * cos + b * sin
        out[..., ib] = b * cos - a * sin
    else:
        out[..., ia] = a * cos - b * sin
        out[..., ib] = b * cos + a * sin
    return out


def _tables(torch, profile, start: int, n: int, dev):
    r = profile.rope
    if r is None or r.attention_factor != 1.0 or (r.scaling or {}).get("type") == "longrope":
        raise KvtcError(
            "UNSUPPORTED_ARCHITECTURE",
            "the torch path of this package reads profiles whose layers share one RoPE without an attention factor or longrope; this profile's RoPE is per layer (format 2)",
            "Decode or encode it with device='cpu' (NumPy), which un-rotates each layer with its own RoPE.",
            {"profile": profile.path},
        )
    cos, sin = _rope.tables(_rope.inv_freq(r), start, n)
    ia, ib = _rope.pairs(r, profile.head_dim)
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(dev)  # noqa: E731
    return t(cos.astype(np.float32)), t(sin.astype(np.float32)), t(ia), t(ib)


def decode(profile, parts, torch, dev, source: str = "<blob>") -> List[Tuple[Any, Any]]:
    from .codec import coefficients, payload_codes, raw_values

    h, s, w, n = parts.header, parts.sink, parts.window, parts.n
    L, H, D, T = profile.layers, profile.kv_heads, profile.head_dim, h.tokens
    keys = [torch.empty((H, T, D), dtype=torch.float32, device=dev) for _ in range(L)]
    values = [torch.empty((H, T, D), dtype=torch.float32, device=dev) for _ in range(L)]
    rawv = torch.from_numpy(raw_values(parts, L, H, D, source)).to(dev)
    for l in range(L):
        for which, dst in ((0, keys[l]), (1, values[l])):
            dst[:, :s, :] = rawv[l, which, :, :s, :]
            dst[:, T - w :, :] = rawv[l, which, :, s:, :]
    if n > 0:
        cos, sin, ia, ib = _tables(torch, profile, h.start_position + s, n, dev)
        with torch.no_grad():
            for plan in profile.plans:
                pt = _plan_tensors(torch, plan, dev)
                nl = len(plan.layers)
                if plan.rank > 0:
                    C = torch.from_numpy(coefficients(plan, n, payload_codes(plan, n, parts.payloads[plan.index], source))).to(dev)
                    X = C @ pt["basis"].T + pt["mean"]
                else:
                    X = pt["mean"].expand(n, plan.dim)
                blk = X.reshape(n, nl, H, D).permute(1, 2, 0, 3)  # [nl, H, n, D]
                if plan.kind == "key":
                    blk = _rotate(torch, blk, cos, sin, ia, ib, undo=False)
                if h.float16:  # saturate at ±65504, as the CPU path
                    blk = blk.clamp(-65504.0, 65504.0)
                dst = keys if plan.kind == "key" else values
                for li, l in enumerate(plan.layers):
                    dst[l][:, s : T - w, :] = blk[li]
    if h.float16:
        return [(k.half(), v.half()) for k, v in zip(keys, values)]
    return list(zip(keys, values))


def encode(profile, layers_kv, start: int, coder: str, torch, dev) -> bytes:
    from .blob import CODEC_STORED, KIND_PLAN, KIND_RAW, MAX_POSITIONS, assemble, check_positions, compress
    from .codec import check_cache, payload_from, prepared, raw_section, scan_cache

    def convert(x, what):
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(np.ascontiguousarray(x))
        if not isinstance(x, torch.Tensor):
            raise KvtcError("KV_INVALID", f"{what} is a {type(x).__name__}; expected a torch tensor or a NumPy array")
        x = x.detach()
        if x.dtype == torch.bfloat16:
            x = x.float()  # the blob records float16 or float32 only
        return x

    layers_t, fp16, T = check_cache(profile, layers_kv, convert)
    if start + T > MAX_POSITIONS:
        raise KvtcError("KV_INVALID", f"the cache starts at position {start} with {T} tokens; positions must be integers in [0, 2^32)")
    check_positions(start, T, profile.max_positions, profile.max_positions_recorded, "the cache", encoding=True)
    s, w, n = profile.split(T)
    with torch.no_grad():
        scan_cache(
            profile,
            layers_t,
            s,
            n,
            start,
            sumsq=lambda a: (a.to(torch.float64) ** 2).sum(dim=(0, 2)).cpu().numpy(),
            token=lambda a, t: a[:, t, :].float().cpu().numpy(),
        )
    # raw rows to the host; float32 → fp16 there (NumPy), exactly as the CPU path
    host_rows = [tuple(torch.cat([a[:, :s], a[:, T - w :]], dim=1).float().cpu().numpy() for a in pair) for pair in layers_t]
    raw, raw_f32 = raw_section(host_rows, s + w, 0)
    sections = [(KIND_RAW, CODEC_STORED, 0, raw, len(raw))]
    if n > 0:
        H, D = profile.kv_heads, profile.head_dim
        cos, sin, ia, ib = _tables(torch, profile, start + s, n, dev)
        with torch.no_grad():
            for plan in profile.plans:
                if plan.rank == 0:
                    continue
                pt = _plan_tensors(torch, plan, dev)
                pr = prepared(plan)
                src = [layers_t[l][0 if plan.kind == "key" else 1] for l in plan.layers]
                X = torch.stack([a[:, s : T - w, :].to(dev, torch.float32) for a in src]).reshape(len(plan.layers) * H, n, D)
                if plan.kind == "key":
                    X = _rotate(torch, X, cos, sin, ia, ib, undo=True)
                rows = (X - pt["mean"].reshape(-1, 1, D)).permute(1, 0, 2).reshape(n, plan.dim)
                codes_a = np.zeros((n, 0), dtype=np.uint8)
                coeffs_b = np.zeros((n, 0), dtype=np.float32)
                if pr.affine.size:
                    wa = torch.from_numpy(pr.w_affine).to(dev)
                    u = rows @ wa + torch.from_numpy(pr.bias).to(dev)
                    lv = torch.from_numpy(pr.levels).to(dev)
                    codes_a = torch.minimum(torch.floor(u), lv).clamp_min(0).to(torch.uint8).cpu().numpy()
                if pr.other.size:
                    coeffs_b = (rows @ torch.from_numpy(pr.v_other).to(dev)).cpu().numpy()
                payload = payload_from(plan, n, codes_a, coeffs_b, first_token=s)
                codec, stored = compress(KIND_PLAN, payload, coder)
                sections.append((KIND_PLAN, codec, plan.index, stored, len(payload)))
    return assemble(
        float16=fp16,
        raw_float32=raw_f32,
        profile_id=profile.blob_id,
        tokens=T,
        start_position=start,
        layers=profile.layers,
        kv_heads=profile.kv_heads,
        head_dim=profile.head_dim,
        sink=s,
        window=w,
        sections=sections,
    )
