"""The .kvtc container (python/kvtc/blob.py, and decode's checks against the profile in codec.py):
the header of a committed Node blob, and every refusal.

Mutations that a check after the CRC must catch re-seal the blob with a correct CRC, so the check
under test is the one that refuses; the section table is rebuilt with kvtc.blob.assemble.
"""

import struct
import zlib

import kvtc
import numpy as np
import pytest
from kvtc import blob as kb
from kvtc.codec import payload_codes
from kvtc_testutil import FIXTURES, copy_profile, read_blob, regroup


def seal(data) -> bytes:
    """The blob with its CRC recomputed."""
    body = bytes(data[:-4])
    return body + struct.pack("<I", zlib.crc32(body) & 0xFFFFFFFF)


def patched(data: bytes, offset: int, fmt: str, *values, reseal: bool = True) -> bytes:
    b = bytearray(data)
    struct.pack_into(fmt, b, offset, *values)
    return seal(b) if reseal else bytes(b)


def sections_of(data: bytes):
    """(kind, codec, plan, stored bytes, decoded length) per section, read independently of kvtc."""
    count = struct.unpack_from("<H", data, 30)[0]
    at = kb.HEADER_BYTES + kb.SECTION_BYTES * count
    out = []
    for i in range(count):
        kind, codec, plan, stored, decoded = struct.unpack_from("<BBHII", data, kb.HEADER_BYTES + kb.SECTION_BYTES * i)
        out.append([kind, codec, plan, data[at : at + stored], decoded])
        at += stored
    return out


def rebuilt(data: bytes, sections, **header) -> bytes:
    h = kvtc.read_blob_header(data)
    fields = dict(
        float16=h.float16,
        raw_float32=h.raw_float32,
        profile_id=bytes.fromhex(h.profile_id),
        tokens=h.tokens,
        start_position=h.start_position,
        layers=h.layers,
        kv_heads=h.kv_heads,
        head_dim=h.head_dim,
        sink=h.sink,
        window=h.window,
    )
    fields.update(header)
    return kb.assemble(sections=[tuple(s) for s in sections], **fields)


def refused(profile, data, code="BLOB_INVALID", **kw):
    with pytest.raises(kvtc.KvtcError) as e:
        kvtc.decode(profile, data, **kw)
    assert e.value.code == code
    assert e.value.fix
    return e.value


# ------------------------------------------------------------------------------------------------
# A good blob


def test_header_of_the_node_blob(profile_v2, blob_v2):
    h = kvtc.read_blob_header(blob_v2)
    assert (h.version, h.tokens, h.start_position, h.sink, h.window) == (1, 256, 0, 4, 128)
    assert (h.layers, h.kv_heads, h.head_dim) == (5, 4, 8)
    assert h.profile_id == profile_v2.blob_id.hex()
    assert (h.dtype, h.float16, h.raw_float32, h.compressed_tokens) == ("float32", False, False, 124)
    assert h.section_count == 1 + sum(p.rank > 0 for p in profile_v2.plans)
    assert kvtc.read_blob_header(read_blob("v2-f16")).dtype == "float16"


def test_sections_of_the_node_blob_match_the_profile(profile_v2, blob_v2):
    secs = sections_of(blob_v2)
    assert secs[0][0] == kb.KIND_RAW and secs[0][1] == kb.CODEC_STORED
    assert secs[0][4] == 5 * 2 * 4 * (4 + 128) * 8 * 2  # fp16 sink + window rows
    for s, plan in zip(secs[1:], [p for p in profile_v2.plans if p.rank > 0]):
        assert (s[0], s[2], s[4]) == (kb.KIND_PLAN, plan.index, plan.payload_bytes(124))
        payload = s[3] if s[1] == kb.CODEC_STORED else zlib.decompress(s[3], -15)
        assert len(payload) == s[4]
    # assembling the same sections again gives the same bytes (header, table and CRC are integer work)
    assert rebuilt(blob_v2, secs) == blob_v2


@pytest.mark.parametrize(
    "wrap", [bytes, bytearray, memoryview, lambda b: np.frombuffer(b, dtype=np.uint8)], ids=["bytes", "bytearray", "memoryview", "numpy"]
)
def test_any_bytes_like_blob_decodes(profile_v2, blob_v2, wrap):
    ref = kvtc.decode(profile_v2, blob_v2)
    got = kvtc.decode(profile_v2, wrap(blob_v2))
    assert all(np.array_equal(a, b) for pa, pb in zip(ref, got) for a, b in zip(pa, pb))


def test_non_contiguous_buffer_is_copied(blob_v2):
    arr = np.frombuffer(blob_v2 * 2, dtype=np.uint8).reshape(2, -1)[:, : len(blob_v2)].T  # Fortran-ordered view
    assert kb.as_buffer(arr).tobytes() != b""  # reads without error


@pytest.mark.parametrize("value", ["KVTC", 42, None])
def test_a_blob_must_be_bytes_like(profile_v2, value):
    e = refused(profile_v2, value)
    assert "must be bytes-like" in e.message


# ------------------------------------------------------------------------------------------------
# Header (read_blob_header: checked before the CRC)


HEADER_REFUSALS = [
    ("too-short", lambda b: b[:51], "only 51 bytes; a kvtc blob has at least 52"),
    ("magic", lambda b: b"KVTD" + b[4:], 'does not start with the "KVTC" magic'),
    ("unknown-flag", lambda b: patched(b, 6, "<H", 4, reseal=False), "header flags 0x0004 set unknown bits"),
    ("both-flags", lambda b: patched(b, 6, "<H", 3, reseal=False), 'both "float16 cache" (bit 0) and "raw tokens stored as float32"'),
    ("reserved-byte", lambda b: patched(b, 45, "<B", 7, reseal=False), "reserved header byte 45 is 7, must be 0"),
    ("tokens-over-2^24", lambda b: patched(b, 16, "<I", 2**24 + 1, reseal=False), "a kvtc blob holds at most 16777216"),
    (
        "sink-window-over-tokens",
        lambda b: patched(b, 36, "<I", 300, reseal=False),
        "sink 4 + window 300 raw tokens, more than its 256 tokens",
    ),
    ("positions-past-2^32", lambda b: patched(b, 20, "<I", 2**32 - 100, reseal=False), "runs past position 2^32 − 1"),
]


@pytest.mark.parametrize("name,mutate,words", HEADER_REFUSALS, ids=[r[0] for r in HEADER_REFUSALS])
def test_header_refusal(profile_v2, blob_v2, name, mutate, words):
    bad = mutate(blob_v2)
    with pytest.raises(kvtc.KvtcError) as e:
        kvtc.read_blob_header(bad, "x.kvtc")
    assert e.value.code == "BLOB_INVALID" and words in e.value.message and e.value.message.startswith("x.kvtc: ")
    assert words in refused(profile_v2, bad).message  # decode runs the same checks first


@pytest.mark.parametrize("version,fix", [(2, "Upgrade the kvtc Python package"), (0, "Re-encode the cache")])
def test_other_blob_versions(profile_v2, blob_v2, version, fix):
    e = refused(profile_v2, patched(blob_v2, 4, "<H", version, reseal=False))
    assert f"blob format version {version}; this kvtc Python package reads version 1" in e.message and fix in e.fix


# ------------------------------------------------------------------------------------------------
# CRC and the blob against the profile


@pytest.mark.parametrize("where", [60, -5, 100], ids=["table", "last-payload-byte", "raw-section"])
def test_checksum_mismatch(profile_v2, blob_v2, where):
    b = bytearray(blob_v2)
    b[where] ^= 0x10
    assert "checksum mismatch" in refused(profile_v2, bytes(b)).message


def test_truncated_blob_fails_its_checksum(profile_v2, blob_v2):
    assert "checksum mismatch" in refused(profile_v2, blob_v2[:-100]).message


def test_blob_of_another_profile(profile_v1, blob_v2):
    e = refused(profile_v1, blob_v2, "BLOB_MISMATCH")
    assert (
        f"was encoded with profile {kvtc.read_blob_header(blob_v2).profile_id}, not with this profile ({profile_v1.blob_id.hex()})"
        in e.message
    )


@pytest.mark.parametrize("offset,field", [(24, "layers"), (26, "kv_heads"), (28, "head_dim")])
def test_blob_shape_differs_from_the_profile(profile_v2, blob_v2, offset, field):
    e = refused(profile_v2, patched(blob_v2, offset, "<H", 3))
    assert f"header {field} is 3, but the profile's model has" in e.message


def test_sink_and_window_differ_from_the_profile(profile_v2, blob_v2):
    e = refused(profile_v2, patched(blob_v2, 32, "<II", 5, 127))
    assert "header says sink 5 and window 127 for 256 tokens; the profile (sink 4, window 128) gives 4 and 128" in e.message


def test_output_larger_than_max_output_bytes(profile_v2, blob_v2):
    e = refused(profile_v2, blob_v2, max_output_bytes=100_000)
    assert "would allocate 327680 bytes, more than max_output_bytes=100000" in e.message


# ------------------------------------------------------------------------------------------------
# Section table


def test_section_count_differs_from_the_profile(profile_v2, blob_v2):
    e = refused(profile_v2, patched(blob_v2, 30, "<H", 2))
    assert "header says 2 sections; with 124 compressed tokens this profile's blob has 3" in e.message


def test_section_table_past_the_end(profile_v2, blob_v2):
    e = refused(profile_v2, seal(blob_v2[: kb.HEADER_BYTES + 12] + b"\0\0\0\0"))
    assert "section table (3 entries) runs past the end of the file" in e.message


TABLE = kb.HEADER_BYTES


@pytest.mark.parametrize(
    "name,mutate,words",
    [
        ("unknown-kind", lambda s: s[1].__setitem__(0, 2), "section 1 has unknown kind 2 (0 raw tokens, 1 plan)"),
        ("unknown-codec", lambda s: s[1].__setitem__(1, 2), "section 1 has unknown codec 2 (0 stored, 1 raw DEFLATE)"),
        (
            "raw-not-first",
            lambda s: s.insert(0, s.pop(1)),
            "section 0 is a plan section for plan index 0; section 0 must be the raw section with plan index 0",
        ),
        (
            "plans-out-of-order",
            lambda s: s.insert(1, s.pop(2)),
            "section 1 is a plan section for plan index 1; section 1 must be plan 0's section",
        ),
        ("decoded-bytes", lambda s: s[1].__setitem__(4, s[1][4] + 1), "section 1 (plan 0's section) declares"),
        (
            "raw-decoded-bytes",
            lambda s: s[0].__setitem__(4, len(s[0][3]) - 2) or s[0].__setitem__(3, s[0][3][:-2]),
            "section 0 (the raw section) declares 84478 decoded bytes; this profile needs 84480",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_section_table_refusal(profile_v2, blob_v2, name, mutate, words):
    secs = sections_of(blob_v2)
    mutate(secs)
    e = refused(profile_v2, rebuilt(blob_v2, secs))
    assert words in e.message, e.message


def test_stored_section_whose_sizes_differ(profile_v2, blob_v2):
    secs = sections_of(blob_v2)
    b = bytearray(rebuilt(blob_v2, secs))
    struct.pack_into("<I", b, TABLE + 4, len(secs[0][3]) - 1)  # stored bytes of the raw section
    b = bytearray(seal(b[:-5] + b[-4:]))  # one byte fewer in the file, as the table now says
    e = refused(profile_v2, bytes(b))
    assert "section 0 (the raw section) is stored uncompressed in 84479 bytes but declares 84480 decoded bytes" in e.message


def test_deflate_expansion_over_1032(profile_v2, blob_v2):
    secs = sections_of(blob_v2)
    need = secs[1][4]
    secs[1][3] = secs[1][3][: need // 1033]
    e = refused(profile_v2, rebuilt(blob_v2, secs))
    assert "DEFLATE expands at most 1032:1" in e.message


def test_stored_bytes_that_do_not_fill_the_file(profile_v2, blob_v2):
    b = bytearray(blob_v2[:-4])
    b += b"\0\0\0"  # three bytes between the last section and the CRC
    e = refused(profile_v2, seal(bytes(b) + b"\0\0\0\0"))
    stored = sum(len(s[3]) for s in sections_of(blob_v2))
    assert f"the section table declares {stored} stored bytes, but {stored + 3} lie between the table and the checksum" in e.message


# ------------------------------------------------------------------------------------------------
# Inflation


def _deflate(data: bytes) -> bytes:
    c = zlib.compressobj(level=6, wbits=-15)
    return c.compress(data) + c.flush()


def _with_plan0(blob, stored):
    secs = sections_of(blob)
    secs[1][1] = kb.CODEC_DEFLATE
    secs[1][3] = stored
    return rebuilt(blob, secs)


def _plan0_payload(blob):
    s = sections_of(blob)[1]
    return s[3] if s[1] == kb.CODEC_STORED else zlib.decompress(s[3], -15)


def test_section_that_is_not_deflate(profile_v2, blob_v2):
    e = refused(profile_v2, _with_plan0(blob_v2, b"\xff" * 64))
    assert "section 1 does not inflate to its declared" in e.message


def test_section_that_inflates_short(profile_v2, blob_v2):
    e = refused(profile_v2, _with_plan0(blob_v2, _deflate(_plan0_payload(blob_v2)[:-1])))
    assert f"section 1 decodes to {len(_plan0_payload(blob_v2)) - 1} bytes, the table says" in e.message


def test_section_that_inflates_long(profile_v2, blob_v2):
    e = refused(profile_v2, _with_plan0(blob_v2, _deflate(_plan0_payload(blob_v2) + b"\0")))
    assert "section 1 decodes to more than" in e.message


def test_stray_bytes_after_the_deflate_stream(profile_v2, blob_v2):
    e = refused(profile_v2, _with_plan0(blob_v2, _deflate(_plan0_payload(blob_v2)) + b"junk"))
    assert "section 1 has 4 stray bytes after its DEFLATE stream" in e.message


def test_inflate_never_produces_more_than_declared_plus_one():
    payload = b"\0" * 100_000
    z = _deflate(payload)
    s = kb.Section(kb.KIND_PLAN, kb.CODEC_DEFLATE, 0, 0, len(z), 10)
    with pytest.raises(kvtc.KvtcError) as e:
        kb.inflate(z, s)
    assert "decodes to more than 10 bytes" in e.value.message


# ------------------------------------------------------------------------------------------------
# Values a blob stores


def test_non_finite_raw_fp16_value(profile_v2, blob_v2):
    secs = sections_of(blob_v2)
    raw = bytearray(secs[0][3])
    # layer 0, keys, head 0, raw row 5 (the window's second token: token 256 − 128 + 1), dim 2
    struct.pack_into("<H", raw, ((0 * (4 + 128)) + 5) * 8 * 2 + 2 * 2, 0x7C00)
    secs[0][3] = bytes(raw)
    e = refused(profile_v2, rebuilt(blob_v2, secs))
    assert "the raw section stores a non-finite key for layer 0, head 0, token 129, dim 2" in e.message


def test_non_finite_raw_float32_value(profile_v2, cache_f32):
    layers = [(k.copy(), v.copy()) for k, v in cache_f32.layers]
    layers[2][1][1, 0, 3] = 70000.0  # a sink value fp16 cannot hold: raw section stored as float32
    good = kvtc.encode(profile_v2, layers)
    assert kvtc.read_blob_header(good).raw_float32
    assert kvtc.decode(profile_v2, good)[2][1][1, 0, 3] == np.float32(70000.0)  # lossless
    secs = sections_of(good)
    raw = bytearray(secs[0][3])
    struct.pack_into("<f", raw, 0, float("nan"))
    secs[0][3] = bytes(raw)
    e = refused(profile_v2, rebuilt(good, secs))
    assert "the raw section stores a non-finite key for layer 0, head 0, token 0, dim 0" in e.message


@pytest.fixture(scope="module")
def fp8_dynamic_profile(tmp_path_factory):
    """profile-v2 with plan 0 as dynamic fp8 (components 0–9) and dynamic int4 (10–52)."""
    d = copy_profile(tmp_path_factory.mktemp("fp8") / "p")
    regroup(d, {0: (53, [(0, 10, "fp8", "dynamic"), (10, 53, "int4", "dynamic")])})
    return kvtc.read_profile(d)


def test_fp8_nan_code(fp8_dynamic_profile, cache_f32):
    p = fp8_dynamic_profile
    good = kvtc.encode(p, cache_f32.layers, entropy="stored")
    secs = sections_of(good)
    payload = bytearray(secs[1][3])
    payload[124 * 3 + 7] = 0x7F  # component 3, compressed token 7
    secs[1][3] = bytes(payload)
    e = refused(p, rebuilt(good, secs))
    assert "plan 0 stores fp8 code 0x7f (NaN, never written) for component 3 of compressed token 7" in e.message


@pytest.mark.parametrize("which,at", [("offset", 0), ("scale", 1)])
def test_non_finite_dynamic_offset_or_scale(fp8_dynamic_profile, cache_f32, which, at):
    p = fp8_dynamic_profile
    n = 124
    good = kvtc.encode(p, cache_f32.layers, entropy="stored")
    secs = sections_of(good)
    payload = bytearray(secs[1][3])
    codes_len = (10 * n * 8 + 7) // 8 + (43 * n * 4 + 7) // 8
    struct.pack_into("<H", payload, codes_len + at * 2 * n + 2 * 6, 0xFC00)  # first dynamic group, token 6: −∞
    secs[1][3] = bytes(payload)
    e = refused(p, rebuilt(good, secs))
    assert f"plan 0, dynamic group 0–9: the fp16 {which} of compressed token 6 is 0xfc00 (not finite)" in e.message


def test_payload_length_is_checked(profile_v2):
    with pytest.raises(kvtc.KvtcError) as e:
        payload_codes(profile_v2.plans[0], 124, b"\0" * 10)
    assert e.value.code == "BLOB_INVALID" and f"payload of 10 bytes, expected {profile_v2.plans[0].payload_bytes(124)}" in e.value.message


def test_a_blob_decodes_only_with_the_profile_fixture_it_was_made_with():
    """The committed v1 blob names the committed v1 profile, not the bundled one."""
    h = kvtc.read_blob_header(read_blob("v1-f32"))
    assert h.profile_id == kvtc.read_profile(FIXTURES / "profile-v1").blob_id.hex()
