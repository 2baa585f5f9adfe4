"""The one safetensors parser's strict mode (kvtc/_safetensors.py ``Strict``), which profiles are read
with: what lenient mode accepts but a file kvtc specifies must not hold, with the reader's words."""

import struct

import kvtc
import numpy as np
import pytest
from kvtc import _safetensors as st
from kvtc_testutil import raw_tensor_file

TWO = np.array([7, 8], dtype="<f4").tobytes()
STRICT = st.Strict(max_header_bytes=4096, dtypes=("F32",))


def _e(begin, end, shape=None, **extra):
    return {"dtype": "F32", "shape": shape if shape is not None else [(end - begin) // 4], "data_offsets": [begin, end], **extra}


def test_accepts_what_the_writer_writes_and_reads_the_same_tensors_as_lenient_mode():
    data = st.serialize({"a": np.array([1, 2], np.float32), "b": np.array([3], np.float32)})
    strict, meta = st.parse(data, "f", STRICT)
    assert (strict, meta) == st.parse(data, "f")
    assert st.array(data, strict["b"]).tolist() == [3.0]


STRICT_REFUSALS = [
    ("unpadded-header", raw_tensor_file({"a": _e(0, 8)}, TWO, pad=False), "is not a multiple of 8"),
    ("header-over-bound", raw_tensor_file({"__metadata__": {"x": "y" * 5000}}, b""), "header at most 4096"),
    ("extra-entry-key", raw_tensor_file({"a": _e(0, 8, note=1)}, TWO), "tensor a: entry must be exactly {dtype, shape, data_offsets}"),
    ("metadata-not-strings", raw_tensor_file({"__metadata__": {"n": 3}, "a": _e(0, 8)}, TWO), "__metadata__ is not an object of strings"),
    ("dtype-not-allowed", raw_tensor_file({"a": {**_e(0, 8), "dtype": "I32"}}, TWO), 'tensor a has dtype "I32", expected F32'),
    (
        "gap",
        raw_tensor_file({"a": _e(4, 8)}, TWO),
        "tensor a starts at data offset 4, but the previous tensor ends at 0 (the data must be contiguous)",
    ),
    ("trailing-bytes", raw_tensor_file({"a": _e(0, 4)}, TWO), "4 bytes after the last tensor's data"),
]


@pytest.mark.parametrize("name,data,words", STRICT_REFUSALS, ids=[r[0] for r in STRICT_REFUSALS])
def test_strict_refusal(name, data, words):
    with pytest.raises(kvtc.KvtcError) as e:
        st.parse(data, "f.safetensors", STRICT)
    assert e.value.code == "SAFETENSORS_INVALID" and words in e.value.message
    if name != "header-over-bound":
        st.parse(data, "f.safetensors")  # lenient mode reads it


def test_expected_tensors_are_exact_and_errors_come_from_the_caller():
    data = raw_tensor_file({"a": _e(0, 8)}, TWO)

    def error(msg):
        return ValueError(msg)

    with pytest.raises(ValueError, match="tensor b is missing"):
        st.parse(data, "f", st.Strict(4096, ("F32",), {"a": (2,), "b": (1,)}), error=error)
    with pytest.raises(ValueError, match=r"tensor a has shape \[2\], the plan declares \[1, 2\]"):
        st.parse(data, "f", st.Strict(4096, ("F32",), {"a": (1, 2)}), error=error)
    with pytest.raises(ValueError, match="tensor a is not used by any plan"):
        st.parse(data, "f", st.Strict(4096, ("F32",), {}), error=error)
    assert struct.unpack_from("<Q", data, 0)[0] % 8 == 0
