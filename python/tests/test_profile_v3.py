"""Profile format 3 in the Python runtime: value heads of their own width, the MLA latent cache,
a subset of the model's layers (model_layers + cache_layers), a rank's shard, the kv-dump
fingerprint. The profiles come from profile_v3_builder, an independent implementation of the
spec (manifest, tensor file, canonical id text, RoPE), so each test compares kvtc's reader and
codec with a second reading of the spec: the id kvtc recomputes, and a decode recomputed from the
blob's stored codes (kvtc.debug.plan_codes) with the spec's dequantization and RoPE.
"""

from __future__ import annotations

import json
import shutil

import kvtc
import numpy as np
import pytest
from kvtc.debug import plan_codes
from kvtc.profile import expected_profile_id, profile_id_text
from kvtc_testutil import FIXTURES
from profile_v3_builder import DELETE, build, edited, layer_desc, rotate_ref, spec_id, spec_id_text, synthetic_cache, write_manifest

# MLA-like geometry: one latent "head" per layer, key = k_rot (8 dims, all rotated), value = c_kv (24).
MLA = dict(L=3, H=1, D=8, Dv=24, T=40, start=5)
MLA_ROPE = [{"layers": [0, 1, 2], "theta": 10000.0, "rotary_dim": 8, "layout": "half"}]
# A hybrid model's pipeline stage on tensor rank 1 of 2: model layers 1, 3, 4 of 6 keep a cache
# (profile layers 0–2), this rank holds the model's KV heads 2 and 3; partial interleaved RoPE on
# two layers, none on the middle one.
SUB = dict(L=3, H=2, D=16, Dv=12, T=48, start=0)
SUB_ROPE = [
    {"layers": [0, 2], "theta": 500000.0, "rotary_dim": 8, "layout": "interleaved"},
    {"layers": [1], "none": True},
]
SUB_MODEL = {"model_layers": 6, "cache_layers": [1, 3, 4]}
SUB_SHARD = {"tp_rank": 1, "tp_size": 2, "pp_rank": 0, "pp_size": 1, "kv_heads": [2, 3]}
MIXED = {"key": [(1.0, "int8", "static")], "value": [(0.5, "int8", "static"), (1.0, "int4", "dynamic")]}


@pytest.fixture(scope="module")
def mla(tmp_path_factory):
    rng = np.random.default_rng(20)
    g = MLA
    cache = synthetic_cache(rng, g["L"], g["H"], g["D"], g["Dv"], g["T"], MLA_ROPE, g["start"])
    d = tmp_path_factory.mktemp("mla") / "p"
    m = build(
        d,
        [cache],
        heads=16,
        kv_heads=1,
        head_dim=8,
        value_head_dim=24,
        rope=MLA_ROPE,
        starts=[g["start"]],
        groups=MIXED,
        model_extra={"cache": "mla-latent"},
    )
    return d, m, cache


@pytest.fixture(scope="module")
def sub(tmp_path_factory):
    rng = np.random.default_rng(21)
    g = SUB
    cache = synthetic_cache(rng, g["L"], g["H"], g["D"], g["Dv"], g["T"], SUB_ROPE, g["start"])
    d = tmp_path_factory.mktemp("sub") / "p"
    m = build(
        d,
        [cache],
        heads=8,
        kv_heads=2,
        head_dim=16,
        value_head_dim=12,
        rope=SUB_ROPE,
        groups=MIXED,
        model_extra=SUB_MODEL,
        shard=SUB_SHARD,
        family="qwen3_next",
        kv_dump=False,
    )
    return d, m, cache


# ------------------------------------------------------------------------------------------------
# An independent decode: the spec's dequantization of the codes the blob stores, μ + V·ĉ, RoPE.


def reference_decode(profile, m, blob, cache_rope, start, T):
    codes = plan_codes(profile, blob)
    s, w, n = profile.split(T)
    out = {}
    for i, pe in enumerate(m["plans"]):
        plan = profile.plans[i]
        C = np.zeros((n, pe["rank"]))
        for gc in codes.get(i, []):
            q = gc.codes.astype(np.float64)  # [width, n]; this builder writes int types only
            if gc.mode == "static":
                lo = plan.lo[gc.start : gc.end].astype(np.float64)
                hi = plan.hi[gc.start : gc.end].astype(np.float64)
                levels = 2 ** {"int2": 2, "int4": 4, "int8": 8}[gc.type] - 1
                vals = lo[:, None] + q * np.where(hi > lo, (hi - lo) / levels, 0.0)[:, None]
            else:
                off = gc.offsets.view(np.float16).astype(np.float64)
                sc = gc.scales.view(np.float16).astype(np.float64)
                vals = off[None, :] + q * sc[None, :]
            C[:, gc.start : gc.end] = vals.T
        X = plan.mean.astype(np.float64) + C @ plan.basis.astype(np.float64).T  # [n, p]
        (l,) = pe["layers"]
        width = profile.head_dim if pe["kind"] == "key" else profile.value_head_dim
        x = X.reshape(n, profile.kv_heads, width).transpose(1, 0, 2)
        if pe["kind"] == "key":
            x = rotate_ref(x, layer_desc(cache_rope, l), start + s)
        out[(pe["kind"], l)] = x
    return out


def _check_round_trip(d, m, cache, rope, start, dtype):
    profile = kvtc.read_profile(d)
    T = cache[0][0].shape[1]
    layers = [(k.astype(dtype), v.astype(dtype)) for k, v in cache]
    blob = kvtc.encode(profile, layers, start)
    got = kvtc.decode(profile, blob)
    s, w, n = profile.split(T)
    assert len(got) == profile.layers
    ref = reference_decode(profile, m, blob, rope, start, T)
    for l, ((k, v), (k0, v0)) in enumerate(zip(got, layers)):
        assert k.dtype == np.dtype(dtype) and v.dtype == np.dtype(dtype)
        assert k.shape == (profile.kv_heads, T, profile.head_dim)
        assert v.shape == (profile.kv_heads, T, profile.value_head_dim)
        for kind, x, x0 in (("key", k, k0), ("value", v, v0)):
            x, x0 = x.astype(np.float64), x0.astype(np.float64)
            raw = np.r_[0:s, T - w : T]
            # sink and window tokens: stored as fp16, so exact within fp16 rounding (and exact for fp16 caches)
            assert np.all(np.abs(x[:, raw] - x0[:, raw]) <= 2.0**-11 * np.abs(x0[:, raw]) + 1e-7), (kind, l)
            # compressed tokens: kvtc's decode equals the spec's reconstruction from the stored codes
            part = x[:, s : T - w]
            r = ref[(kind, l)]
            tol = 1e-4 * (1 + np.abs(r)) if dtype == np.float32 else 2.0**-10 * (np.abs(r) + 1e-3)
            assert np.all(np.abs(part - r) <= tol), (kind, l, float(np.max(np.abs(part - r))))
            # and is close to the cache (full-rank plans, 8-bit codes on most of the variance)
            rel = np.linalg.norm(part - x0[:, s : T - w]) / np.linalg.norm(x0[:, s : T - w])
            assert rel < 0.05, (kind, l, rel)
    return profile, blob


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_mla_latent_round_trip(mla, dtype):
    d, m, cache = mla
    profile, _ = _check_round_trip(d, m, cache, MLA_ROPE, MLA["start"], dtype)
    assert (profile.format_version, profile.cache, profile.kv_heads, profile.head_dim, profile.value_head_dim) == (
        3,
        "mla-latent",
        1,
        8,
        24,
    )
    assert profile.model_layers == 3 and profile.cache_layers == (0, 1, 2) and profile.shard is None
    assert profile.fingerprint["source"] == "kv-dump" and "onnx_sha256" not in profile.fingerprint
    assert [p.dim for p in profile.plans] == [8, 8, 8, 24, 24, 24]
    assert profile.fp16_bytes_per_token == 3 * 1 * (8 + 24) * 2


def test_mla_static_int8_keys_within_half_a_step(mla):
    """Full-rank key plans with static int8 codes: each token's error is at most half a code step per
    component (‖x̂ − x‖ ≤ √Σ(scale_j/2)²), RoPE being a rotation; a layout or placement slip breaks it."""
    d, m, cache = mla
    profile = kvtc.read_profile(d)
    T, start = MLA["T"], MLA["start"]
    got = kvtc.decode(profile, kvtc.encode(profile, cache, start))
    s, w, n = profile.split(T)
    for l in range(MLA["L"]):
        plan = profile.plans[l]
        assert plan.kind == "key" and plan.rank == plan.dim
        step = (plan.hi.astype(np.float64) - plan.lo.astype(np.float64)) / 255
        bound = float(np.sqrt(np.sum((step / 2) ** 2)))
        err = np.linalg.norm((got[l][0].astype(np.float64) - cache[l][0])[:, s : T - w], axis=(0, 2))
        assert np.all(err <= bound * 1.001 + 1e-5), (l, float(err.max()), bound)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_cache_layer_subset_shard_round_trip(sub, dtype):
    d, m, cache = sub
    profile, _ = _check_round_trip(d, m, cache, SUB_ROPE, SUB["start"], dtype)
    assert profile.cache == "gqa" and profile.value_head_dim == 12 and profile.head_dim == 16
    assert profile.model_layers == 6 and profile.cache_layers == (1, 3, 4)
    assert profile.shard == kvtc.Shard(tp_rank=1, tp_size=2, pp_rank=0, pp_size=1, kv_heads=(2, 3))
    assert profile.layer_ropes[1] is None and profile.layer_ropes[0].rotary_dim == 8


def test_raw_section_only(mla):
    """A cache no longer than sink + window: every token raw, keys and values of their own widths."""
    d, m, cache = mla
    profile = kvtc.read_profile(d)
    short = [(k[:, :4], v[:, :4]) for k, v in cache]
    got = kvtc.decode(profile, kvtc.encode(profile, short, 7))
    for (k, v), (k0, v0) in zip(got, short):
        assert k.shape == (1, 4, 8) and v.shape == (1, 4, 24)
        np.testing.assert_allclose(k, k0, rtol=2.0**-11, atol=1e-7)
        np.testing.assert_allclose(v, v0, rtol=2.0**-11, atol=1e-7)


def test_cache_of_the_wrong_value_width_is_refused(mla):
    d, m, cache = mla
    profile = kvtc.read_profile(d)
    bad = [(k, v[:, :, :8]) for k, v in cache]  # values as wide as keys: a GQA cache, not this latent
    with pytest.raises(kvtc.KvtcError) as e:
        kvtc.encode(profile, bad)
    assert e.value.code == "PROFILE_MISMATCH"
    assert "layer 0 values have shape [1, 40, 8]; the profile is for [kv_heads=1, tokens, value_head_dim=24]" in e.value.message


def test_blob_of_another_value_width_is_refused(mla, tmp_path):
    """The blob header records the key head_dim only; a profile whose value width differs reads the raw
    section's size as wrong and refuses the blob (the ids differ too, so it is refused before that)."""
    d, m, cache = mla
    profile = kvtc.read_profile(d)
    blob = kvtc.encode(profile, cache, MLA["start"])
    other = profile.__class__(**{**profile.__dict__, "value_head_dim": 16})
    with pytest.raises(kvtc.KvtcError) as e:
        kvtc.decode(other, blob)
    assert e.value.code == "BLOB_INVALID" and "raw section" in e.value.message


# ------------------------------------------------------------------------------------------------
# Shards: a serving rank checks it holds the profile's shard


def test_check_shard(sub, mla):
    p = kvtc.read_profile(sub[0])
    p.check_shard(tp_rank=1, tp_size=2, kv_heads=[2, 3], cache_layers=[1, 3, 4])
    for kw, words in (
        (dict(tp_rank=0, tp_size=2), "is for tp rank 1 of 2, pp rank 0 of 1, but this rank is tp rank 0 of 2"),
        (dict(tp_rank=1, tp_size=4), "this rank is tp rank 1 of 4"),
        (dict(), "this rank is tp rank 0 of 1, pp rank 0 of 1"),
        (dict(tp_rank=1, tp_size=2, kv_heads=[3, 2]), "covers the model's KV heads [2, 3], but this rank holds [3, 2]"),
        (dict(tp_rank=1, tp_size=2, cache_layers=[0, 1, 2]), "covers the model's layers [1, 3, 4], but this rank holds [0, 1, 2]"),
    ):
        with pytest.raises(kvtc.KvtcError) as e:
            p.check_shard(**kw)
        assert e.value.code == "PROFILE_MISMATCH" and words in e.value.message and e.value.fix
    whole = kvtc.read_profile(mla[0])
    whole.check_shard()
    whole.check_shard(kv_heads=[0], cache_layers=[0, 1, 2])
    with pytest.raises(kvtc.KvtcError) as e:
        whole.check_shard(tp_rank=0, tp_size=2)
    assert "is for the whole model (no shard)" in e.value.message


def test_kv_file_named_by_model_layer(sub, tmp_path):
    """A KV dump's sequence file names tensors by model layer (present.{cache_layers[l]}): written and
    read with layer_ids, values of their own width, then encoded with the rank's profile."""
    d, m, cache = sub
    p = kvtc.read_profile(d)
    path = tmp_path / "seq.safetensors"
    kvtc.write_kv_safetensors(path, cache, 0, layer_ids=p.cache_layers)
    with pytest.raises(kvtc.KvtcError) as e:
        kvtc.read_kv_safetensors(path)
    assert "present.1.key: a file named by model layer; pass layer_ids" in e.value.message
    kv = kvtc.read_kv_safetensors(path, layer_ids=p.cache_layers)
    assert (kv.head_dim, kv.value_head_dim, kv.kv_heads, kv.tokens) == (16, 12, 2, SUB["T"])
    assert kv.metadata["value_head_dim"] == "12" and kv.metadata["head_dim"] == "16"
    for (k, v), (k0, v0) in zip(kv.layers, cache):
        np.testing.assert_array_equal(k, k0)
        np.testing.assert_array_equal(v, v0)
    blob = kvtc.encode(p, kv.layers, kv.start_position)
    assert kvtc.read_blob_header(blob).head_dim == 16
    with pytest.raises(kvtc.KvtcError) as e:
        kvtc.read_kv_safetensors(path, layer_ids=[1, 3, 5])
    assert "missing present.5.key" in e.value.message


# ------------------------------------------------------------------------------------------------
# The profile id


def test_ids_agree_with_the_independent_text(mla, sub):
    for d, m, _ in (mla, sub):
        assert profile_id_text(m) == spec_id_text(m)
        assert kvtc.read_profile(d).profile_id == m["profile_id"] == spec_id(m)
    text = spec_id_text(sub[1])
    want = "model.kv_dtype float32\nmodel.value_head_dim 12\nmodel.model_layers 6\nmodel.cache_layers 1,3,4\nshard 1 2 0 1\nshard.kv_heads 2,3\nmodel.rope.groups 2\n"
    assert want in text
    assert "model.kv_dtype float32\nmodel.value_head_dim 24\nmodel.cache mla-latent\nmodel.rope.theta " in spec_id_text(mla[1])


@pytest.mark.parametrize("name", ["profile-v2", "profile-v1"])
def test_format_1_and_2_ids_unchanged(name):
    """The committed Node profiles: their ids (made before format 3) still verify, and the independent
    text (which has no format-3 line for them) gives the same id."""
    m = json.loads((FIXTURES / name / "kvtc-profile.json").read_text("utf-8"))
    if isinstance(m["model"]["rope"], dict):
        m["model"]["rope"] = [{"layers": list(range(m["model"]["layers"])), **m["model"]["rope"]}]
    assert expected_profile_id(m) == spec_id(m) == m["profile_id"] == kvtc.read_profile(FIXTURES / name).profile_id


ID_EDITS = [
    (("model", "value_head_dim"), 25),
    (("model", "value_head_dim"), DELETE),
    (("model", "cache"), "gqa"),
    (("model", "cache"), DELETE),
    (("model", "model_layers"), 7),
    (("model", "cache_layers"), [1, 3, 5]),
    (("shard", "tp_rank"), 0),
    (("shard", "tp_size"), 3),
    (("shard", "pp_rank"), 1),
    (("shard", "pp_size"), 2),
    (("shard", "kv_heads"), [3, 2]),
    (("shard",), DELETE),
]


@pytest.mark.parametrize("path,value", ID_EDITS, ids=[f"{'.'.join(p)}={v if v is not DELETE else 'absent'}" for p, v in ID_EDITS])
def test_id_changes_with_each_format_3_field(sub, path, value):
    m = sub[1]
    base = {**m, "model": {**m["model"], "cache": "gqa"}} if path == ("model", "cache") and value is DELETE else m
    e = edited(base, path, value)
    assert expected_profile_id(e) == spec_id(e) != expected_profile_id(base)


def test_edited_shard_is_a_different_profile(sub, tmp_path):
    """Changing a format-3 field without re-deriving the id is refused; re-derived, it is another
    profile whose blobs the old one refuses."""
    d0, m, cache = sub
    d = tmp_path / "p"
    shutil.copytree(d0, d)
    write_manifest(d, edited(m, ("shard", "kv_heads"), [4, 5]))
    with pytest.raises(kvtc.KvtcError) as e:
        kvtc.read_profile(d)
    assert e.value.code == "PROFILE_INVALID" and "does not match" in e.value.message
    write_manifest(d, edited(m, ("shard", "kv_heads"), [4, 5]), rederive_id=True)
    other = kvtc.read_profile(d)
    assert other.profile_id != m["profile_id"] and other.shard.kv_heads == (4, 5)
    blob = kvtc.encode(other, cache)
    with pytest.raises(kvtc.KvtcError) as e:
        kvtc.decode(kvtc.read_profile(d0), blob)
    assert e.value.code == "BLOB_MISMATCH"


# ------------------------------------------------------------------------------------------------
# Malformed format-3 fields: each refused, naming the field

ONNX_FP = {"id": "0123456789abcdef", "spec_sha256": "a" * 64, "onnx_sha256": "b" * 64}

MLA_BAD = [
    ("v2 with value_head_dim", [(("format_version",), 2)], "model.value_head_dim is a format 3 field, but format_version is 2"),
    (
        "v2 with fingerprint.source",
        [(("format_version",), 2), (("model", "value_head_dim"), DELETE), (("model", "cache"), DELETE)],
        "model.fingerprint.source is a format 3 field",
    ),
    (
        "v3 without a v3 field",
        [(("model", "value_head_dim"), DELETE), (("model", "cache"), DELETE), (("model", "fingerprint"), ONNX_FP)],
        "format_version is 3, but the manifest has none of format 3's fields",
    ),
    ("value_head_dim 0", [(("model", "value_head_dim"), 0)], "model.value_head_dim is 0; expected an integer in [1, 65535]"),
    ("value_head_dim huge", [(("model", "value_head_dim"), 65536)], "model.value_head_dim is 65536"),
    ("value_head_dim string", [(("model", "value_head_dim"), "24")], 'model.value_head_dim is "24"'),
    ("value_head_dim bool", [(("model", "value_head_dim"), True)], "model.value_head_dim is true"),
    (
        "value_head_dim vs plans",
        [(("model", "value_head_dim"), 25)],
        "plans[3].dim is 24, but 1 layers × 1 KV heads × 25 value head dim = 25",
    ),
    (
        "value_head_dim absent",
        [(("model", "value_head_dim"), DELETE)],
        "plans[3].dim is 24, but 1 layers × 1 KV heads × 8 value head dim = 8",
    ),
    ("cache unknown", [(("model", "cache"), "mha")], 'model.cache is "mha"; expected one of gqa, mla-latent'),
    ("mla with 2 heads", [(("model", "kv_heads"), 2)], "model.cache is mla-latent but model.kv_heads is 2"),
    ("model_layers alone", [(("model", "model_layers"), 3)], "model.model_layers is present without model.cache_layers"),
    ("cache_layers alone", [(("model", "cache_layers"), [0, 1, 2])], "model.cache_layers is present without model.model_layers"),
    (
        "model_layers < layers",
        [(("model", "model_layers"), 2), (("model", "cache_layers"), [0, 1, 2])],
        "model.model_layers is 2; expected an integer in [3, 65535]",
    ),
    (
        "cache_layers short",
        [(("model", "model_layers"), 4), (("model", "cache_layers"), [0, 1])],
        "model.cache_layers must hold one model layer per profile layer (model.layers = 3); it holds 2 entries",
    ),
    (
        "cache_layers not a list",
        [(("model", "model_layers"), 4), (("model", "cache_layers"), 3)],
        "model.cache_layers must hold one model layer per profile layer (model.layers = 3); it holds 3",
    ),
    (
        "cache_layers repeated",
        [(("model", "model_layers"), 4), (("model", "cache_layers"), [0, 2, 2])],
        "model.cache_layers must be strictly increasing: [1] = 2 then [2] = 2",
    ),
    (
        "cache_layers decreasing",
        [(("model", "model_layers"), 4), (("model", "cache_layers"), [2, 1, 3])],
        "model.cache_layers must be strictly increasing: [0] = 2 then [1] = 1",
    ),
    (
        "cache_layers past model",
        [(("model", "model_layers"), 4), (("model", "cache_layers"), [0, 1, 4])],
        "model.cache_layers[2] is 4; expected an integer in [0, 3]",
    ),
    ("cache_layers negative", [(("model", "model_layers"), 4), (("model", "cache_layers"), [-1, 1, 2])], "model.cache_layers[0] is -1"),
    ("family label", [(("model", "family"), "DeepSeek-V3")], 'model.family is "DeepSeek-V3"; expected a model type label'),
    ("family long", [(("model", "family"), "a" * 65)], "model.family is"),
    (
        "kv-dump with onnx",
        [(("model", "fingerprint", "onnx_sha256"), "c" * 64)],
        "model.fingerprint.onnx_sha256 is present, but fingerprint.source is kv-dump",
    ),
    (
        "kv-dump id",
        [(("model", "fingerprint", "id"), "0" * 16)],
        "model.fingerprint.id 0000000000000000 is not the id of a kv-dump fingerprint",
    ),
    ("source other", [(("model", "fingerprint", "source"), "onnx")], 'model.fingerprint.source is "onnx"; expected "kv-dump"'),
    ("no onnx, no source", [(("model", "fingerprint", "source"), DELETE)], "model.fingerprint.onnx_sha256 is missing"),
]

SUB_BAD = [
    ("shard not an object", [(("shard",), [1, 2])], "shard is missing or not an object"),
    ("tp_rank missing", [(("shard", "tp_rank"), DELETE)], "shard.tp_rank is null"),
    ("tp_rank = tp_size", [(("shard", "tp_rank"), 2)], "shard.tp_rank 2 is not a rank of shard.tp_size 2 (ranks are 0–1)"),
    ("pp_rank = pp_size", [(("shard", "pp_rank"), 1)], "shard.pp_rank 1 is not a rank of shard.pp_size 1"),
    ("tp_size 0", [(("shard", "tp_size"), 0)], "shard.tp_size is 0; expected an integer in [1, 65535]"),
    ("pp_size fraction", [(("shard", "pp_size"), 1.5)], "shard.pp_size is 1.5"),
    (
        "kv_heads short",
        [(("shard", "kv_heads"), [2])],
        "shard.kv_heads must name the model's KV head of each profile head (model.kv_heads = 2); it holds 1 entries",
    ),
    (
        "kv_heads not a list",
        [(("shard", "kv_heads"), 2)],
        "shard.kv_heads must name the model's KV head of each profile head (model.kv_heads = 2); it holds 2",
    ),
    ("kv_heads repeated", [(("shard", "kv_heads"), [3, 3])], "shard.kv_heads names the model's KV head 3 twice"),
    ("kv_heads negative", [(("shard", "kv_heads"), [2, -3])], "shard.kv_heads[1] is -3"),
    (
        "v2 with shard",
        [
            (("format_version",), 2),
            (("model", "value_head_dim"), DELETE),
            (("model", "model_layers"), DELETE),
            (("model", "cache_layers"), DELETE),
            (("model", "family"), "llama"),
        ],
        "shard is a format 3 field, but format_version is 2",
    ),
]


def _refused_edit(base, tmp_path, edits, words):
    d0, m, _ = base
    d = tmp_path / "p"
    shutil.copytree(d0, d)
    e = m
    for path, value in edits:
        e = edited(e, path, value)
    try:
        e["profile_id"] = spec_id(e)  # so that the field check refuses, not the id (kvtc checks fields first anyway)
    except (KeyError, TypeError, ValueError):
        pass
    write_manifest(d, e)
    with pytest.raises(kvtc.KvtcError) as err:
        kvtc.read_profile(d)
    assert err.value.code == "PROFILE_INVALID", err.value.message
    assert words in err.value.message, err.value.message
    assert err.value.fix


@pytest.mark.parametrize("name,edits,words", MLA_BAD, ids=[c[0] for c in MLA_BAD])
def test_malformed_mla_fields_refused(mla, tmp_path, name, edits, words):
    _refused_edit(mla, tmp_path, edits, words)


@pytest.mark.parametrize("name,edits,words", SUB_BAD, ids=[c[0] for c in SUB_BAD])
def test_malformed_shard_fields_refused(sub, tmp_path, name, edits, words):
    _refused_edit(sub, tmp_path, edits, words)


def test_shard_heads_need_not_divide_query_heads(sub, tmp_path):
    """A rank's share of KV heads (3 model KV heads over 2 ranks: 1 and 2) need not divide the model's
    query heads, so model.heads % model.kv_heads is not asked of a shard's profile."""
    d0, m, _ = sub
    d = tmp_path / "p"
    shutil.copytree(d0, d)
    write_manifest(d, edited(m, ("model", "heads"), 9), rederive_id=True)
    assert kvtc.read_profile(d).kv_heads == 2


@pytest.mark.parametrize("version", [4, 0])
def test_other_versions_refused_naming_the_readable_ones(mla, tmp_path, version):
    d0, m, _ = mla
    d = tmp_path / "p"
    shutil.copytree(d0, d)
    write_manifest(d, edited(m, ("format_version",), version))
    with pytest.raises(kvtc.KvtcError) as e:
        kvtc.read_profile(d)
    assert e.value.code == "PROFILE_VERSION" and f"format version {version}" in e.value.message
    assert "reads versions 1, 2 and 3" in e.value.message
