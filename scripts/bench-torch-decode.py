#!/usr/bin/env python3
"""Times kvtc's torch decode against a device-to-device copy of the same cache (issue 20).

    python3 scripts/bench-torch-decode.py                       # torch on the CPU, the committed profiles
    python3 scripts/bench-torch-decode.py --device cuda         # on a GPU (run it where one is lent)
    python3 scripts/bench-torch-decode.py --profile kvtc-profiles/gemma3-270m --tokens 8192 --json

For each profile: a synthetic cache the profile was calibrated for (per plan μ + V·(z·√variance),
z ~ N(0, 1), keys rotated to their positions with each layer's RoPE; or --kv FILE, a KV
safetensors), encoded once by the NumPy path. Then, each the median of --repeat runs after one
warm-up:
- decode: kvtc.decode(profile, blob, device=...) end to end (parse, inflate, dequantize on the
  host; reconstruction, RoPE, scatter on the device), synchronized;
- host: the host part alone (parse, inflate, unpack, dequantize: the NumPy functions both paths share);
- copy: one device-to-device copy of the decoded cache (every layer's K and V, same dtype and
  size) into preallocated tensors: what restoring an uncompressed cache already in device memory costs;
- numpy: the NumPy path's decode (device="cpu"), for reference.
Reports milliseconds, tokens/s, output GB/s and decode ÷ copy. Timings depend on the machine:
say which one (CPU model and threads, or GPU) with every number.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "python"))

import kvtc  # noqa: E402
import numpy as np  # noqa: E402
from kvtc import _rope  # noqa: E402
from kvtc.codec import _parse, coefficients, payload_codes, raw_kv  # noqa: E402

DEFAULT_PROFILES = ["kvtc-profiles/smollm2-135m-instruct", "kvtc-profiles/gemma3-270m"]


def synthetic_cache(p, tokens: int, start: int, seed: int):
    """A float32 cache in the profile's distribution: per plan μ + V·(z·√variance); keys rotated."""
    rng = np.random.default_rng(seed)
    H = p.kv_heads
    tables = _rope.layer_tables(p.layer_ropes, p.head_dim, start, tokens, start + tokens)
    out = [[None, None] for _ in range(p.layers)]
    for plan in p.plans:
        D = p.dims(plan.kind) if hasattr(p, "dims") else p.head_dim
        z = rng.standard_normal((tokens, plan.rank)).astype(np.float32) * np.sqrt(np.maximum(plan.variances, 0))
        X = (plan.mean + z @ plan.basis.T).reshape(tokens, len(plan.layers), H, D).transpose(1, 2, 0, 3)
        for li, l in enumerate(plan.layers):
            x = np.ascontiguousarray(X[li], dtype=np.float32)
            if plan.kind == "key" and tables[l] is not None:
                ca, sa, _, _, ia, ib = tables[l]
                x = _rope.rotate32(x, ca, sa, ia, ib)
            out[l][0 if plan.kind == "key" else 1] = x
    return [tuple(kv) for kv in out]


def host_part(p, blob):
    """What decode does on the host: parse, CRC, inflate, raw section, unpack and dequantize."""
    parts = _parse(p, blob, kvtc.codec.DEFAULT_MAX_OUTPUT_BYTES, "<bench>")
    raw_kv(parts, p.layers, p.kv_heads, p.head_dim, p.dims("value") if hasattr(p, "dims") else p.head_dim, "<bench>")
    if parts.n:
        for plan in p.plans:
            if plan.rank:
                coefficients(plan, parts.n, payload_codes(plan, parts.n, parts.payloads[plan.index]))


def timed(fn, sync, repeat: int) -> float:
    fn()
    sync()
    runs = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        sync()
        runs.append(time.perf_counter() - t)
    return statistics.median(runs)


def machine(torch, dev) -> str:
    if dev.type == "cuda":
        return f"{torch.cuda.get_device_name(dev)} (torch {torch.__version__}, CUDA {torch.version.cuda})"
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU: {cpu}, torch {torch.__version__} with {torch.get_num_threads()} threads ({os.cpu_count()} cores visible)"


def bench(args, torch, dev, path: str) -> dict:
    p = kvtc.read_profile(ROOT / path if not os.path.isabs(path) else path)
    if args.kv:
        kv = kvtc.read_kv_safetensors(args.kv)
        layers, start = kv.layers, kv.start_position
    else:
        start = 0
        layers = synthetic_cache(p, min(args.tokens, p.max_positions), start, args.seed)  # within the model's context
        if args.dtype == "float16":
            layers = [(k.astype(np.float16), v.astype(np.float16)) for k, v in layers]
    T = layers[0][0].shape[1]
    blob = kvtc.encode(p, layers, start)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    dec = kvtc.decode(p, blob, device=dev)
    src = [t for kv in dec for t in kv]
    dst = [torch.empty_like(t) for t in src]
    out_bytes = sum(t.numel() * t.element_size() for t in src)

    def copy():
        for d, s in zip(dst, src):
            d.copy_(s)

    r = {
        "profile": path,
        "tokens": T,
        "dtype": str(src[0].dtype).replace("torch.", ""),
        "layers": p.layers,
        "kv_heads": p.kv_heads,
        "head_dim": p.head_dim,
        "cache_bytes": out_bytes,
        "blob_bytes": len(blob),
        "ms": {
            "decode": 1e3 * timed(lambda: kvtc.decode(p, blob, device=dev), sync, args.repeat),
            "host": 1e3 * timed(lambda: host_part(p, blob), lambda: None, args.repeat),
            "copy": 1e3 * timed(copy, sync, args.repeat),
            "numpy": 1e3 * timed(lambda: kvtc.decode(p, blob), lambda: None, max(1, args.repeat // 2)),
        },
    }
    ms = r["ms"]
    r["decode_tokens_per_s"] = T / (ms["decode"] / 1e3)
    r["decode_gb_per_s"] = out_bytes / (ms["decode"] / 1e3) / 1e9
    r["copy_gb_per_s"] = out_bytes / (ms["copy"] / 1e3) / 1e9
    r["decode_over_copy"] = ms["decode"] / ms["copy"]
    return r


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", action="append", help=f"profile folder (repeatable; default: {', '.join(DEFAULT_PROFILES)})")
    ap.add_argument("--device", default=None, help='"torch:cpu" (default without CUDA), "cuda" (default with it), "cuda:N"')
    ap.add_argument("--tokens", type=int, default=4096, help="tokens of the synthetic cache (default 4096)")
    ap.add_argument("--dtype", choices=["float16", "float32"], default="float16", help="dtype of the synthetic cache (default float16)")
    ap.add_argument("--kv", help="a KV safetensors file to encode instead of a synthetic cache (one --profile)")
    ap.add_argument("--repeat", type=int, default=5, help="timed runs per measurement after one warm-up (median; default 5)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = ap.parse_args()
    try:
        import torch
    except ImportError:
        print("bench-torch-decode needs PyTorch: python3 -m pip install torch", file=sys.stderr)
        return 2
    from kvtc._torch import resolve

    device = args.device or ("cuda" if torch.cuda.is_available() else "torch:cpu")
    try:
        torch, dev = resolve(device)
    except kvtc.KvtcError as e:
        print(f"{e.message} ({e.fix})", file=sys.stderr)
        return 2
    profiles = args.profile or DEFAULT_PROFILES
    out = {"machine": machine(torch, dev), "device": str(dev), "results": [bench(args, torch, dev, pth) for pth in profiles]}
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(out["machine"])
    print(
        f"{'profile':40} {'tokens':>6} {'dtype':>7} {'cache MB':>8} {'decode ms':>9} {'host ms':>8} {'copy ms':>8} "
        f"{'numpy ms':>8} {'tok/s':>9} {'dec GB/s':>8} {'copy GB/s':>9} {'dec/copy':>8}"
    )
    for r in out["results"]:
        ms = r["ms"]
        print(
            f"{r['profile']:40} {r['tokens']:>6} {r['dtype']:>7} {r['cache_bytes'] / 1e6:>8.1f} {ms['decode']:>9.1f} {ms['host']:>8.1f} "
            f"{ms['copy']:>8.2f} {ms['numpy']:>8.1f} {r['decode_tokens_per_s']:>9.0f} {r['decode_gb_per_s']:>8.2f} "
            f"{r['copy_gb_per_s']:>9.2f} {r['decode_over_copy']:>8.0f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
