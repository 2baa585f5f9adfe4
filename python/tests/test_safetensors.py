"""The safetensors parser and writer (python/kvtc/_safetensors.py) and kvtc's KV cache layout on
top of it (python/kvtc/kvfile.py): committed Node files read, round trips, every refusal."""

import json
import os
import struct

import kvtc
import numpy as np
import pytest
from kvtc import _safetensors as st
from kvtc.kvfile import parse_kv_safetensors, serialize_kv_safetensors, write_kv_safetensors
from kvtc_testutil import FIXTURES, raw_tensor_file


def test_node_cache_reads_with_its_metadata(cache_f32, cache_f16):
    for c, dtype in ((cache_f32, np.float32), (cache_f16, np.float16)):
        assert (c.tokens, c.kv_heads, c.head_dim, c.start_position, len(c.layers)) == (256, 4, 8, 0, 5)
        assert c.layers[0][0].dtype == dtype
        assert c.metadata["model"] == "stories260k" and c.metadata["producer"] == "kvtc" and c.metadata["format"] == "pt"
    # the float16 fixture is the float32 cache rounded to nearest even
    for (k32, v32), (k16, v16) in zip(cache_f32.layers, cache_f16.layers):
        np.testing.assert_array_equal(k32.astype(np.float16), k16)
        np.testing.assert_array_equal(v32.astype(np.float16), v16)


def test_parse_checks_every_offset_and_size():
    buf = (FIXTURES / "cache-f32.safetensors").read_bytes()
    tensors, meta = st.parse(buf, "cache")
    assert sorted(tensors) == sorted(f"present.{l}.{k}" for l in range(5) for k in ("key", "value"))
    t = tensors["present.3.value"]
    assert (t.dtype, t.shape, t.nbytes) == ("F32", (1, 4, 256, 8), 4 * 4 * 256 * 8)
    assert meta["tokens"] == "256"
    a = st.array(buf, t)
    assert not a.flags.writeable and a.dtype == np.dtype("<f4")


@pytest.mark.parametrize(
    "dtype",
    [np.float16, np.float32, np.float64, np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64, np.bool_],
)
def test_serialize_round_trips_every_dtype(dtype):
    rng = np.random.default_rng(0)
    a = (rng.standard_normal((3, 5)) * 10).astype(dtype)
    b = np.zeros((0, 2), dtype=dtype)
    data = st.serialize({"b": b, "a": a}, {"note": "x"})
    n = struct.unpack_from("<Q", data, 0)[0]
    assert n % 8 == 0 and data[8 : 8 + n].rstrip(b" ").endswith(b"}")  # padded with spaces to a multiple of 8
    header = json.loads(data[8 : 8 + n])
    assert header["__metadata__"] == {"format": "pt", "note": "x"}
    assert header["a"]["data_offsets"] == [0, a.nbytes]  # names sorted, contiguous
    tensors, _ = st.parse(data)
    np.testing.assert_array_equal(st.array(data, tensors["a"]).view(a.dtype) if dtype == np.bool_ else st.array(data, tensors["a"]), a)
    assert st.array(data, tensors["b"]).shape == (0, 2)


def test_serialize_refuses_what_safetensors_cannot_hold():
    with pytest.raises(kvtc.KvtcError) as e:
        st.serialize({"c": np.zeros(2, dtype=np.complex64)})
    assert e.value.code == "SAFETENSORS_INVALID" and "safetensors cannot hold" in e.value.message


def test_big_endian_arrays_are_written_little_endian():
    a = np.arange(4, dtype=">f4")
    data = st.serialize({"a": a})
    t, _ = st.parse(data)
    np.testing.assert_array_equal(st.array(data, t["a"]), a)


def _entry(**kw):
    e = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
    e.update(kw)
    return {"t": e}


PARSE_REFUSALS = [
    ("short", b"\0" * 7, "only 7 bytes, shorter than the 8-byte header length"),
    ("header-too-long", struct.pack("<Q", 100) + b"{}", "header length 100 does not fit in a file of 10 bytes"),
    ("header-over-limit", struct.pack("<Q", st.MAX_HEADER_BYTES + 1), "header length 104857601 does not fit"),
    ("not-json", struct.pack("<Q", 4) + b"{{{{", "header is not valid UTF-8 JSON"),
    ("not-utf8", struct.pack("<Q", 4) + b"\xff\xfe{}", "header is not valid UTF-8 JSON"),
    ("not-object", raw_tensor_file([], b""), "header is not a JSON object"),  # type: ignore[arg-type]
    ("dtype", raw_tensor_file(_entry(dtype="F8"), b"\0" * 8), 'tensor "t" has unknown dtype "F8"'),
    ("entry-not-object", raw_tensor_file({"t": 3}, b""), 'tensor "t" has unknown dtype null'),
    ("shape", raw_tensor_file(_entry(shape=[-2]), b"\0" * 8), 'tensor "t" has an invalid shape'),
    ("shape-bool", raw_tensor_file(_entry(shape=[True]), b"\0" * 8), 'tensor "t" has an invalid shape'),
    ("offsets-type", raw_tensor_file(_entry(data_offsets=[0]), b"\0" * 8), 'tensor "t" has invalid data_offsets'),
    (
        "offsets-outside",
        raw_tensor_file(_entry(data_offsets=[0, 16]), b"\0" * 8),
        "data_offsets [0, 16] fall outside the 8-byte data buffer",
    ),
    ("offsets-reversed", raw_tensor_file(_entry(data_offsets=[8, 0]), b"\0" * 8), "data_offsets [8, 0] fall outside"),
    ("size-vs-shape", raw_tensor_file(_entry(shape=[3]), b"\0" * 8), 'tensor "t" has 8 bytes but shape [3] of F32 needs 12'),
]


@pytest.mark.parametrize("name,data,words", PARSE_REFUSALS, ids=[r[0] for r in PARSE_REFUSALS])
def test_parse_refusal(name, data, words):
    with pytest.raises(kvtc.KvtcError) as e:
        st.parse(data, "f.safetensors")
    assert e.value.code == "SAFETENSORS_INVALID" and words in e.value.message
    assert e.value.message.startswith("f.safetensors: ") and e.value.fix


def test_parse_is_lenient_about_metadata_and_padding():
    data = raw_tensor_file({"__metadata__": {"n": 1}, **_entry()}, b"\0" * 8, pad=False)
    tensors, meta = st.parse(data)
    assert meta == {"n": "1"} and "t" in tensors


# ------------------------------------------------------------------------------------------------
# kvtc's KV cache layout


def test_kv_round_trip_keeps_values_and_metadata(cache_f32, tmp_path):
    path = tmp_path / "kv.safetensors"
    n = write_kv_safetensors(path, cache_f32.layers, 17, metadata={"model": "m", "fingerprint": "f", "note": "x"})
    assert n == os.path.getsize(path)
    back = kvtc.read_kv_safetensors(path)
    assert back.start_position == 17 and back.dtype == "float32"
    assert back.metadata["model"] == "m" and back.metadata["producer"] == "kvtc-python" and back.metadata["layers"] == "5"
    assert list(back.metadata)[-2:] == ["model", "fingerprint"]  # written last, as kvtc does
    for (a, b), (c, d) in zip(back.layers, cache_f32.layers):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, d)
    assert not [f for f in os.listdir(tmp_path) if ".tmp-" in f]  # written atomically


def test_kv_written_as_float16(cache_f32):
    back = parse_kv_safetensors(serialize_kv_safetensors(cache_f32.layers, dtype="float16"))
    assert back.dtype == "float16"
    np.testing.assert_array_equal(back.layers[0][0], cache_f32.layers[0][0].astype(np.float16))


def test_kv_write_refuses_an_existing_file_without_force(cache_f32, tmp_path):
    (tmp_path / "kv").write_bytes(b"old")
    with pytest.raises(kvtc.KvtcError) as e:
        write_kv_safetensors(tmp_path / "kv", cache_f32.layers, force=False)
    assert e.value.code == "OUTPUT_EXISTS" and (tmp_path / "kv").read_bytes() == b"old"


def test_kv_write_into_a_missing_directory(cache_f32, tmp_path):
    with pytest.raises(kvtc.KvtcError) as e:
        write_kv_safetensors(tmp_path / "no" / "kv", cache_f32.layers)
    assert e.value.code == "OUTPUT_UNWRITABLE"


@pytest.mark.parametrize(
    "layers,dtype,words",
    [
        ([], None, "the cache has no layers"),
        ([(np.zeros((4, 2)), np.zeros((4, 2)))], None, "layer 0 keys have shape [4, 2]"),
        ([(np.zeros((4, 2, 8), np.float32), np.zeros((4, 3, 8), np.float32))], None, "layer 0 values have shape [4, 3, 8]"),
        ([(np.zeros((4, 2, 8), np.int32),) * 2], None, "layer 0 keys are int32"),
        ([(np.zeros((4, 2, 8), np.float32),) * 2], "bfloat16", "layer 0 keys are bfloat16"),
    ],
)
def test_kv_serialize_refusals(layers, dtype, words):
    with pytest.raises(kvtc.KvtcError) as e:
        serialize_kv_safetensors(layers, dtype=dtype)
    assert e.value.code == "KV_INVALID" and words in e.value.message


def _kv(tensors, meta=None):
    return st.serialize(tensors, meta)


Z = np.zeros((1, 2, 3, 4), np.float32)
KV_REFUSALS = [
    ("no-layers", {"other": Z}, None, "no tensor named present.0.key"),
    (
        "rank",
        {"present.0.key": Z[0], "present.0.value": Z[0]},
        None,
        "present.0.key has shape [2, 3, 4]; expected [1, kv_heads, tokens, head_dim]",
    ),
    ("dtype", {"present.0.key": Z.astype(np.int32), "present.0.value": Z}, None, "present.0.key is I32; expected F16 or F32"),
    ("value-missing", {"present.0.key": Z}, None, "missing present.0.value"),
    ("mixed-dtype", {"present.0.key": Z, "present.0.value": Z.astype(np.float16)}, None, "present.0.value is F16 but present.0.key is F32"),
    (
        "mixed-shape",
        {"present.0.key": Z, "present.0.value": Z[:, :1]},
        None,
        "present.0.value has shape [1, 1, 3, 4], expected [1, 2, 3, 4]",
    ),
    (
        "non-finite",
        {"present.0.key": Z, "present.0.value": np.where(np.arange(24).reshape(Z.shape) == 13, np.inf, Z).astype(np.float32)},
        None,
        "present.0.value has a non-finite value (inf) at head 1, token 0, dim 1",
    ),
    ("orphan-value", {"present.0.key": Z, "present.0.value": Z, "present.1.value": Z}, None, "present.1.value has no matching key"),
    ("layers-metadata", {"present.0.key": Z, "present.0.value": Z}, {"layers": "2"}, "metadata says 2 layers but the file has 1"),
    (
        "start-position",
        {"present.0.key": Z, "present.0.value": Z},
        {"start_position": "-3"},
        'metadata start_position "-3" is not a non-negative integer',
    ),
    ("start-position-huge", {"present.0.key": Z, "present.0.value": Z}, {"start_position": str(2**32)}, "is not a non-negative integer"),
]


@pytest.mark.parametrize("name,tensors,meta,words", KV_REFUSALS, ids=[r[0] for r in KV_REFUSALS])
def test_kv_parse_refusal(name, tensors, meta, words):
    with pytest.raises(kvtc.KvtcError) as e:
        parse_kv_safetensors(_kv(tensors, meta), "kv.safetensors")
    assert e.value.code == "KV_INVALID" and words in e.value.message and e.value.message.startswith("kv.safetensors: ")


def test_kv_file_that_cannot_be_read(tmp_path):
    with pytest.raises(kvtc.KvtcError) as e:
        kvtc.read_kv_safetensors(tmp_path / "missing.safetensors")
    assert e.value.code == "SAFETENSORS_INVALID" and "cannot read" in e.value.message


def test_truncated_kv_file():
    data = (FIXTURES / "cache-f32.safetensors").read_bytes()
    with pytest.raises(kvtc.KvtcError) as e:
        parse_kv_safetensors(data[:-1000], "kv")
    assert e.value.code == "SAFETENSORS_INVALID" and "fall outside" in e.value.message
