"""encode / decode (python/kvtc/codec.py) against kvtc's Node codec and against the format's own bounds.

What is compared how (NumPy's BLAS and ONNX Runtime give different last bits on different CPUs):
- Python's decode of a committed Node blob vs the committed Node decode: float32 within DECODE_ATOL;
  float16 within one fp16 step; raw (sink/window) tokens identical.
- Python's encode of the committed cache vs the committed Node blob: integer codes compared, at most
  MAX_CODE_MISMATCH of them may differ and then by one step (a coefficient on a rounding boundary);
  the raw section, the header and re-assembling Node's sections are pure integer / IEEE rounding
  work, so those are byte for byte.
- Python encode → Python decode: per stored component, the coefficient error is within the bound
  its group's quantizer guarantees, with the coefficients computed independently (float64, RoPE
  from transformers' formulas in kvtc_testutil) — on profiles covering every group type and mode,
  rank-0 plans and per-layer RoPE (none, interleaved, partial, attention factor, linear, llama3,
  yarn, longrope).
"""

import kvtc
import numpy as np
import pytest
from kvtc import _quant as q
from kvtc import blob as kb
from kvtc.debug import plan_codes
from kvtc_testutil import (
    FIXTURES,
    NODE_CASES,
    copy_profile,
    edit_manifest,
    layer_descs,
    load_manifest,
    max_abs_diff,
    plan_features,
    read_blob,
    regroup,
    relative_errors,
)
from test_blob import sections_of

#: |Python decode − Node decode| before the output dtype: about 16 float32 ulps at the largest
#: |x| ≈ 28 of these caches (measured 9.5e-6 here; Python reconstructs in float64, Node in float32,
#: from the same codes). float16 outputs may differ by this plus one fp16 step.
DECODE_ATOL = 3e-5
#: Fraction of integer codes that may differ between Python's and Node's encode of the same cache.
MAX_CODE_MISMATCH = 1e-3


def _node(case):
    name, prof, cache = case
    return (
        kvtc.read_profile(FIXTURES / prof),
        read_blob(name),
        kvtc.read_kv_safetensors(FIXTURES / f"{name}.decoded.safetensors"),
        kvtc.read_kv_safetensors(FIXTURES / f"{cache}.safetensors"),
    )


@pytest.fixture(scope="module", params=NODE_CASES, ids=[c[0] for c in NODE_CASES])
def node_case(request):
    return _node(request.param)


# ------------------------------------------------------------------------------------------------
# Against the committed Node files


def test_decode_of_a_node_blob_agrees_with_the_node_decode(node_case):
    profile, blob, node_dec, cache = node_case
    got = kvtc.decode(profile, blob)
    assert len(got) == profile.layers
    want_dtype = np.float16 if cache.dtype == "float16" else np.float32
    s, w, n = profile.split(cache.tokens)
    for (k, v), (nk, nv) in zip(got, node_dec.layers):
        for a, b in ((k, nk), (v, nv)):
            assert a.dtype == want_dtype and a.shape == b.shape == (4, 256, 8)
            np.testing.assert_array_equal(a[:, :s], b[:, :s])  # raw tokens: the same fp16 values
            np.testing.assert_array_equal(a[:, cache.tokens - w :], b[:, cache.tokens - w :])
            a64, b64 = a.astype(np.float64), b.astype(np.float64)
            if a.dtype == np.float16:  # float32 reconstructions DECODE_ATOL apart, then each rounded to fp16 (one step)
                assert np.all(np.abs(a64 - b64) <= DECODE_ATOL + np.spacing(np.abs(b)).astype(np.float64))
            else:
                assert np.max(np.abs(a64 - b64)) <= DECODE_ATOL


def test_raw_tokens_are_the_cache_rounded_to_fp16(node_case):
    profile, blob, _, cache = node_case
    s, w, _ = profile.split(cache.tokens)
    for (k, v), (ck, cv) in zip(kvtc.decode(profile, blob), cache.layers):
        for a, c in ((k, ck), (v, cv)):
            for sl in (slice(0, s), slice(cache.tokens - w, None)):
                np.testing.assert_array_equal(a[:, sl].astype(np.float32), c[:, sl].astype(np.float16).astype(np.float32))


def _code_mismatch(profile, a, b):
    ca, cb = plan_codes(profile, a), plan_codes(profile, b)
    assert ca.keys() == cb.keys()
    diff = total = 0
    for i in ca:
        for ga, gb in zip(ca[i], cb[i]):
            total += ga.codes.size
            d = ga.codes != gb.codes
            diff += int(d.sum())
            if ga.type != "fp8" and d.any():  # int codes one step apart at most
                assert np.max(np.abs(ga.codes.astype(int) - gb.codes.astype(int))) == 1
            if ga.offsets is not None:
                diff += int((ga.offsets != gb.offsets).sum() + (ga.scales != gb.scales).sum())
    return diff, total


@pytest.mark.parametrize("bit_exact", [False, True], ids=["float64-projection", "bit-exact"])
def test_encode_of_the_committed_cache_gives_nodes_codes(node_case, bit_exact):
    profile, blob, _, cache = node_case
    mine = kvtc.encode(profile, cache.layers, cache.start_position, bit_exact=bit_exact)
    diff, total = _code_mismatch(profile, mine, blob)
    assert total > 10_000 and diff <= MAX_CODE_MISMATCH * total
    h, hn = kvtc.read_blob_header(mine), kvtc.read_blob_header(blob)
    assert h == hn  # every header field is integer work on the same inputs
    raw, raw_node = sections_of(mine)[0], sections_of(blob)[0]
    assert raw[:3] == raw_node[:3] and raw[4] == raw_node[4]  # raw section byte for byte (fp32 → fp16, round to nearest even)


def test_repacking_nodes_codes_gives_nodes_payload(node_case):
    """Bit packing and the payload layout are integer work: Node's codes, packed by Python, are
    Node's inflated payload byte for byte; and Python's DEFLATE of it inflates back to it."""
    profile, blob, _, _ = node_case
    import zlib

    secs = sections_of(blob)
    for s in secs[1:]:
        plan = profile.plans[s[2]]
        payload = s[3] if s[1] == kb.CODEC_STORED else zlib.decompress(s[3], -15)
        groups = plan_codes(profile, blob)[plan.index]
        packed = b"".join(q.pack(np.ascontiguousarray(g.codes), q.TYPE_BITS[g.type]) for g in groups)
        packed += b"".join(g.offsets.astype("<u2").tobytes() + g.scales.astype("<u2").tobytes() for g in groups if g.offsets is not None)
        assert packed == payload
        codec, stored = kb.compress(kb.KIND_PLAN, payload, profile.entropy)
        assert (zlib.decompress(stored, -15) if codec == kb.CODEC_DEFLATE else stored) == payload


def test_python_round_trip_error_equals_nodes(node_case):
    """Python encode → Python decode loses what Node encode → Node decode loses, per layer and kind."""
    profile, _, node_dec, cache = node_case
    s, w, _ = profile.split(cache.tokens)
    mine = kvtc.decode(profile, kvtc.encode(profile, cache.layers, cache.start_position))
    e_py = relative_errors(mine, cache.layers, s, w)
    e_node = relative_errors(node_dec.layers, cache.layers, s, w)
    np.testing.assert_allclose(e_py, e_node, atol=1e-3)
    assert np.all(e_py[:, 0] < 0.2) and np.all(e_py[:, 1] < 0.7)  # keys, values: what these ~20x profiles measure


# ------------------------------------------------------------------------------------------------
# The quantizer's bounds on Python's own round trips


def _bounds_hold(profile, manifest, layers, blob, start=0, min_checked=0.5):
    """Per plan, per stored component of every compressed token: |c − ĉ| within its group's bound,
    c from the cache and ĉ from the decoded cache, both projected independently in float64."""
    T = layers[0][0].shape[1]
    s, w, n = profile.split(T)
    dec = kvtc.decode(profile, blob)
    descs = layer_descs(manifest)
    for plan in profile.plans:
        V, mu = plan.basis.astype(np.float64), plan.mean.astype(np.float64)
        X = plan_features(plan, layers, descs, start, s, n, start + T)
        Xd = plan_features(plan, dec, descs, start, s, n, start + T)
        if plan.rank == 0:  # nothing stored: every compressed token decodes to the mean
            np.testing.assert_allclose(Xd, np.broadcast_to(mu, Xd.shape), atol=1e-5)
            continue
        c, cd = (X - mu) @ V, (Xd - mu) @ V
        eps = 1e-4 + 1e-5 * np.abs(c)  # float32 reconstruction and float32 encode arithmetic
        checked = 0
        for g in plan.groups:
            cg, err = c[:, g.start : g.end], np.abs(cd[:, g.start : g.end] - c[:, g.start : g.end])
            if g.mode == "static":
                off, sc = q.static_offset_scale(plan.lo[g.start : g.end], plan.hi[g.start : g.end], g.type)
                inside = (cg >= plan.lo[g.start : g.end]) & (cg <= plan.hi[g.start : g.end])
                bound = sc / 2 if g.type != "fp8" else 2**-4 * np.abs(cg - off) + sc * 2**-10
                ok = (err <= bound + eps[:, g.start : g.end]) | ~inside  # clipped values are bounded by the range instead
                checked += int(inside.sum())
            else:
                mn, mx = cg.min(axis=1, keepdims=True), cg.max(axis=1, keepdims=True)
                ulp = np.spacing(np.abs(mn).astype(np.float16)).astype(np.float64)
                if g.type == "fp8":
                    sc = (np.maximum(mx - mn, 0) / 2 + ulp) / q.FP8_MAX * (1 + 2**-9)
                    bound = 2**-4 * (np.abs(cg - (mn + mx) / 2) + ulp) + sc * 2**-10
                else:
                    bound = (mx - mn + ulp) / g.levels * (1 + 2**-9) / 2
                ok = err <= bound + eps[:, g.start : g.end]
                checked += cg.size
            assert ok.all(), (
                f"plan {plan.index} group {g.start}-{g.end} {g.type}/{g.mode}: error {float(np.max(err - bound))} over its bound"
            )
        assert checked >= min_checked * n * plan.rank  # most values lie in the calibrated range


def test_committed_profiles_round_trip_within_the_quantizer_bounds(cache_f32):
    for name in ("profile-v2", "profile-v1"):
        p = kvtc.read_profile(FIXTURES / name)
        _bounds_hold(p, load_manifest(FIXTURES / name), cache_f32.layers, kvtc.encode(p, cache_f32.layers))


EVERY_GROUP = {
    0: (
        53,
        [
            (0, 4, "int8", "static"),
            (4, 10, "int8", "dynamic"),
            (10, 16, "fp8", "static"),
            (16, 24, "fp8", "dynamic"),
            (24, 34, "int4", "dynamic"),
            (34, 44, "int2", "dynamic"),
            (44, 53, "int4", "static"),
        ],
    ),
    1: (0, []),
}


@pytest.fixture(scope="module")
def every_group_profile(tmp_path_factory):
    """profile-v2 with keys in every group type and mode, and values at rank 0."""
    d = copy_profile(tmp_path_factory.mktemp("groups") / "p")
    regroup(d, EVERY_GROUP)
    return d


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("entropy", ["deflate-rle", "deflate-huffman", "deflate-default", "stored"])
def test_every_group_type_round_trips_within_its_bound(every_group_profile, cache_f32, cache_f16, dtype, entropy):
    p = kvtc.read_profile(every_group_profile)
    layers = (cache_f32 if dtype == "float32" else cache_f16).layers
    blob = kvtc.encode(p, layers, entropy=entropy)
    assert kvtc.read_blob_header(blob).dtype == dtype
    assert kvtc.decode(p, blob)[0][0].dtype == np.dtype(dtype)
    assert kvtc.read_blob_header(blob).section_count == 2  # raw + the key plan; the rank-0 plan stores nothing
    if dtype == "float32":
        _bounds_hold(p, load_manifest(every_group_profile), layers, blob)


def test_entropy_coders_store_the_same_codes(every_group_profile, cache_f32):
    p = kvtc.read_profile(every_group_profile)
    blobs = {e: kvtc.encode(p, cache_f32.layers, entropy=e) for e in ("deflate-rle", "deflate-huffman", "deflate-default", "stored")}
    decoded = {e: kvtc.decode(p, b) for e, b in blobs.items()}
    for e in blobs:
        assert max_abs_diff(decoded[e], decoded["stored"]) == 0.0
    assert len(blobs["deflate-rle"]) < len(blobs["stored"])


PER_LAYER_ROPE = [
    {"layers": [0], "theta": 10000, "rotary_dim": 8, "layout": "half"},
    {"layers": [1], "none": True},
    {
        "layers": [2],
        "theta": 10000,
        "rotary_dim": 4,
        "layout": "interleaved",
        "attention_factor": 1.25,
        "scaling": {"type": "yarn", "factor": 4, "original_max_position_embeddings": 64, "beta_fast": 32, "beta_slow": 1, "truncate": True},
    },
    {
        "layers": [3],
        "theta": 500000,
        "rotary_dim": 8,
        "layout": "half",
        "scaling": {"type": "llama3", "factor": 8, "low_freq_factor": 1, "high_freq_factor": 4, "original_max_position_embeddings": 64},
    },
    {
        "layers": [4],
        "theta": 10000,
        "rotary_dim": 8,
        "layout": "half",
        "scaling": {
            "type": "longrope",
            "original_max_position_embeddings": 200,
            "short_factor": [1, 1.5, 2, 4],
            "long_factor": [1, 2, 4, 8],
        },
    },
]


@pytest.mark.parametrize("start", [0, 1000], ids=["start-0", "start-1000"])
@pytest.mark.parametrize("tokens", [256, 150], ids=["T256", "T150"])  # from position 0: longrope's long and short factors (switch at 200)
def test_per_layer_rope_round_trips_within_the_bounds(tmp_path, cache_f32, start, tokens):
    """Format 2's per-layer RoPE: encode un-rotates and decode re-rotates each layer's keys as
    transformers' formulas say (checked through coefficients computed with kvtc_testutil's RoPE).
    Dynamic groups only, so every coefficient has a bound however far the re-rotated keys are
    from the calibration."""
    d = copy_profile(tmp_path / "p")
    # a context of 4096 (max_positions bounds what decodes, not how: not in the profile id) for the caches at 1000
    edit_manifest(d, lambda m: m["model"].update(rope=PER_LAYER_ROPE, max_positions=4096))
    regroup(d, {0: (53, [(0, 20, "int8", "dynamic"), (20, 53, "int4", "dynamic")]), 1: (57, [(0, 57, "int4", "dynamic")])})
    edit_manifest(d, lambda m: None, fix_id=True)
    p = kvtc.read_profile(d)
    assert p.rope is None and p.layer_ropes[1] is None and p.layer_ropes[2].attention_factor == 1.25
    layers = [(k[:, :tokens], v[:, :tokens]) for k, v in cache_f32.layers]
    blob = kvtc.encode(p, layers, start_position=start)
    assert kvtc.read_blob_header(blob).start_position == start
    _bounds_hold(p, load_manifest(d), layers, blob, start=start, min_checked=1.0)


def test_keys_decode_at_the_position_the_header_names(profile_v2, blob_v2):
    """The start position drives RoPE only: moving it changes the compressed keys, not the values."""
    from test_blob import patched

    a = kvtc.decode(profile_v2, blob_v2)
    b = kvtc.decode(profile_v2, patched(blob_v2, 20, "<I", 7))
    s, w, n = profile_v2.split(256)
    assert max_abs_diff(a, b, slice(s, s + n)) > 0.1
    assert all(np.array_equal(va, vb) for (_, va), (_, vb) in zip(a, b))
    assert all(np.array_equal(ka[:, :s], kb_[:, :s]) for (ka, _), (kb_, _) in zip(a, b))


@pytest.mark.parametrize("tokens", [0, 3, 100, 132, 133], ids=lambda t: f"T{t}")
def test_short_caches(profile_v2, cache_f32, tokens):
    """Caches no longer than sink + window are stored raw (no plan section)."""
    layers = [(k[:, :tokens], v[:, :tokens]) for k, v in cache_f32.layers]
    blob = kvtc.encode(profile_v2, layers)
    h = kvtc.read_blob_header(blob)
    s, w, n = profile_v2.split(tokens)
    assert (h.tokens, h.sink, h.window, h.compressed_tokens) == (tokens, s, w, n)
    assert h.section_count == (1 if n == 0 else 3)
    dec = kvtc.decode(profile_v2, blob)
    assert dec[0][0].shape == (4, tokens, 8)
    if n == 0:
        for (k, v), (ck, cv) in zip(dec, layers):
            np.testing.assert_array_equal(k, ck.astype(np.float16).astype(np.float32))


def test_a_leading_batch_dimension_of_one_is_accepted(profile_v2, cache_f32):
    a = kvtc.encode(profile_v2, cache_f32.layers)
    b = kvtc.encode(profile_v2, [(k[None], v[None]) for k, v in cache_f32.layers])
    assert a == b


def test_encode_is_deterministic(profile_v2, cache_f32):
    assert kvtc.encode(profile_v2, cache_f32.layers) == kvtc.encode(profile_v2, cache_f32.layers)


# ------------------------------------------------------------------------------------------------
# Encode refusals


def _layers(cache, edit=None):
    out = [[k.copy(), v.copy()] for k, v in cache.layers]
    if edit:
        edit(out)
    return [tuple(p) for p in out]


def _refused(profile, layers, code, *args, **kw):
    with pytest.raises(kvtc.KvtcError) as e:
        kvtc.encode(profile, layers, *args, **kw)
    assert e.value.code == code
    assert e.value.fix
    return e.value


def test_wrong_layer_count(profile_v2, cache_f32):
    e = _refused(profile_v2, cache_f32.layers[:4], "PROFILE_MISMATCH")
    assert "the KV cache has 4 layers, but the profile is for 5" in e.message


def test_wrong_head_shape(profile_v2, cache_f32):
    e = _refused(profile_v2, _layers(cache_f32, lambda l: l[1].__setitem__(1, l[1][1][:3])), "PROFILE_MISMATCH")
    assert "layer 1 values have shape [3, 256, 8]; the profile is for [kv_heads=4, tokens, value_head_dim=8]" in e.message


def test_unsupported_dtype(profile_v2, cache_f32):
    e = _refused(profile_v2, _layers(cache_f32, lambda l: l[0].__setitem__(0, l[0][0].astype(np.float64))), "KV_INVALID")
    assert "layer 0 keys are float64; a kvtc blob holds float16 or float32 caches" in e.message


def test_mixed_dtypes_or_token_counts(profile_v2, cache_f32):
    e = _refused(profile_v2, _layers(cache_f32, lambda l: l[3].__setitem__(0, l[3][0].astype(np.float16))), "KV_INVALID")
    assert "layer 3 keys are float16[4, 256, 8], layer 0 keys are float32 with 256 tokens" in e.message
    e = _refused(profile_v2, _layers(cache_f32, lambda l: l[2].__setitem__(1, l[2][1][:, :200])), "KV_INVALID")
    assert "layer 2 values are float32[4, 200, 8]" in e.message


@pytest.mark.parametrize("token", [1, 50, 200], ids=["sink", "compressed", "window"])
def test_non_finite_value(profile_v2, cache_f32, token):
    e = _refused(profile_v2, _layers(cache_f32, lambda l: l[2][1].__setitem__((3, token, 5), np.nan)), "KV_INVALID")
    assert f"the value of layer 2, head 3, token {token} (position {token}), dim 5 is nan" in e.message


def test_token_far_outside_the_calibration(profile_v2, cache_f32):
    e = _refused(profile_v2, _layers(cache_f32, lambda l: l[4][0].__setitem__((0, 60, 0), 5000.0)), "KV_OUT_OF_RANGE")
    assert "token 60 (position 60) is far outside the range the profile was calibrated on" in e.message
    assert "its largest value is 5000.0 (layer 4, head 0, dim 0)" in e.message


def test_outliers_in_raw_tokens_are_kept_exactly(profile_v2, cache_f32):
    layers = _layers(cache_f32, lambda l: l[4][0].__setitem__((0, 200, 0), 5000.0))
    assert kvtc.decode(profile_v2, kvtc.encode(profile_v2, layers))[4][0][0, 200, 0] == 5000.0


def test_dynamic_coefficient_beyond_fp16(tmp_path, cache_f32):
    d = copy_profile(tmp_path / "p")
    regroup(d, {0: (53, [(0, 53, "int8", "dynamic")])})
    # the norm bound comes from the calibrated variances: raise them so only the fp16 limit refuses
    from kvtc_testutil import load_tensors, write_tensors

    t = load_tensors(d)
    name = load_manifest(d)["plans"][0]["tensors"]["variances"]
    t[name] = t[name] * np.float32(1e12)
    write_tensors(d, t)
    p = kvtc.read_profile(d)
    e = _refused(p, _layers(cache_f32, lambda l: l[0][0].__setitem__((0, 70, slice(None)), 1e6)), "KV_OUT_OF_RANGE")
    assert "token 70 has a coefficient of" in e.message and "dynamic group 0–52; its per-token range is stored as fp16" in e.message


@pytest.mark.parametrize(
    "start,words",
    [
        (-1, "start_position -1 is not an integer in [0, 2^32)"),
        (True, "start_position True is not an integer"),
        (2**32, "start_position 4294967296 is not an integer"),
        (1.0, "start_position 1.0 is not an integer"),
    ],
)
def test_bad_start_position(profile_v2, cache_f32, start, words):
    assert words in _refused(profile_v2, cache_f32.layers, "KV_INVALID", start).message


def test_positions_past_2_32(profile_v2, cache_f32):
    e = _refused(profile_v2, cache_f32.layers, "KV_INVALID", 2**32 - 10)
    assert "the cache starts at position 4294967286 with 256 tokens" in e.message


def test_start_position_may_be_a_numpy_integer(profile_v2, cache_f32):
    assert kvtc.read_blob_header(kvtc.encode(profile_v2, cache_f32.layers, np.uint32(5))).start_position == 5


def test_unknown_entropy_coder(profile_v2, cache_f32):
    with pytest.raises(kvtc.KvtcError) as e:
        kvtc.encode(profile_v2, cache_f32.layers, entropy="zstd")
    assert e.value.code == "USAGE" and "entropy 'zstd' is not one of deflate-rle" in e.value.message


@pytest.mark.parametrize(
    "layers,words",
    [
        (5, "layers_kv is not a sequence of (K, V) pairs"),
        ([(1, 2, 3)] * 5, "layer 0 is not a (K, V) pair"),
        ([("a", "b")] * 5, "layer 0 keys is a str; expected a NumPy array"),
    ],
)
def test_malformed_layers(profile_v2, layers, words):
    assert words in _refused(profile_v2, layers, "KV_INVALID").message


def test_unknown_device(profile_v2, cache_f32, blob_v2):
    for call in (lambda: kvtc.encode(profile_v2, cache_f32.layers, device="tpu"), lambda: kvtc.decode(profile_v2, blob_v2, device="tpu")):
        with pytest.raises(kvtc.KvtcError) as e:
            call()
        assert e.value.code == "USAGE" and "device 'tpu' is not supported" in e.value.message
