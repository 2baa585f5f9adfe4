"""The PyTorch path: ``decode``/``encode`` with ``device="cuda"``, ``"cuda:N"``, ``"torch:cpu"`` or a
``torch.device``. It reads every profile this package reads (format 1; format 2's per-layer RoPE:
NoPE layers, partial rotary, both layouts, attention factor, linear / llama3 / yarn / longrope with
its factor set chosen by start + tokens; format 3's values of their own width, layer subsets, shards).

Devices: the string ``"cpu"`` (the default) is the NumPy path; every other device is this module.
``"torch:cpu"`` and ``torch.device("cpu")`` run this module on PyTorch's CPU backend: the same code
as on CUDA, for tests and for callers who want torch tensors without a GPU. ``"torch:cuda[:N]"`` is
``"cuda[:N]"``.

What runs where:
- decode: the blob is parsed, inflated and dequantized to coefficients on the host (NumPy, the
  same functions as the NumPy path: codec.raw_kv, payload_codes, coefficients); per plan, one
  float32 product ĉ·Vᵀ + μ over all its layers and tokens, RoPE per run of layers sharing a
  description (tables built once per call from kvtc._rope, NoPE layers skipped), and the scatter
  into one K [layers, heads, tokens, head_dim] and one V [..., value_head_dim] run on the device. Returns per layer (K, V) torch tensors
  on the device (float16 or float32; views of one K and one V tensor).
- encode: gather, RoPE removal (per run of layers, the un-rotate tables cos/f, sin/f), mean
  subtraction, the projection and the static int quantization run on the device in float32, one
  product per plan; the codes and the other coefficients come back to the host, where the dynamic
  / fp8 quantization, bit-packing and DEFLATE run (NumPy, as on the NumPy path). float32 products
  sum in another order than the NumPy path's float64 ones, so a code may differ by one step where a
  coefficient sits on a rounding boundary (≤ 1e-3 of codes in the tests, as kvtc's own CUDA path);
  blobs decode everywhere.

Tested on torch's CPU backend (python/tests/test_torch.py): decode of every committed profile's
blobs (Node-made and NumPy-made) and of format-3 profiles (value_head_dim, MLA latent, layer
subset, shard) against the NumPy path and Node's decodes, torch encode → NumPy decode, codes
against NumPy's encode; test/python/torch-node.test.ts checks torch against the Node codec both
ways on Gemma 3's profile. On CUDA the same comparisons run only where a CUDA device is visible
(they skip elsewhere; not yet run), and scripts/bench-torch-decode.py times decode against a
device copy.
Matrix products are float32: with TF32 enabled globally (torch.backends.cuda.matmul.allow_tf32)
they lose precision. torch is imported only when a torch device is asked for.
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

import numpy as np

from . import _rope
from ._errors import KvtcError

_HOW = 'use "cpu" (NumPy), "torch:cpu" (PyTorch on the CPU), "cuda" / "cuda:N" (PyTorch on a GPU) or a torch.device'


def _device_name(device: Any) -> str:
    name = str(device)
    return name[len("torch:") :] if name.startswith("torch:") else name


def resolve(device: Any):
    """(torch module, torch.device) for "torch:cpu", "cuda", "cuda:N", "torch:cuda[:N]" or a
    torch.device of type cpu or cuda; a KvtcError naming the fix otherwise."""
    name = _device_name(device)
    if not (name == "cpu" or name == "cuda" or name.startswith("cuda:")):
        raise KvtcError(
            "USAGE", f"device {str(device)!r} is not supported; {_HOW}", 'Pass device="cpu" or device="cuda".', {"device": str(device)}
        )
    try:
        import torch  # noqa: PLC0415 - optional dependency, imported lazily
    except ImportError:
        raise KvtcError(
            "DEVICE_UNAVAILABLE",
            f"device={str(device)!r} needs PyTorch, which is not installed",
            "Install PyTorch (pip install torch, or pip install 'kvtc[torch]'; a CUDA build for a GPU), or use device=\"cpu\" (NumPy).",
            {"device": str(device)},
        ) from None
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise KvtcError(
            "USAGE", f"device {str(device)!r} is not a torch device; {_HOW}", 'Pass device="cuda" or "cuda:0".', {"device": str(device)}
        ) from None
    if dev.type == "cpu":
        return torch, dev
    if not torch.cuda.is_available():
        raise KvtcError(
            "DEVICE_UNAVAILABLE",
            f"device={str(device)!r}: PyTorch {torch.__version__} sees no CUDA device",
            'Run on a machine with an NVIDIA GPU and a CUDA build of PyTorch, or use device="cpu" (NumPy) or "torch:cpu".',
            {"device": str(device)},
        )
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise KvtcError(
            "DEVICE_UNAVAILABLE",
            f"device={str(device)!r}: only {torch.cuda.device_count()} CUDA device(s) are visible",
            "Pass an existing device index.",
            {"device": str(device)},
        )
    return torch, dev


def _t(torch, a: np.ndarray, dev):
    return torch.from_numpy(np.ascontiguousarray(a)).to(dev)


def _plan_tensors(torch, plan, dev) -> Dict[str, Any]:
    """The plan's basis and mean on the device, uploaded once per (plan, device)."""
    key = ("torch", str(dev))
    got = plan._cache.get(key)
    if got is None:
        got = {"basis": _t(torch, plan.basis, dev), "mean": _t(torch, plan.mean, dev)}
        plan._cache[key] = got
    return got


class _RopeGroups:
    """Per plan of keys: runs of consecutive layers sharing a RoPE description, each with its tables
    on the device.

    _rope.layer_tables builds one set of float32 tables per distinct description (the NumPy path's
    tables, bit for bit); each is uploaded once here and shared by every plan that uses it."""

    def __init__(self, torch, profile, start: int, n: int, seq_len: int, dev):
        self.torch = torch
        self.ropes = profile.layer_ropes
        self.per_layer = _rope.layer_tables(profile.layer_ropes, profile.head_dim, start, n, seq_len)
        self.dev = dev
        self._uploaded: Dict[int, Tuple[Any, ...]] = {}

    def runs(self, layers: List[int], undo: bool):
        """[(slice of positions in `layers`, cos [n, R/2], sin, layout, R)] for the layers that have
        RoPE (NoPE layers are left out); undo gives the un-rotate tables (cos/f, sin/f)."""
        out: List[List[Any]] = []
        for li, l in enumerate(layers):
            t = self.per_layer[l]
            if t is None:
                continue
            if out and out[-1][0] is t and out[-1][1] == li:
                out[-1][1] = li + 1
                continue
            out.append([t, li + 1, li, self.ropes[l]])
        res = []
        for t, stop, first, r in out:
            if id(t) not in self._uploaded:
                self._uploaded[id(t)] = tuple(_t(self.torch, a, self.dev) for a in t[:4])
            ca, sa, cu, su = self._uploaded[id(t)]
            res.append((slice(first, stop), cu if undo else ca, su if undo else sa, r.layout, r.rotary_dim))
        return res


def _rotate(x, cos, sin, layout: str, R: int, undo: bool) -> None:
    """RoPE on float32 x [..., n, D] in place (x may be a strided view) with float32 cos/sin
    [n, R/2]: pairs (i, i + R/2) for "half", (2i, 2i + 1) for "interleaved", taken as views (no
    gather); separate multiplies and adds (each product rounded to float32, then the sum), as the
    NumPy path's rotate32 / unrotate32."""
    h = R // 2
    if layout == "half":
        a, b = x[..., :h], x[..., h:R]
    else:
        pairs = x[..., :R].unflatten(-1, (h, 2))
        a, b = pairs[..., 0], pairs[..., 1]
    if undo:
        na, nb = a * cos + b * sin, b * cos - a * sin
    else:
        na, nb = a * cos - b * sin, b * cos + a * sin
    a.copy_(na)
    b.copy_(nb)


def _rope_plan(rg: _RopeGroups, blk, layers: List[int], undo: bool) -> None:
    """Applies (undo=False) or removes each layer's RoPE on blk [nl, H, n, D] in place, one run of
    consecutive layers with the same description at a time (Gemma 3's plans of local and global
    layers: two or three runs)."""
    for sl, cos, sin, layout, R in rg.runs(layers, undo):
        _rotate(blk[sl], cos, sin, layout, R, undo)


def _scatter(dst, blk, layers, s: int, e: int) -> None:
    """dst[layers, :, s:e, :] = blk [nl, H, e - s, D] (converted to dst's dtype): one copy when the
    plan's layers are consecutive, else one per layer (views either way, no index tensors)."""
    layers = list(layers)
    if layers == list(range(layers[0], layers[0] + len(layers))):
        dst[layers[0] : layers[0] + len(layers), :, s:e, :] = blk
    else:
        for li, l in enumerate(layers):
            dst[l, :, s:e, :] = blk[li]


def decode(profile, parts, torch, dev, source: str = "<blob>") -> List[Tuple[Any, Any]]:
    from .codec import coefficients, payload_codes, raw_kv

    h, s, w, n = parts.header, parts.sink, parts.window, parts.n
    L, H, D, Dv, T = profile.layers, profile.kv_heads, profile.head_dim, profile.dims("value"), h.tokens
    out_dtype = torch.float16 if h.float16 else torch.float32  # written once, converted on the way in
    K = torch.empty((L, H, T, D), dtype=out_dtype, device=dev)
    V = torch.empty((L, H, T, Dv), dtype=out_dtype, device=dev)
    for raw, dst in zip(raw_kv(parts, L, H, D, Dv, source), (K, V)):  # [L, H, s + w, D or Dv] each; fp16 values when float16
        raw = torch.from_numpy(raw).to(dev)
        dst[:, :, :s, :] = raw[:, :, :s, :]
        dst[:, :, T - w :, :] = raw[:, :, s:, :]
    if n > 0:
        rg = _RopeGroups(torch, profile, h.start_position + s, n, h.start_position + T, dev)
        with torch.no_grad():
            for plan in profile.plans:
                pt = _plan_tensors(torch, plan, dev)
                nl = len(plan.layers)
                if plan.rank > 0:
                    C = _t(torch, coefficients(plan, n, payload_codes(plan, n, parts.payloads[plan.index], source)), dev)
                    X = torch.addmm(pt["mean"], C, pt["basis"].T)  # [n, p]: ĉ·Vᵀ + μ
                else:
                    X = pt["mean"].expand(n, plan.dim).clone()
                blk = X.reshape(n, nl, H, profile.dims(plan.kind)).permute(1, 2, 0, 3)  # [nl, H, n, D or Dv], a view of X
                if plan.kind == "key":
                    _rope_plan(rg, blk, plan.layers, undo=False)
                if h.float16:  # restored as float16: saturate at ±65504, never ∞ (as the NumPy path)
                    blk.clamp_(-65504.0, 65504.0)
                _scatter(K if plan.kind == "key" else V, blk, plan.layers, s, T - w)
    return [(K[l], V[l]) for l in range(L)]


def encode(profile, layers_kv, start: int, coder: str, torch, dev) -> bytes:
    from .blob import CODEC_STORED, KIND_PLAN, KIND_RAW, MAX_POSITIONS, check_positions, compress
    from .codec import assemble_blob, check_cache, payload_from, prepared, raw_section, scan_cache

    def convert(x, what):
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(np.ascontiguousarray(x))
        if not isinstance(x, torch.Tensor):
            raise KvtcError(
                "KV_INVALID",
                f"{what} is a {type(x).__name__}; expected a torch tensor or a NumPy array",
                "Pass per layer (K, V) tensors: K [kv_heads, tokens, head_dim], V [kv_heads, tokens, value_head_dim].",
            )
        x = x.detach()
        if x.dtype == torch.bfloat16:
            x = x.float()  # the blob records float16 or float32 only
        return x

    layers_t, fp16, T = check_cache(profile, layers_kv, convert)
    if start + T > MAX_POSITIONS:
        raise KvtcError(
            "KV_INVALID",
            f"the cache starts at position {start} with {T} tokens; positions must be integers in [0, 2^32)",
            "Give the cache its real start position (the absolute position of its first token).",
            {"start_position": start, "tokens": T},
        )
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
    # raw rows to the host; float32 → fp16 there (NumPy), exactly as the NumPy path
    host_rows = [tuple(torch.cat([a[:, :s], a[:, T - w :]], dim=1).float().cpu().numpy() for a in pair) for pair in layers_t]
    raw, raw_f32 = raw_section(host_rows, s + w, 0)
    sections = [(KIND_RAW, CODEC_STORED, 0, raw, len(raw))]
    if n > 0:
        H = profile.kv_heads
        rg = _RopeGroups(torch, profile, start + s, n, start + T, dev)
        with torch.no_grad():
            for plan in profile.plans:
                if plan.rank == 0:
                    continue
                pt = _plan_tensors(torch, plan, dev)
                pr = prepared(plan)
                D = profile.dims(plan.kind)
                src = [layers_t[l][0 if plan.kind == "key" else 1] for l in plan.layers]
                X = torch.stack([a[:, s : T - w, :].to(dev, torch.float32) for a in src])  # [nl, H, n, D]
                if plan.kind == "key":
                    _rope_plan(rg, X, plan.layers, undo=True)
                X = X.reshape(len(plan.layers) * H, n, D) - pt["mean"].reshape(-1, 1, D)  # float32, as the graph's Sub
                rows = X.permute(1, 0, 2).reshape(n, plan.dim)
                codes_a = np.zeros((n, 0), dtype=np.uint8)
                coeffs_b = np.zeros((n, 0), dtype=np.float32)
                if pr.affine.size:
                    et = plan._cache.setdefault(("torch-encode", str(dev)), {})
                    if not et:
                        et.update(wa=_t(torch, pr.w_affine, dev), bias=_t(torch, pr.bias, dev), levels=_t(torch, pr.levels, dev))
                    u = rows @ et["wa"] + et["bias"]  # the product rounded to float32, then the bias: as the NumPy path
                    codes_a = torch.minimum(torch.floor(u), et["levels"]).clamp_min(0).to(torch.uint8).cpu().numpy()
                if pr.other.size:
                    vo = plan._cache.get(("torch-other", str(dev)))
                    if vo is None:
                        vo = plan._cache[("torch-other", str(dev))] = _t(torch, pr.v_other, dev)
                    coeffs_b = (rows @ vo).cpu().numpy()
                payload = payload_from(plan, n, codes_a, coeffs_b, first_token=s)
                codec, stored = compress(KIND_PLAN, payload, coder)
                sections.append((KIND_PLAN, codec, plan.index, stored, len(payload)))
    return assemble_blob(profile, fp16, raw_f32, T, start, s, w, sections)
