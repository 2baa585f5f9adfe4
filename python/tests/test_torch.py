"""The optional PyTorch path (python/kvtc/_torch.py, and torch tensors as encode input).

torch is an optional extra (`pip install kvtc[torch]`), so these tests run only where it is
importable, and the device="cuda" ones only where torch sees a CUDA device. What needs no torch
(a clear error when it is missing) runs everywhere, by hiding torch from the import system.
"""

import sys

import kvtc
import pytest
from kvtc_testutil import FIXTURES, max_abs_diff

try:
    import torch
except ImportError:
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch is an optional extra (pip install 'kvtc[torch]'); not importable here")
needs_cuda = pytest.mark.skipif(
    torch is None or not torch.cuda.is_available(),
    reason="the device='cuda' path needs torch (an optional extra) with a CUDA device; none here",
)


@pytest.mark.parametrize("call", ["encode", "decode"])
def test_cuda_without_torch_names_what_to_install(profile_v2, cache_f32, blob_v2, monkeypatch, call):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch → ImportError, as where it is not installed
    with pytest.raises(kvtc.KvtcError) as e:
        if call == "encode":
            kvtc.encode(profile_v2, cache_f32.layers, device="cuda")
        else:
            kvtc.decode(profile_v2, blob_v2, device="cuda")
    assert e.value.code == "DEVICE_UNAVAILABLE" and "needs PyTorch, which is not installed" in e.value.message
    assert "pip install torch" in e.value.fix


@needs_torch
def test_torch_cpu_tensors_encode_like_numpy_arrays(profile_v2, cache_f32):
    tensors = [(torch.from_numpy(k.copy()), torch.from_numpy(v.copy())) for k, v in cache_f32.layers]
    assert kvtc.encode(profile_v2, tensors) == kvtc.encode(profile_v2, cache_f32.layers)


@needs_torch
def test_bfloat16_tensors_travel_as_float32(profile_v2, cache_f32):
    bf = [(torch.from_numpy(k.copy()).bfloat16(), torch.from_numpy(v.copy()).bfloat16()) for k, v in cache_f32.layers]
    blob = kvtc.encode(profile_v2, bf)
    assert kvtc.read_blob_header(blob).dtype == "float32"
    as32 = [(k.float().numpy(), v.float().numpy()) for k, v in bf]
    assert blob == kvtc.encode(profile_v2, as32)


@needs_torch
@pytest.mark.skipif(torch is not None and torch.cuda.is_available(), reason="checks the error of a machine without a CUDA device")
def test_cuda_without_a_device(profile_v2, blob_v2):
    with pytest.raises(kvtc.KvtcError) as e:
        kvtc.decode(profile_v2, blob_v2, device="cuda")
    assert e.value.code == "DEVICE_UNAVAILABLE" and "sees no CUDA device" in e.value.message


@needs_cuda
def test_cuda_decode_agrees_with_the_cpu(profile_v2, blob_v2):
    gpu = kvtc.decode(profile_v2, blob_v2, device="cuda")
    assert gpu[0][0].device.type == "cuda"
    cpu = kvtc.decode(profile_v2, blob_v2)
    assert max_abs_diff([(k.cpu().numpy(), v.cpu().numpy()) for k, v in gpu], cpu) <= 3e-5


@needs_cuda
def test_cuda_encode_gives_the_cpu_codes(profile_v2, cache_f32):
    from test_codec import MAX_CODE_MISMATCH, _code_mismatch

    gpu = kvtc.encode(profile_v2, [(torch.from_numpy(k).cuda(), torch.from_numpy(v).cuda()) for k, v in cache_f32.layers], device="cuda")
    diff, total = _code_mismatch(profile_v2, gpu, kvtc.encode(profile_v2, cache_f32.layers))
    assert diff <= MAX_CODE_MISMATCH * total


@needs_cuda
def test_cuda_device_index_out_of_range(profile_v2, blob_v2):
    with pytest.raises(kvtc.KvtcError) as e:
        kvtc.decode(profile_v2, blob_v2, device=f"cuda:{torch.cuda.device_count()}")
    assert e.value.code == "DEVICE_UNAVAILABLE" and "CUDA device(s) are visible" in e.value.message


@needs_cuda
def test_cuda_refuses_per_layer_rope(tmp_path, blob_v2):
    from kvtc_testutil import copy_profile, edit_manifest

    d = copy_profile(tmp_path / "p")
    edit_manifest(
        d,
        lambda m: m["model"].update(
            rope=[{"layers": [0, 1, 2, 3], "theta": 10000, "rotary_dim": 8, "layout": "half"}, {"layers": [4], "none": True}]
        ),
        fix_id=True,
    )
    p = kvtc.read_profile(d)
    with pytest.raises(kvtc.KvtcError) as e:
        kvtc.encode(p, kvtc.read_kv_safetensors(FIXTURES / "cache-f32.safetensors").layers, device="cuda")
    assert e.value.code == "UNSUPPORTED_ARCHITECTURE"
