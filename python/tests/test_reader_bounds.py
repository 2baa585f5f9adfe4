"""Issue 22's tighter readers in the Python runtime, with the same refusals and bounds as kvtc
(src/profile/strict-json.ts, schema.ts FIGURE_LIMITS, codec/blob.ts; docs/profile-format.md §2.3, §6):
manifests must be strict UTF-8 JSON without a repeated key, informational figures within what
kvtc can produce, and blobs and caches within the model's context (model.max_positions, or 2^24
for a profile that does not record it).
"""

from __future__ import annotations

import json
import pathlib
import random
import shutil
import struct
import zlib

import numpy as np
import pytest
from kvtc import KvtcError, decode, encode
from kvtc._strict_json import find_duplicate_key
from kvtc.blob import DEFAULT_MAX_POSITIONS, read_blob_header
from kvtc.profile import MANIFEST_FILE, MAX_RATIO, MAX_REL_ERROR, read_profile

REPO = pathlib.Path(__file__).resolve().parents[2]
#: The committed profile (records model.max_positions 512) and the format-1 fixture (records none).
STORIES = REPO / "kvtc-profiles" / "stories260k"
V1 = REPO / "test" / "fixtures" / "profile-v1"


def _copy(tmp_path: pathlib.Path, src: pathlib.Path = STORIES) -> pathlib.Path:
    d = tmp_path / "p"
    shutil.copytree(src, d)
    return d


def _with_text(tmp_path, edit, src=STORIES) -> pathlib.Path:
    d = _copy(tmp_path, src)
    f = d / MANIFEST_FILE
    f.write_bytes(edit(f.read_bytes()))
    return d


def _with_manifest(tmp_path, edit, src=STORIES) -> pathlib.Path:
    """A copy whose manifest is edited (informational fields: profile_id does not cover them)."""
    d = _copy(tmp_path, src)
    f = d / MANIFEST_FILE
    m = json.loads(f.read_text("utf-8"))
    edit(m)
    f.write_text(json.dumps(m, indent=2), "utf-8")
    return d


def _refused(d, pattern: str, code: str = "PROFILE_INVALID") -> KvtcError:
    with pytest.raises(KvtcError) as ei:
        read_profile(d)
    assert ei.value.code == code
    assert ei.value.fix
    import re

    assert re.search(pattern, str(ei.value)), str(ei.value)
    return ei.value


def test_the_committed_profiles_read_and_record_their_bound():
    p = read_profile(STORIES)
    assert (p.max_positions, p.max_positions_recorded) == (512, True)
    v1 = read_profile(V1)
    assert (v1.max_positions, v1.max_positions_recorded) == (DEFAULT_MAX_POSITIONS, False)


# --- strict UTF-8 and unique keys


@pytest.mark.parametrize("seq", [b"\xc3\x28", b"\xed\xa0\x80", b"\xff", b"\xf4\x90\x80\x80", b"\xe2\x82", b"\x80"], ids=lambda s: s.hex())
def test_invalid_utf8_in_a_manifest_string_is_refused_with_its_offset(tmp_path, seq):
    at = {}

    def edit(b: bytes) -> bytes:
        i = b.index(b'"stories260k"') + 1
        at["offset"] = i + 1
        return b[:i] + b"s" + seq + b[i + 1 :]

    d = _with_text(tmp_path, edit)
    _refused(d, rf"not valid UTF-8 \(byte 0x{seq[0]:02x} at offset {at['offset']}\)")


def test_a_bom_is_refused_as_kvtc_refuses_it(tmp_path):
    _refused(_with_text(tmp_path, lambda b: b"\xef\xbb\xbf" + b), r"not valid JSON")


def test_nan_and_infinity_literals_are_not_json(tmp_path):
    _refused(_with_text(tmp_path, lambda b: b.replace(b'"ratio_blob": 3.3882', b'"ratio_blob": NaN')), r"not valid JSON")
    _refused(_with_text(tmp_path / "i", lambda b: b.replace(b'"ratio_blob": 3.3882', b'"ratio_blob": Infinity')), r"not valid JSON")


@pytest.mark.parametrize(
    "old,new,path",
    [
        (b'"sink": 4,', b'"sink": 4, "sink": 5,', r"settings\.sink"),
        (b'"sink": 4,', b'"sink": 4, "sink": 4,', r"settings\.sink"),
        (b'"bytes": 8619', b'"bytes": 8619, "bytes": 8619', r"calibration\.sources\[0\]\.bytes"),
        (b'"window": 128,', b'"window": 128, "win\\u0064ow": 128,', r"settings\.window"),
        (b'"split": "report",', b'"split": "report", "split": "report",', r"measured\.split"),
    ],
)
def test_a_repeated_key_is_refused_by_path_and_offset(tmp_path, old, new, path):
    d = _with_text(tmp_path, lambda b: b.replace(old, new, 1))
    e = _refused(d, rf"has the key {path} twice \(the second at byte offset \d+\)")
    import re

    offset = int(re.search(r"byte offset (\d+)", str(e)).group(1))
    assert (d / MANIFEST_FILE).read_bytes()[offset : offset + 1] == b'"'


# The same table as test/profile/strict-json.test.ts: the two scanners agree.
@pytest.mark.parametrize(
    "text,want",
    [
        ('{"a": 1, "b": {"a": 2}, "c": [{"a": 1}, {"a": 2}]}', None),
        ('{"a": 1, "b": 2, "a": 3}', ("a", 17)),
        ('{"m": {"x": 1, "x": 1}}', ("m.x", 15)),
        ('{"s": [{"n": 1}, {"n": 2, "b": 0, "b": 0}]}', ("s[1].b", 34)),
        ('[[1, {"k": 0, "k": 1}]]', ("[0][1].k", 14)),
        ('{"ab": 1, "\\u0061b": 2}', ("ab", 10)),
        ('{"a\\"b": 1, "a\\\\b": 2}', None),
        ('{"a": "a", "b": ["a", "a"], "c": "{\\"a\\": 1, \\"a\\": 2}"}', None),
        ('{"a b": 1, "a b": 2}', ('["a b"]', 11)),
        ('{"é": 1, "é": 2}', ('["é"]', 10)),
    ],
)
def test_find_duplicate_key_matches_kvtcs_scanner(text, want):
    json.loads(text)
    assert find_duplicate_key(text) == want


def test_find_duplicate_key_on_seeded_documents():
    """No false alarm on json.dumps output (it never repeats a key); a repeated key found by path."""
    r = random.Random(0x64757073)

    def gen(depth):
        if depth > 3 or r.random() < 0.3:
            return r.choice([r.randrange(100), "x", '{"k": 1}', True, None, -1.5e-7])
        if r.random() < 0.4:
            return [gen(depth + 1) for _ in range(r.randrange(4))]
        return {r.choice(["a", "b", "c", "é", "a b"]): gen(depth + 1) for _ in range(r.randrange(5))}

    for _ in range(300):
        text = json.dumps({"root": gen(0)}, ensure_ascii=False)
        assert find_duplicate_key(text) is None
        dup = text.replace('{"root": ', '{"root": 0, "root": ', 1)
        json.loads(dup)
        assert find_duplicate_key(dup) == ("root", len('{"root": 0, '))


# --- informational figures (the same rows as test/profile/invalid-profiles.test.ts)

INFORMATIONAL = [
    ("a negative ratio_compressed", lambda m: m["measured"].__setitem__("ratio_compressed", -19.4), r"measured\.ratio_compressed"),
    ("ratio_blob 0", lambda m: m["measured"].__setitem__("ratio_blob", 0), r"measured\.ratio_blob"),
    ("ratio_compressed 1e308", lambda m: m["measured"].__setitem__("ratio_compressed", 1e308), r"measured\.ratio_compressed"),
    (
        "ratio_compressed past the bound",
        lambda m: m["measured"].__setitem__("ratio_compressed", MAX_RATIO * 1.001),
        r"measured\.ratio_compressed",
    ),
    ("context_tokens 0", lambda m: m["measured"].__setitem__("context_tokens", 0), r"measured\.context_tokens"),
    (
        "a per-layer relative error of 2^53",
        lambda m: m["measured"]["rel_error"]["key"].__setitem__(2, 2**53),
        r"measured\.rel_error\.key\[2\]",
    ),
    (
        "a relative error past the bound",
        lambda m: m["measured"]["rel_error"]["key"].__setitem__(1, MAX_REL_ERROR * 1.001),
        r"measured\.rel_error\.key\[1\]",
    ),
    ("key_mean 1e308", lambda m: m["measured"]["rel_error"].__setitem__("key_mean", 1e308), r"measured\.rel_error\.key_mean"),
    ("a negative value_mean", lambda m: m["measured"]["rel_error"].__setitem__("value_mean", -0.5), r"measured\.rel_error\.value_mean"),
    (
        'a relative error "NaN" (a string)',
        lambda m: m["measured"]["rel_error"]["value"].__setitem__(0, "NaN"),
        r"measured\.rel_error\.value\[0\]",
    ),
    (
        "a reversed confidence interval",
        lambda m: m["measured"]["rel_error"].__setitem__("key_mean_ci95", [0.2, 0.1]),
        r"key_mean_ci95 is \[0\.2, 0\.1\]",
    ),
    (
        "per-layer errors for 4 of 5 layers",
        lambda m: m["measured"]["rel_error"]["value"].pop(),
        r"measured\.rel_error\.value must hold one figure per layer \(5\)",
    ),
    (
        "tuning key_mean -1",
        lambda m: m["measured"]["tuning_rel_error"].__setitem__("key_mean", -1),
        r"measured\.tuning_rel_error\.key_mean",
    ),
    (
        "a candidate's ratio 0",
        lambda m: m["calibration"]["grouping_candidates"][0].__setitem__("ratio_compressed", 0),
        r"grouping_candidates\[0\]\.ratio_compressed",
    ),
    ("sources[].bytes 0", lambda m: m["calibration"]["sources"][3].__setitem__("bytes", 0), r"calibration\.sources\[3\]\.bytes"),
    ("no sources", lambda m: m["calibration"].__setitem__("sources", []), r"calibration\.sources"),
    ("tokens_fit 0", lambda m: m["calibration"].__setitem__("tokens_fit", 0), r"calibration\.tokens_fit"),
    ("sequences 2^53", lambda m: m["calibration"].__setitem__("sequences", 2**53), r"calibration\.sequences"),
    ("an empty producer version", lambda m: m["producer"].__setitem__("version", ""), r"producer\.version"),
    ('grouping "fast"', lambda m: m["settings"].__setitem__("grouping", "fast"), r"settings\.grouping"),
    ("ratio_target 0", lambda m: m["settings"].__setitem__("ratio_target", 0), r"settings\.ratio_target"),
    (
        "heads not a multiple of kv_heads",
        lambda m: m["model"].__setitem__("heads", 6),
        r"model\.heads 6 is not a multiple of model\.kv_heads 4",
    ),
    ("model.max_positions 0", lambda m: m["model"].__setitem__("max_positions", 0), r"model\.max_positions"),
    ("model.max_positions 2^32 + 1", lambda m: m["model"].__setitem__("max_positions", 2**32 + 1), r"model\.max_positions"),
    (
        "measured contexts no longer than sink + window",
        lambda m: m["measured"].__setitem__("context_tokens", 132),
        r"context_tokens 132 leaves no compressed token after sink 4 \+ window 128",
    ),
]


@pytest.mark.parametrize("name,edit,pattern", INFORMATIONAL, ids=[r[0] for r in INFORMATIONAL])
def test_an_impossible_informational_figure_is_refused(tmp_path, name, edit, pattern):
    _refused(_with_manifest(tmp_path, edit), pattern)


def test_figures_at_the_edges_of_the_bounds_are_accepted(tmp_path):
    def edit(m):
        m["measured"]["rel_error"]["key"][0] = 0
        m["measured"]["rel_error"]["value"][0] = MAX_REL_ERROR
        m["measured"]["ratio_blob"] = MAX_RATIO
        m["model"]["max_positions"] = 2**32

    p = read_profile(_with_manifest(tmp_path, edit))
    assert p.max_positions == 2**32


# --- positions past the model's context


def _cache(profile, tokens, seed=3):
    g = np.random.default_rng(seed)
    return [
        tuple(g.standard_normal((profile.kv_heads, tokens, profile.head_dim)).astype(np.float32) for _ in range(2))
        for _ in range(profile.layers)
    ]


def _set_start(blob: bytes, start: int) -> bytes:
    b = bytearray(blob)
    struct.pack_into("<I", b, 20, start)
    struct.pack_into("<I", b, len(b) - 4, zlib.crc32(bytes(b[:-4])) & 0xFFFFFFFF)
    return bytes(b)


def test_decode_refuses_positions_past_model_max_positions():
    p = read_profile(STORIES)
    T = 40
    blob = encode(p, _cache(p, T), 0)
    for start in (512 - T + 1, 512, 2**24, 2**32 - T, 4_290_000_000):
        with pytest.raises(KvtcError) as ei:
            decode(p, _set_start(blob, start), source="far.kvtc")
        e = ei.value
        assert e.code == "BLOB_INVALID"
        assert (
            f"far.kvtc: header start_position {start} + {T} tokens puts its last token at position {start + T - 1}, "
            "but the model has 512 positions (0–511, the profile's model.max_positions)"
        ) in str(e)
        assert "re-encode" in e.fix
        assert e.context["max_positions"] == 512
    # Past 2^32 the header check refuses first, without the profile.
    with pytest.raises(KvtcError, match=r"runs past position 2\^32 − 1"):
        decode(p, _set_start(blob, 2**32 - 1))
    edge = decode(p, _set_start(blob, 512 - T))
    assert read_blob_header(_set_start(blob, 512 - T)).start_position == 512 - T
    assert all(np.isfinite(k).all() and np.isfinite(v).all() for k, v in edge)


def test_encode_refuses_a_cache_past_model_max_positions_and_old_profiles_bound_at_2_24():
    p = read_profile(STORIES)
    kv = _cache(p, 40)
    with pytest.raises(KvtcError) as ei:
        encode(p, kv, 512 - 39)
    assert ei.value.code == "KV_INVALID"
    assert "starts at position 473 with 40 tokens, so its last token is at position 512, but the model has 512 positions" in str(ei.value)
    assert read_blob_header(encode(p, kv, 512 - 40)).start_position == 472
    old = read_profile(V1)
    far = encode(old, kv, DEFAULT_MAX_POSITIONS - 40)
    assert read_blob_header(far).start_position == DEFAULT_MAX_POSITIONS - 40
    assert len(decode(old, far)) == old.layers
    with pytest.raises(KvtcError, match="does not record model.max_positions") as ei:
        encode(old, kv, DEFAULT_MAX_POSITIONS - 39)
    assert ei.value.code == "KV_INVALID"
    with pytest.raises(KvtcError, match=f"the model has {DEFAULT_MAX_POSITIONS} positions") as ei:
        decode(old, _set_start(far, DEFAULT_MAX_POSITIONS - 39))
    assert ei.value.code == "BLOB_INVALID"
