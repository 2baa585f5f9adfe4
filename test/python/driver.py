"""Test driver for test/python/runtime.test.ts: runs the INSTALLED kvtc package over a job file.

    python3 driver.py JOBS.json  → one JSON document on stdout

JOBS.json: {"cases": [...], "errors": [...]}
- a case {"profile", "kv", "node_blob", "prefix"} decodes the Node blob (→ PREFIX.py-decode.safetensors),
  dumps its codes (→ PREFIX.node-codes.safetensors), encodes the cache (→ PREFIX.py.kvtc), dumps the
  codes of that blob (→ PREFIX.py-codes.safetensors) and encodes it again with bit_exact=True
  (→ PREFIX.py-exact.kvtc);
- an error {"name", "op": "read_profile" | "decode" | "encode" | "encode_nan" | "encode_layers" | "decode_cuda",
  "profile", "blob"?, "kv"?, "max_output_bytes"?} reports the KvtcError it raised (or none).
"""

import json
import sys
import time

import kvtc
import numpy as np
from kvtc import _safetensors, debug


def dump_codes(profile, blob, path):
    tensors = {}
    for i, groups in debug.plan_codes(profile, blob).items():
        for g, gc in enumerate(groups):
            tensors[f"plan.{i}.group.{g}.codes"] = gc.codes
            if gc.offsets is not None:
                tensors[f"plan.{i}.group.{g}.offsets"] = gc.offsets
                tensors[f"plan.{i}.group.{g}.scales"] = gc.scales
    with open(path, "wb") as f:
        f.write(_safetensors.serialize(tensors))


def run_case(c, profiles):
    profile = profiles.setdefault(c["profile"], kvtc.read_profile(c["profile"]))
    with open(c["node_blob"], "rb") as f:
        node_blob = f.read()
    h = kvtc.read_blob_header(node_blob)
    t0 = time.perf_counter()
    layers = kvtc.decode(profile, node_blob)
    t_decode = time.perf_counter() - t0
    assert all(k.dtype == np.dtype(h.dtype) and v.dtype == np.dtype(h.dtype) for k, v in layers)
    assert all(k.shape == (profile.kv_heads, h.tokens, profile.head_dim) for k, _ in layers)
    kvtc.write_kv_safetensors(c["prefix"] + ".py-decode.safetensors", layers, h.start_position, dtype=h.dtype)
    dump_codes(profile, node_blob, c["prefix"] + ".node-codes.safetensors")
    kv = kvtc.read_kv_safetensors(c["kv"])
    t0 = time.perf_counter()
    py_blob = kvtc.encode(profile, kv.layers, kv.start_position)
    t_encode = time.perf_counter() - t0
    with open(c["prefix"] + ".py.kvtc", "wb") as f:
        f.write(py_blob)
    dump_codes(profile, py_blob, c["prefix"] + ".py-codes.safetensors")
    t0 = time.perf_counter()
    exact_blob = kvtc.encode(profile, kv.layers, kv.start_position, bit_exact=True)
    t_exact = time.perf_counter() - t0
    with open(c["prefix"] + ".py-exact.kvtc", "wb") as f:
        f.write(exact_blob)
    return {
        "prefix": c["prefix"],
        "header": {
            "tokens": h.tokens,
            "start_position": h.start_position,
            "sink": h.sink,
            "window": h.window,
            "dtype": h.dtype,
            "profile_id": h.profile_id,
            "sections": h.section_count,
        },
        "seconds": {"decode": t_decode, "encode": t_encode, "encode_bit_exact": t_exact},
    }


def run_error(e, profiles):
    try:
        if e["op"] == "read_profile":
            kvtc.read_profile(e["profile"])
        else:
            profile = profiles.setdefault(e["profile"], kvtc.read_profile(e["profile"]))
            if e["op"] == "decode":
                with open(e["blob"], "rb") as f:
                    blob = f.read()
                kw = {"max_output_bytes": e["max_output_bytes"]} if "max_output_bytes" in e else {}
                kvtc.decode(profile, blob, **kw)
            elif e["op"] == "decode_cuda":
                with open(e["blob"], "rb") as f:
                    kvtc.decode(profile, f.read(), device="cuda")
            else:
                kv = kvtc.read_kv_safetensors(e["kv"])
                layers = [(k.copy(), v.copy()) for k, v in kv.layers]
                if e["op"] == "encode_nan":
                    layers[-1][1][0, -1, 0] = np.nan
                elif e["op"] == "encode_outlier":
                    layers[0][0][0, profile.sink + 1, 0] = 1e4  # a compressed token
                elif e["op"] == "encode_layers":
                    layers = layers[:-1]
                kvtc.encode(profile, layers, kv.start_position)
    except kvtc.KvtcError as err:
        return {"name": e["name"], "raised": True, **err.to_dict()}
    return {"name": e["name"], "raised": False}


def main():
    with open(sys.argv[1]) as f:
        jobs = json.load(f)
    profiles = {}
    try:
        import torch  # noqa: F401

        have_torch = True
    except ImportError:
        have_torch = False
    out = {
        "kvtc_file": kvtc.__file__,
        "version": kvtc.__version__,
        "numpy": np.__version__,
        "torch": have_torch,
        "cases": [run_case(c, profiles) for c in jobs.get("cases", [])],
        "errors": [run_error(e, profiles) for e in jobs.get("errors", [])],
    }
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
