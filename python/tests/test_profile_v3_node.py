"""Format-3 profiles written by kvtc (Node) itself: `kvtc calibrate --kv` on KV dumps that
scripts/make-python-fixtures.ts makes up (fixtures/README.md): an MLA-like latent cache of model
layers 0, 1, 3 of 4 (keys 8 wide, values 24), and rank tp 1 / pp 1 of `--shards tp=2,pp=2` on a
4-KV-head GQA dump. Python must read them with Node's id (recomputed independently too), decode
Node's blobs to Node's decode, and encode the same caches to Node's codes.
"""

from __future__ import annotations

import json

import kvtc
import numpy as np
import pytest
from kvtc.debug import plan_codes
from kvtc_testutil import FIXTURES, read_blob
from profile_v3_builder import spec_id
from test_codec import DECODE_ATOL, MAX_CODE_MISMATCH

V3_CASES = [("v3-mla", "profile-v3-mla", "cache-v3-mla"), ("v3-shard", "profile-v3-shard", "cache-v3-shard")]


@pytest.fixture(scope="module", params=V3_CASES, ids=[c[0] for c in V3_CASES])
def case(request):
    name, prof, cache = request.param
    return (
        name,
        kvtc.read_profile(FIXTURES / prof),
        json.loads((FIXTURES / prof / "kvtc-profile.json").read_text("utf-8")),
        read_blob(name),
        kvtc.read_kv_safetensors(FIXTURES / f"{name}.decoded.safetensors"),
        kvtc.read_kv_safetensors(FIXTURES / f"{cache}.safetensors"),
    )


def test_node_profiles_read_with_nodes_id_and_facts():
    mla = kvtc.read_profile(FIXTURES / "profile-v3-mla")
    m = json.loads((FIXTURES / "profile-v3-mla" / "kvtc-profile.json").read_text("utf-8"))
    assert mla.profile_id == m["profile_id"] == spec_id(m)  # Node's id = kvtc.profile's = the independent text's
    assert (mla.format_version, mla.cache, mla.kv_heads, mla.head_dim, mla.value_head_dim) == (3, "mla-latent", 1, 8, 24)
    assert (mla.model_layers, mla.cache_layers, mla.shard) == (4, (0, 1, 3), None)
    assert mla.fingerprint["source"] == "kv-dump"
    mla.check_shard(cache_layers=[0, 1, 3])

    sh = kvtc.read_profile(FIXTURES / "profile-v3-shard")
    m = json.loads((FIXTURES / "profile-v3-shard" / "kvtc-profile.json").read_text("utf-8"))
    assert sh.profile_id == m["profile_id"] == spec_id(m)
    assert (sh.format_version, sh.cache, sh.kv_heads, sh.head_dim, sh.value_head_dim) == (3, "gqa", 2, 16, 16)
    assert (sh.model_layers, sh.cache_layers) == (5, (3, 4))
    assert sh.shard == kvtc.Shard(tp_rank=1, tp_size=2, pp_rank=1, pp_size=2, kv_heads=(2, 3))
    sh.check_shard(tp_rank=1, tp_size=2, pp_rank=1, pp_size=2, kv_heads=[2, 3], cache_layers=[3, 4])
    with pytest.raises(kvtc.KvtcError) as e:
        sh.check_shard(tp_rank=0, tp_size=2, pp_rank=1, pp_size=2)
    assert e.value.code == "PROFILE_MISMATCH"


def test_decode_of_a_node_v3_blob_agrees_with_the_node_decode(case):
    _, profile, _, blob, node_dec, cache = case
    got = kvtc.decode(profile, blob)
    T = cache.tokens
    s, w, n = profile.split(T)
    assert n > 0 and len(got) == profile.layers == len(node_dec.layers)
    assert node_dec.value_head_dim == profile.value_head_dim
    for (k, v), (nk, nv) in zip(got, node_dec.layers):
        for a, b, width in ((k, nk, profile.head_dim), (v, nv, profile.value_head_dim)):
            assert a.dtype == np.float32 and a.shape == b.shape == (profile.kv_heads, T, width)
            np.testing.assert_array_equal(a[:, :s], b[:, :s])  # raw tokens: the same fp16 values
            np.testing.assert_array_equal(a[:, T - w :], b[:, T - w :])
            assert np.max(np.abs(a.astype(np.float64) - b)) <= DECODE_ATOL


def test_encode_of_the_cache_gives_nodes_codes(case):
    _, profile, _, blob, _, cache = case
    mine = kvtc.encode(profile, cache.layers, cache.start_position, bit_exact=True)
    assert kvtc.read_blob_header(mine) == kvtc.read_blob_header(blob)
    ca, cb = plan_codes(profile, mine), plan_codes(profile, blob)
    assert ca.keys() == cb.keys()
    diff = total = 0
    for i in ca:
        for ga, gb in zip(ca[i], cb[i]):
            total += ga.codes.size
            diff += int((ga.codes != gb.codes).sum())
    assert total > 500 and diff <= MAX_CODE_MISMATCH * total


def test_round_trip_is_close_to_the_cache(case):
    """Encoded and decoded by Python, the compressed tokens come back within the profile's own
    measured error scale (these made-up caches are from the calibration's distribution)."""
    _, profile, m, _, _, cache = case
    got = kvtc.decode(profile, kvtc.encode(profile, cache.layers, cache.start_position))
    T = cache.tokens
    s, w, _ = profile.split(T)
    rel = m["measured"]["rel_error"]
    for l, ((k, v), (k0, v0)) in enumerate(zip(got, cache.layers)):
        for kind, a, b in (("key", k, k0), ("value", v, v0)):
            a, b = a[:, s : T - w].astype(np.float64), b[:, s : T - w].astype(np.float64)
            err = np.linalg.norm(a - b) / np.linalg.norm(b)
            assert err <= 2 * rel[kind][l] + 0.01, (kind, l, err, rel[kind][l])


def test_cli_encode_and_decode_a_v3_cache(tmp_path, capsys):
    """`python -m kvtc encode` counts fp16 bytes with values at their own width, and `decode` writes
    what `kvtc decode` wrote (values [1, 1, tokens, 24])."""
    from kvtc import cli

    prof = str(FIXTURES / "profile-v3-mla")
    out = tmp_path / "b.kvtc"
    assert cli.main(["encode", "--profile", prof, "--kv", str(FIXTURES / "cache-v3-mla.safetensors"), "--out", str(out), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["fp16_bytes"] == 96 * 3 * 1 * (8 + 24) * 2 and r["ratio_blob"] == r["fp16_bytes"] / out.stat().st_size
    dec = tmp_path / "d.safetensors"
    assert cli.main(["decode", "--profile", prof, "--in", str(FIXTURES / "v3-mla.kvtc"), "--out", str(dec), "--json"]) == 0
    mine = kvtc.read_kv_safetensors(dec)
    node = kvtc.read_kv_safetensors(FIXTURES / "v3-mla.decoded.safetensors")
    assert mine.metadata["value_head_dim"] == node.metadata["value_head_dim"] == "24"
    for (k, v), (nk, nv) in zip(mine.layers, node.layers):
        assert v.shape == nv.shape == (1, 96, 24)
        assert max(np.max(np.abs(k - nk)), np.max(np.abs(v - nv))) <= DECODE_ATOL
