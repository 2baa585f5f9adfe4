#!/usr/bin/env python3
"""Writes test/fixtures/gguf/quants.json: random ggml blocks per type and their float32 values as
dequantized by llama.cpp's gguf-py (gguf.quants.dequantize), an implementation independent of
kvtc's src/gguf/quants.ts. test/gguf/quants.test.ts asserts kvtc gives the same floats bit for bit.

Blocks are random bytes with their fp16 scale fields set to random finite halves (normal, subnormal,
zero, negative), so every packed bit position is exercised with meaningful scales; the last block of
each type is left fully random (it may hold inf/NaN scales: the comparison treats NaN as equal to
NaN). For the types gguf-py can quantize, extra blocks quantize Gaussian data, as real files hold.

Run (needs numpy and gguf; not a kvtc dependency):
    python scripts/gguf-quant-fixtures.py            # writes test/fixtures/gguf/quants.json
"""

import base64
import json
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np
from gguf.constants import GGML_QUANT_SIZES
from gguf.constants import GGMLQuantizationType as T
from gguf.quants import dequantize, quantize

SEED = 20240619
OUT = Path(__file__).resolve().parent.parent / "test" / "fixtures" / "gguf" / "quants.json"

# Byte offsets of the fp16 scale/min fields inside one block (ggml-common.h).
HALF_FIELDS = {
    "Q4_0": [0],
    "Q4_1": [0, 2],
    "Q5_0": [0],
    "Q5_1": [0, 2],
    "Q8_0": [0],
    "Q2_K": [80, 82],
    "Q3_K": [108],
    "Q4_K": [0, 2],
    "Q5_K": [0, 2],
    "Q6_K": [208],
}
BLOCKS = {"F16": 64, "BF16": 64, "F32": 32}
QUANTIZABLE = {"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "BF16"}


def random_half(rng: np.random.Generator) -> np.ndarray:
    kind = rng.integers(0, 10)
    if kind == 0:
        v = 0.0
    elif kind == 1:
        v = rng.uniform(-1, 1) * 2.0**-20  # subnormal half
    else:
        v = rng.choice([-1, 1]) * 10 ** rng.uniform(-5, 2)
    return np.array([v], dtype=np.float16).view(np.uint8)


def blocks_for(name: str, rng: np.random.Generator) -> np.ndarray:
    qtype = T[name]
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    n = BLOCKS.get(name, 8 if block_size == 32 else 4)
    raw = rng.integers(0, 256, size=(n, type_size), dtype=np.uint8)
    for b in range(n - 1):  # the last block stays fully random
        for off in HALF_FIELDS.get(name, []):
            raw[b, off : off + 2] = random_half(rng)
    if name in ("F16", "BF16", "F32"):
        # mostly ordinary finite values, plus the random bit patterns above (inf, NaN, subnormals)
        vals = (rng.standard_normal(n * block_size // 2) * 10 ** rng.uniform(-3, 3)).astype(np.float32)
        dt = {"F16": np.float16, "BF16": None, "F32": np.float32}[name]
        enc = quantize(vals, T.BF16) if dt is None else vals.astype(dt).view(np.uint8)
        raw.reshape(-1)[: enc.size] = enc.reshape(-1)
    if name in QUANTIZABLE and name != "BF16":
        x = (rng.standard_normal((4, block_size)) * 0.05).astype(np.float32)
        raw = np.concatenate([raw, quantize(x, qtype).reshape(4, type_size)], axis=0)
    return raw


def main() -> int:
    rng = np.random.default_rng(SEED)
    types = {}
    for name in ["F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]:
        raw = blocks_for(name, rng)
        block_size, type_size = GGML_QUANT_SIZES[T[name]]
        elements = raw.size // type_size * block_size
        # one row: gguf-py dequantizes the last axis (bytes) into elements
        with np.errstate(all="ignore"):
            floats = dequantize(raw.reshape(1, -1), T[name]).astype(np.float32).reshape(-1)
        assert floats.size == elements, (name, floats.size, elements)
        types[name] = {
            "elements": int(elements),
            "bytes": base64.b64encode(raw.tobytes()).decode(),
            "floats": base64.b64encode(floats.astype("<f4").tobytes()).decode(),
        }
    doc = {
        "generator": f"scripts/gguf-quant-fixtures.py seed {SEED}, gguf {version('gguf')}, numpy {np.__version__}",
        "types": types,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes, {len(types)} types)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
