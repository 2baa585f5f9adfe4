"""KV safetensors files for format-3 caches: values of their own width, BF16 dumps read as float32,
files named by model layer (a KV dump's sequence files, docs/kv-dumps.md §3)."""

from __future__ import annotations

import kvtc
import numpy as np
import pytest
from kvtc_testutil import raw_tensor_file


def _file(tensors, dtype="BF16", meta=None):
    """A safetensors file from {name: uint16 bits or float arrays}, written by hand (not by kvtc)."""
    header = {"__metadata__": meta or {"format": "pt"}}
    parts, at = [], 0
    for name, a in tensors.items():
        b = np.ascontiguousarray(a).tobytes()
        header[name] = {"dtype": dtype, "shape": list(a.shape), "data_offsets": [at, at + len(b)]}
        parts.append(b)
        at += len(b)
    return raw_tensor_file(header, b"".join(parts))


def test_bf16_read_exactly_as_float32():
    rng = np.random.default_rng(3)
    k = rng.standard_normal((1, 1, 5, 8)).astype(np.float32)
    v = rng.standard_normal((1, 1, 5, 24)).astype(np.float32)
    # bf16 = the top 16 bits of a float32 (truncated here; the file's values are whatever they hold)
    kb = (k.view(np.uint32) >> 16).astype("<u2")
    vb = (v.view(np.uint32) >> 16).astype("<u2")
    kv = kvtc.parse_kv_safetensors(_file({"present.0.key": kb, "present.0.value": vb}), "d.safetensors")
    assert kv.dtype == "float32" and kv.head_dim == 8 and kv.value_head_dim == 24
    want_k = (k.view(np.uint32) & 0xFFFF0000).view(np.float32)[0]
    want_v = (v.view(np.uint32) & 0xFFFF0000).view(np.float32)[0]
    np.testing.assert_array_equal(kv.layers[0][0], want_k)
    np.testing.assert_array_equal(kv.layers[0][1], want_v)
    assert np.max(np.abs(kv.layers[0][1] - v[0])) <= 2.0**-7 * np.max(np.abs(v))


def test_bf16_non_finite_refused():
    bits = np.zeros((1, 1, 2, 4), dtype="<u2")
    bits[0, 0, 1, 2] = 0x7FC0  # bf16 NaN
    with pytest.raises(kvtc.KvtcError) as e:
        kvtc.parse_kv_safetensors(_file({"present.0.key": bits, "present.0.value": np.zeros((1, 1, 2, 4), "<u2")}), "d")
    assert e.value.code == "KV_INVALID" and "present.0.key has a non-finite value (nan) at head 0, token 1, dim 2" in e.value.message


def test_value_width_round_trip_and_metadata(tmp_path):
    rng = np.random.default_rng(4)
    layers = [(rng.standard_normal((2, 6, 16)).astype(np.float16), rng.standard_normal((2, 6, 12)).astype(np.float16)) for _ in range(3)]
    path = tmp_path / "kv.safetensors"
    kvtc.write_kv_safetensors(path, layers, 9)
    kv = kvtc.read_kv_safetensors(path)
    assert (kv.dtype, kv.head_dim, kv.value_head_dim, kv.start_position) == ("float16", 16, 12, 9)
    assert kv.metadata["head_dim"] == "16" and kv.metadata["value_head_dim"] == "12" and kv.metadata["layers"] == "3"
    for (k, v), (k0, v0) in zip(kv.layers, layers):
        np.testing.assert_array_equal(k, k0)
        np.testing.assert_array_equal(v, v0)
    same = [(k, k) for k, _ in layers]
    kvtc.write_kv_safetensors(path, same)
    assert "value_head_dim" not in kvtc.read_kv_safetensors(path).metadata  # written only when it differs, as kvtc does


@pytest.mark.parametrize(
    "layers,words",
    [
        (
            [((2, 6, 16), (2, 6, 12)), ((2, 6, 16), (2, 6, 8))],
            "layer 1 values have shape [2, 6, 8]; expected [kv_heads, tokens, value_head_dim] like layer 0 values ([2, 6, 12])",
        ),
        ([((2, 6, 16), (2, 5, 12))], "layer 0 values have shape [2, 5, 12]"),
        ([((2, 6, 16), (1, 6, 12))], "the same kv_heads and tokens as its keys ([2, 6])"),
    ],
)
def test_inconsistent_shapes_refused_on_write(layers, words):
    arrays = [(np.zeros(k, np.float32), np.zeros(v, np.float32)) for k, v in layers]
    with pytest.raises(kvtc.KvtcError) as e:
        kvtc.serialize_kv_safetensors(arrays)
    assert e.value.code == "KV_INVALID" and words in e.value.message


def test_inconsistent_value_shapes_refused_on_read():
    z = np.zeros((1, 2, 3, 4), np.float32)
    data = _file(
        {"present.0.key": z, "present.0.value": np.zeros((1, 2, 3, 6), np.float32), "present.1.key": z, "present.1.value": z}, "F32"
    )
    with pytest.raises(kvtc.KvtcError) as e:
        kvtc.parse_kv_safetensors(data, "kv")
    assert "present.1.value has shape [1, 2, 3, 4], expected [1, 2, 3, 6]" in e.value.message


def test_layer_ids(tmp_path):
    layers = [(np.full((1, 2, 4), l, np.float32), np.full((1, 2, 6), -l, np.float32)) for l in range(3)]
    data = kvtc.serialize_kv_safetensors(layers, layer_ids=[2, 5, 7])
    kv = kvtc.parse_kv_safetensors(data, "d", layer_ids=[2, 5, 7])
    assert [float(k[0, 0, 0]) for k, _ in kv.layers] == [0, 1, 2]
    sub = kvtc.parse_kv_safetensors(data, "d", layer_ids=[5, 7])  # a pipeline stage's share of the file
    assert [float(v[0, 0, 0]) for _, v in sub.layers] == [-1, -2]
    for ids, words in (([5, 2], "strictly increasing"), ([-1], "non-negative"), ([], "strictly increasing")):
        with pytest.raises(kvtc.KvtcError) as e:
            kvtc.parse_kv_safetensors(data, "d", layer_ids=ids)
        assert e.value.code == "USAGE" and words in e.value.message
    with pytest.raises(kvtc.KvtcError) as e:
        kvtc.serialize_kv_safetensors(layers, layer_ids=[1, 2])
    assert e.value.code == "USAGE" and "layer_ids names 2 layers but the cache has 3" in e.value.message


def test_cache_layers_read_either_naming():
    # A format-3 profile's cache layers (1, 3): a KV dump names them by model layer, kvtc decode
    # writes them in the profile's order; both read the same cache. A whole-model file gives a
    # pipeline stage its layers; a file with neither naming is refused, saying both.
    layers = [(np.full((1, 2, 4), l, np.float32), np.full((1, 2, 6), -l, np.float32)) for l in range(2)]
    by_model = kvtc.serialize_kv_safetensors(layers, layer_ids=[1, 3])
    in_order = kvtc.serialize_kv_safetensors(layers)
    for data in (by_model, in_order):
        kv = kvtc.parse_kv_safetensors(data, "f", cache_layers=[1, 3])
        assert [float(k[0, 0, 0]) for k, _ in kv.layers] == [0, 1]
    whole = kvtc.serialize_kv_safetensors([layers[0]] * 4, layer_ids=[0, 1, 2, 3])
    assert len(kvtc.parse_kv_safetensors(whole, "w", cache_layers=[1, 3]).layers) == 2
    odd = kvtc.serialize_kv_safetensors(layers, layer_ids=[0, 2])
    with pytest.raises(kvtc.KvtcError) as e:
        kvtc.parse_kv_safetensors(odd, "odd", cache_layers=[1, 3])
    assert e.value.code == "KV_INVALID" and "present.{0,2}" in e.value.message and "model layers [1, 3]" in e.value.message
