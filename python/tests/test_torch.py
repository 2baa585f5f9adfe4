"""The PyTorch path (python/kvtc/_torch.py) against the NumPy path and the Node codec.

torch is an optional extra of the package but a test dependency: without it every test here that
needs it FAILS naming the install command (never a skip). device="torch:cpu" runs the torch code on
PyTorch's CPU backend — the same functions as on CUDA — so all of it is checked on any machine; the
device="cuda" cases run only where torch sees a CUDA device and skip elsewhere.

Tolerances (stated once, used throughout):
- decode, torch vs NumPy vs Node, float32 caches: per layer and kind, max |a − b| ≤ 1e-5 · max |b|
  (DECODE_REL: relative to the tensor's largest magnitude; float32 products summed in another order
  than the NumPy path's float64 ones, measured ≲ 7e-7 on every committed profile);
  float16 caches: that, plus one float16 step of b (each side rounds its float32 result to fp16 once).
  Raw (sink and window) tokens: equal, bit for bit.
- encode, torch vs NumPy: at most MAX_CODE_MISMATCH (1e-3) of the codes differ, each by one step
  (a coefficient on a rounding boundary), as between NumPy and Node; torch encode → NumPy decode
  keeps every stored coefficient within its group's quantizer bound (test_codec._bounds_hold).

Profiles: every committed kvtc-profile.json (kvtc-profiles/*, python/tests/fixtures/*,
test/fixtures/*) that the NumPy runtime reads — among them Gemma 3 270M's (local layers θ 10⁴,
global θ 10⁶ in one plan) and profile-v2-rope (NoPE, interleaved partial yarn with an attention
factor, llama3, longrope), whose Node blobs are committed on both sides of longrope's switch.
Caches for profiles without a committed cache are synthetic: per plan μ + V·c with c = z·√variance,
z standard normal, c of static groups clipped into the calibrated range [lo, hi], keys rotated with an independent
RoPE (kvtc_testutil.hf_inv_freq).
"""

from __future__ import annotations

import pathlib
import sys
from typing import Dict, List

import kvtc
import numpy as np
import pytest
from kvtc_testutil import FIXTURES, NODE_CASES, hf_inv_freq, layer_descs, load_manifest, read_blob
from test_codec import MAX_CODE_MISMATCH, PER_LAYER_ROPE, _bounds_hold, _code_mismatch

try:
    import torch
except ImportError:
    torch = None

INSTALL = "python3 -m pip install torch  (CPU build: python3 -m pip install torch --index-url https://download.pytorch.org/whl/cpu)"
DECODE_REL = 1e-5
HAVE_CUDA = torch is not None and torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAVE_CUDA, reason="device='cuda' needs a CUDA device; the same code runs on torch's CPU above")
ROOT = FIXTURES.parents[2]


@pytest.fixture
def tt():
    """torch, or the test fails saying how to install it (a missing test dependency is never a skip)."""
    if torch is None:
        pytest.fail(f"the torch path's tests need PyTorch, which is not importable here; install it: {INSTALL}", pytrace=False)
    return torch


# ------------------------------------------------------------------------------------------------
# Every committed profile the NumPy runtime reads


def _committed() -> List[pathlib.Path]:
    found = sorted(
        {
            m.parent.resolve()
            for pat in (
                "kvtc-profiles/*/kvtc-profile.json",
                "python/tests/fixtures/**/kvtc-profile.json",
                "test/fixtures/**/kvtc-profile.json",
            )
            for m in ROOT.glob(pat)
        }
    )
    readable = []
    for d in found:
        try:
            kvtc.read_profile(d)
        except kvtc.KvtcError:
            continue  # a fixture made to be refused: the NumPy runtime's tests cover it
        readable.append(d)
    return readable


COMMITTED = _committed()
_PROFILES: Dict[pathlib.Path, kvtc.Profile] = {}


def _profile(d: pathlib.Path) -> kvtc.Profile:
    if d not in _PROFILES:
        _PROFILES[d] = kvtc.read_profile(d)
    return _PROFILES[d]


def test_the_committed_profiles_are_all_here():
    """The glob finds what is known to be committed (a moved folder fails here instead of dropping out)."""
    names = {str(d.relative_to(ROOT)) for d in COMMITTED}
    for want in (
        "kvtc-profiles/gemma3-270m",
        "kvtc-profiles/smollm2-135m-instruct",
        "kvtc-profiles/stories260k",
        "python/tests/fixtures/profile-v1",
        "python/tests/fixtures/profile-v2",
        "python/tests/fixtures/profile-v2-rope",
        "test/fixtures/profile-v1",
    ):
        assert want in names
    gemma = _profile(ROOT / "kvtc-profiles/gemma3-270m")
    thetas = {r.theta for r in gemma.layer_ropes}
    assert gemma.rope is None and thetas == {10000, 1000000}  # local and global layers: RoPE per layer
    assert any(len({gemma.layer_ropes[l].theta for l in p.layers}) == 2 for p in gemma.plans if p.kind == "key")  # mixed in one plan
    assert load_manifest(FIXTURES / "profile-v2-rope")["model"]["rope"] == PER_LAYER_ROPE  # the script's copy matches


def _rotate_ref(x: np.ndarray, desc, start: int, seq_len: int) -> np.ndarray:
    """Keys x [H, n, D] (float64) rotated to positions start.. with RoPE `desc` (transformers' formulas)."""
    if desc is None or desc.get("none"):
        return x
    R = int(desc["rotary_dim"])
    ang = (start + np.arange(x.shape[1], dtype=np.float64))[:, None] * hf_inv_freq(desc, seq_len)[None, :]
    f = float(desc.get("attention_factor", 1.0))
    cos, sin = np.cos(ang) * f, np.sin(ang) * f
    i = np.arange(R // 2)
    ia, ib = (i, i + R // 2) if desc["layout"] == "half" else (2 * i, 2 * i + 1)
    out = x.copy()
    a, b = x[..., ia], x[..., ib]
    out[..., ia] = a * cos - b * sin
    out[..., ib] = b * cos + a * sin
    return out


def synthetic_cache(d: pathlib.Path, tokens: int, start: int = 0, seed: int = 0) -> list:
    """A float32 cache the profile was made for: per plan and token, μ + V·c, c = z·√variance with
    z ~ N(0, 1), static groups' c clipped into [lo, hi]; keys then rotated to their positions with each layer's RoPE."""
    p = _profile(d)
    descs = layer_descs(load_manifest(d))
    rng = np.random.default_rng(seed)
    H = p.kv_heads
    out = [[None, None] for _ in range(p.layers)]
    for plan in p.plans:
        V, mu = plan.basis.astype(np.float64), plan.mean.astype(np.float64)
        z = rng.standard_normal((tokens, plan.rank)) * np.sqrt(np.maximum(plan.variances.astype(np.float64), 0))
        # static groups' components inside their calibrated range [lo, hi] (a profile fitted on few
        # tokens has a narrow one), so the quantizer-bound check covers them instead of clipped ones;
        # pulled in by a random factor, so clipped values do not repeat from token to token. Dynamic
        # groups store no range (lo = hi = 0 there) and keep z as drawn.
        static = np.zeros(plan.rank, dtype=bool)
        for g in plan.groups:
            static[g.start : g.end] = g.mode == "static"
        lo, hi = plan.lo.astype(np.float64), plan.hi.astype(np.float64)
        pulled = (lo + hi) / 2 + rng.uniform(0.9, 0.99, z.shape) * (np.clip(z, lo, hi) - (lo + hi) / 2)
        z = np.where(static, pulled, z)
        X = (mu + z @ V.T).reshape(tokens, len(plan.layers), H, p.dims(plan.kind)).transpose(1, 2, 0, 3)  # [nl, H, T, D or Dv]
        for li, l in enumerate(plan.layers):
            x = X[li]
            if plan.kind == "key":
                x = _rotate_ref(x, descs[l], start, start + tokens)
            out[l][0 if plan.kind == "key" else 1] = np.ascontiguousarray(x, dtype=np.float32)
    return [tuple(kv) for kv in out]


def _ids(dirs):
    return [str(d.relative_to(ROOT)) for d in dirs]


def _close(got, want, fp16: bool, what: str) -> None:
    """Per layer and kind: within DECODE_REL of the tensor's largest magnitude (+ one fp16 step)."""
    for l, ((gk, gv), (wk, wv)) in enumerate(zip(got, want)):
        for kind, g, w in (("key", gk, wk), ("value", gv, wv)):
            g = g.cpu().numpy() if hasattr(g, "cpu") else np.asarray(g)
            w = w.cpu().numpy() if hasattr(w, "cpu") else np.asarray(w)
            assert g.shape == w.shape and g.dtype == w.dtype, (what, l, kind)
            g64, w64 = g.astype(np.float64), w.astype(np.float64)
            bound = DECODE_REL * float(np.max(np.abs(w64)))
            if fp16:
                bound = bound + np.spacing(np.abs(w)).astype(np.float64)
            assert np.all(np.abs(g64 - w64) <= bound), f"{what}: layer {l} {kind}s differ by {float(np.max(np.abs(g64 - w64)))}"


# ------------------------------------------------------------------------------------------------
# Node blobs: torch on the CPU vs the NumPy path vs the Node decode

ROPE_CASES = [("v2rope-f32", "profile-v2-rope", "cache-f32"), ("v2rope-f16-150", "profile-v2-rope", "cache-f16-150")]


@pytest.mark.parametrize("case", NODE_CASES + ROPE_CASES, ids=[c[0] for c in NODE_CASES + ROPE_CASES])
@pytest.mark.parametrize("device", ["torch:cpu", "torch.device(cpu)"])
def test_node_blobs_decode_like_numpy_and_node(tt, case, device):
    name, prof, _ = case
    p, blob = _profile((FIXTURES / prof).resolve()), read_blob(name)
    dev = tt.device("cpu") if device == "torch.device(cpu)" else device
    got = kvtc.decode(p, blob, device=dev)
    h = kvtc.read_blob_header(blob)
    assert len(got) == p.layers and all(isinstance(k, tt.Tensor) and k.device.type == "cpu" for k, _ in got)
    assert got[0][0].dtype == (tt.float16 if h.float16 else tt.float32) and tuple(got[0][0].shape) == (p.kv_heads, h.tokens, p.head_dim)
    numpy_dec = kvtc.decode(p, blob)
    _close(got, numpy_dec, h.float16, f"{name}: torch vs NumPy")
    _close(got, kvtc.read_kv_safetensors(FIXTURES / f"{name}.decoded.safetensors").layers, h.float16, f"{name}: torch vs Node")
    s, w, _ = p.split(h.tokens)
    for (k, v), (nk, nv) in zip(got, numpy_dec):  # raw tokens: the stored fp16 values, bit for bit
        for a, b in ((k, nk), (v, nv)):
            np.testing.assert_array_equal(a[:, :s].numpy(), b[:, :s])
            np.testing.assert_array_equal(a[:, h.tokens - w :].numpy(), b[:, h.tokens - w :])


def test_the_rope_fixtures_cover_both_longrope_factor_sets():
    p = _profile((FIXTURES / "profile-v2-rope").resolve())
    switch = p.layer_ropes[4].scaling["original_max_position_embeddings"]
    lens = [kvtc.read_blob_header(read_blob(c[0])).start_position + kvtc.read_blob_header(read_blob(c[0])).tokens for c in ROPE_CASES]
    assert min(lens) <= switch < max(lens)


# ------------------------------------------------------------------------------------------------
# Every committed profile: NumPy-made blobs decoded by torch; torch encode vs NumPy


@pytest.fixture(scope="module", params=COMMITTED, ids=_ids(COMMITTED))
def committed(request):
    """(profile dir, profile, a synthetic cache of 128 compressed tokens from position 0, another from a
    later position: 1000, or as late as the model's context allows)."""
    d = request.param
    p = _profile(d)
    T = p.sink + p.window + 128
    late = _late(p, T)
    return d, p, (0, synthetic_cache(d, T)), (late, synthetic_cache(d, T, start=late, seed=1))


def _late(p, T: int) -> int:
    return min(1000, p.max_positions - T)


def _min_checked(p) -> float:
    """_bounds_hold's least fraction of n·rank coefficients checked: half of those the plans store
    (components inside the rank that the bit allocation dropped are in no group, and a profile
    fitted on few tokens drops many)."""
    return 0.5 * min(sum(g.end - g.start for g in plan.groups) / plan.rank for plan in p.plans if plan.rank > 0)


@pytest.mark.parametrize("late", [False, True], ids=["start-0", "start-late"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_numpy_blobs_of_every_profile_decode_alike(tt, committed, late, dtype):
    d, p, c0, c1 = committed
    start, layers = c1 if late else c0
    if dtype == "float16":
        layers = [(k.astype(np.float16), v.astype(np.float16)) for k, v in layers]
    blob = kvtc.encode(p, layers, start)
    _close(kvtc.decode(p, blob, device="torch:cpu"), kvtc.decode(p, blob), dtype == "float16", f"{d.name} {dtype} from {start}")


@pytest.mark.parametrize("late", [False, True], ids=["start-0", "start-late"])
def test_torch_encode_round_trips_through_numpy_within_the_quantizer_bounds(tt, committed, late):
    d, p, c0, c1 = committed
    start, layers = c1 if late else c0
    tensors = [(tt.from_numpy(k), tt.from_numpy(v)) for k, v in layers]
    mine = kvtc.encode(p, tensors, start, device="torch:cpu")
    ref = kvtc.encode(p, layers, start)
    assert kvtc.read_blob_header(mine) == kvtc.read_blob_header(ref)
    diff, total = _code_mismatch(p, mine, ref)
    assert diff <= MAX_CODE_MISMATCH * total
    _bounds_hold(p, load_manifest(d), layers, mine, start=start, min_checked=_min_checked(p))


def test_per_layer_rope_torch_round_trip_on_the_node_cache(tt):
    """profile-v2-rope with the captured (real) cache, both longrope factor sets: torch encode →
    NumPy decode within the bounds, codes as NumPy's."""
    d = (FIXTURES / "profile-v2-rope").resolve()
    p = _profile(d)
    for cache in ("cache-f32", "cache-f16-150"):
        kv = kvtc.read_kv_safetensors(FIXTURES / f"{cache}.safetensors")
        mine = kvtc.encode(p, kv.layers, device="torch:cpu")
        diff, total = _code_mismatch(p, mine, kvtc.encode(p, kv.layers))
        assert diff <= MAX_CODE_MISMATCH * total
        if kv.dtype == "float32":
            _bounds_hold(p, load_manifest(d), kv.layers, mine, min_checked=0.0)


def test_rank_zero_plans_decode_to_the_mean(tt, tmp_path, cache_f32):
    """A plan that stores nothing decodes every compressed token to μ (re-rotated for keys)."""
    from kvtc_testutil import copy_profile, regroup

    d = copy_profile(tmp_path / "p")
    regroup(d, {0: (0, []), 1: (57, [(0, 57, "int8", "dynamic")])})
    p = kvtc.read_profile(d)
    blob = kvtc.encode(p, cache_f32.layers)
    _close(kvtc.decode(p, blob, device="torch:cpu"), kvtc.decode(p, blob), False, "rank 0 keys")


def test_plans_of_non_consecutive_layers_scatter_per_layer(tt):
    """A plan's layers need not be consecutive (the spec allows any set): _scatter writes each to its
    own layer, converting to the cache's dtype."""
    from kvtc._torch import _scatter

    blk = tt.arange(2 * 3 * 4 * 5, dtype=tt.float32).reshape(2, 3, 4, 5)
    for layers in ([1, 3], [2, 3]):
        dst = tt.zeros((5, 3, 9, 5), dtype=tt.float16)
        _scatter(dst, blk, layers, 2, 6)
        for li, l in enumerate(layers):
            assert tt.equal(dst[l, :, 2:6], blk[li].half())
        assert float(dst.float().abs().sum()) == float(blk.abs().sum())  # nothing else written


def test_bfloat16_and_float16_tensors_encode_on_torch(tt, profile_v2, cache_f32):
    bf = [(tt.from_numpy(k.copy()).bfloat16(), tt.from_numpy(v.copy()).bfloat16()) for k, v in cache_f32.layers]
    blob = kvtc.encode(profile_v2, bf, device="torch:cpu")
    assert kvtc.read_blob_header(blob).dtype == "float32"
    as32 = [(k.float().numpy(), v.float().numpy()) for k, v in bf]
    diff, total = _code_mismatch(profile_v2, blob, kvtc.encode(profile_v2, as32))
    assert diff <= MAX_CODE_MISMATCH * total


def test_a_leading_batch_dimension_of_one_on_torch(tt, profile_v2, cache_f32):
    batched = [(tt.from_numpy(k)[None], tt.from_numpy(v)[None]) for k, v in cache_f32.layers]
    assert kvtc.encode(profile_v2, batched, device="torch:cpu") == kvtc.encode(profile_v2, cache_f32.layers, device="torch:cpu")


def test_torch_encode_refuses_what_numpy_refuses(tt, profile_v2, cache_f32):
    bad = [(k.copy(), v.copy()) for k, v in cache_f32.layers]
    bad[2][1][1, 50, 3] = np.nan
    for device in ("cpu", "torch:cpu"):
        with pytest.raises(kvtc.KvtcError) as e:
            kvtc.encode(profile_v2, [(tt.from_numpy(k), tt.from_numpy(v)) for k, v in bad], device=device)
        assert e.value.code == "KV_INVALID" and "layer 2, head 1, token 50" in e.value.message


# ------------------------------------------------------------------------------------------------
# Format 3: values of their own width (MLA latent: key = k_rot, value = c_kv), a layer subset and a
# shard, with profiles from profile_v3_builder (H3's independent builder of the spec)

V3_CASES = {
    "mla-latent": dict(
        geo=dict(L=3, H=1, D=8, Dv=24),
        rope=[{"layers": [0, 1, 2], "theta": 10000.0, "rotary_dim": 8, "layout": "half"}],
        kw=dict(heads=16, kv_heads=1, head_dim=8, value_head_dim=24, model_extra={"cache": "mla-latent"}),
    ),
    "subset-shard": dict(
        geo=dict(L=3, H=2, D=16, Dv=12),
        rope=[{"layers": [0, 2], "theta": 500000.0, "rotary_dim": 8, "layout": "interleaved"}, {"layers": [1], "none": True}],
        kw=dict(
            heads=8,
            kv_heads=2,
            head_dim=16,
            value_head_dim=12,
            model_extra={"model_layers": 6, "cache_layers": [1, 3, 4]},
            shard={"tp_rank": 1, "tp_size": 2, "pp_rank": 0, "pp_size": 1, "kv_heads": [2, 3]},
            family="qwen3_next",
            kv_dump=False,
        ),
    ),
}
V3_GROUPS = {"key": [(1.0, "int8", "static")], "value": [(0.5, "int8", "static"), (1.0, "int4", "dynamic")]}


@pytest.fixture(scope="module", params=sorted(V3_CASES))
def v3(request, tmp_path_factory):
    """(profile, manifest, the 48-token cache it was calibrated on, from position 0 — a cache of
    the builder's is in distribution only for the profile fitted on it)."""
    from profile_v3_builder import build
    from profile_v3_builder import synthetic_cache as v3_cache

    c = V3_CASES[request.param]
    g = c["geo"]
    rng = np.random.default_rng(23)
    calib = v3_cache(rng, g["L"], g["H"], g["D"], g["Dv"], 48, c["rope"], 0)
    d = tmp_path_factory.mktemp(request.param) / "p"
    m = build(d, [calib], rope=c["rope"], groups=V3_GROUPS, **c["kw"])
    return kvtc.read_profile(d), m, calib


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_format_3_decodes_alike_with_values_of_their_own_width(tt, v3, dtype):
    p, _, cache = v3
    assert p.value_head_dim != p.head_dim
    layers = [(k.astype(dtype), v.astype(dtype)) for k, v in cache]
    blob = kvtc.encode(p, layers)
    got = kvtc.decode(p, blob, device="torch:cpu")
    assert tuple(got[0][0].shape) == (p.kv_heads, 48, p.head_dim) and tuple(got[0][1].shape) == (p.kv_heads, 48, p.value_head_dim)
    _close(got, kvtc.decode(p, blob), dtype == "float16", f"format 3 {dtype}")


def test_format_3_torch_encode_gives_numpys_codes(tt, v3):
    p, _, cache = v3
    mine = kvtc.encode(p, [(tt.from_numpy(k), tt.from_numpy(v)) for k, v in cache], device="torch:cpu")
    ref = kvtc.encode(p, cache)
    assert kvtc.read_blob_header(mine) == kvtc.read_blob_header(ref)
    diff, total = _code_mismatch(p, mine, ref)
    assert total > 0 and diff <= MAX_CODE_MISMATCH * total
    s, w, _ = p.split(48)
    for (k, v), (k0, v0) in zip(kvtc.decode(p, mine), cache):  # the round trip keeps most of the cache
        for x, x0 in ((k, k0), (v, v0)):
            part, part0 = x[:, s : 48 - w].astype(np.float64), x0[:, s : 48 - w].astype(np.float64)
            assert np.linalg.norm(part - part0) / np.linalg.norm(part0) < 0.05


def test_format_3_torch_refuses_values_of_the_key_width(tt, v3):
    p, _, cache = v3
    bad = [(tt.from_numpy(k), tt.from_numpy(k.copy())) for k, _ in cache]
    with pytest.raises(kvtc.KvtcError) as e:
        kvtc.encode(p, bad, device="torch:cpu")
    assert e.value.code == "PROFILE_MISMATCH" and "value_head_dim" in e.value.message


# ------------------------------------------------------------------------------------------------
# Devices and errors


@pytest.mark.parametrize("device", ["torch:cpu", "cuda"])
@pytest.mark.parametrize("call", ["encode", "decode"])
def test_a_torch_device_without_torch_names_what_to_install(profile_v2, cache_f32, blob_v2, monkeypatch, call, device):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch → ImportError, as where it is not installed
    with pytest.raises(kvtc.KvtcError) as e:
        if call == "encode":
            kvtc.encode(profile_v2, cache_f32.layers, device=device)
        else:
            kvtc.decode(profile_v2, blob_v2, device=device)
    assert e.value.code == "DEVICE_UNAVAILABLE" and "needs PyTorch, which is not installed" in e.value.message
    assert "pip install torch" in e.value.fix


@pytest.mark.parametrize("device", ["torch:tpu", "torch:", "torchcpu", "mps"])
def test_unknown_torch_devices(tt, profile_v2, blob_v2, device):
    with pytest.raises(kvtc.KvtcError) as e:
        kvtc.decode(profile_v2, blob_v2, device=device)
    assert e.value.code == "USAGE" and "is not supported" in e.value.message and "torch:cpu" in e.value.message


def test_torch_cpu_spellings_agree(tt, profile_v2, blob_v2):
    a = kvtc.decode(profile_v2, blob_v2, device="torch:cpu")
    b = kvtc.decode(profile_v2, blob_v2, device=tt.device("cpu"))
    assert all(tt.equal(x, y) for (ka, va), (kb, vb) in zip(a, b) for x, y in ((ka, kb), (va, vb)))


@pytest.mark.skipif(HAVE_CUDA, reason="checks the error of a machine without a CUDA device")
@pytest.mark.parametrize("device", ["cuda", "torch:cuda:0"])
def test_cuda_without_a_device(tt, profile_v2, blob_v2, device):
    with pytest.raises(kvtc.KvtcError) as e:
        kvtc.decode(profile_v2, blob_v2, device=device)
    assert e.value.code == "DEVICE_UNAVAILABLE" and "sees no CUDA device" in e.value.message and "torch:cpu" in e.value.fix


# ------------------------------------------------------------------------------------------------
# CUDA (skipped without a CUDA device)


@needs_cuda
def test_cuda_decode_agrees_with_numpy_on_every_profile():
    for d in COMMITTED:
        p = _profile(d)
        blob = kvtc.encode(p, synthetic_cache(d, p.sink + p.window + 128), 0)
        gpu = kvtc.decode(p, blob, device="cuda")
        assert gpu[0][0].device.type == "cuda"
        _close(gpu, kvtc.decode(p, blob), False, f"{d.name} on CUDA")
    for name, prof, _ in NODE_CASES + ROPE_CASES:
        p, blob = _profile((FIXTURES / prof).resolve()), read_blob(name)
        _close(kvtc.decode(p, blob, device="cuda"), kvtc.decode(p, blob), kvtc.read_blob_header(blob).float16, f"{name} on CUDA")


@needs_cuda
def test_cuda_encode_gives_numpys_codes_on_every_profile():
    for d in COMMITTED:
        p = _profile(d)
        T = p.sink + p.window + 128
        start = _late(p, T)
        layers = synthetic_cache(d, T, start=start)
        gpu = kvtc.encode(p, [(torch.from_numpy(k).cuda(), torch.from_numpy(v).cuda()) for k, v in layers], start, device="cuda")
        diff, total = _code_mismatch(p, gpu, kvtc.encode(p, layers, start))
        assert diff <= MAX_CODE_MISMATCH * total
        _bounds_hold(p, load_manifest(d), layers, gpu, start=start, min_checked=_min_checked(p))


@needs_cuda
def test_cuda_device_index_out_of_range(profile_v2, blob_v2):
    with pytest.raises(kvtc.KvtcError) as e:
        kvtc.decode(profile_v2, blob_v2, device=f"cuda:{torch.cuda.device_count()}")
    assert e.value.code == "DEVICE_UNAVAILABLE" and "CUDA device(s) are visible" in e.value.message
