"""kvtc.read_profile (python/kvtc/profile.py): both committed profiles read, and every refusal.

Each refusal edits a copy of a committed profile and checks the KvtcError's code and the words of
its message that name the problem. Edits to fields checked before the profile id leave the id as
it is; edits checked after it (RoPE frequencies, the tensor file, values) re-derive the id, so the
check under test is the one that refuses.
"""

import hashlib
import json
import os
import re
import struct

import kvtc
import numpy as np
import pytest
from kvtc.profile import MANIFEST_FILE, MAX_MANIFEST_BYTES, TENSORS_FILE, expected_profile_id, profile_id_text
from kvtc_testutil import (
    FIXTURES,
    copy_profile,
    edit_manifest,
    layout,
    load_manifest,
    load_tensors,
    raw_tensor_file,
    save_manifest,
    write_tensor_bytes,
    write_tensors,
)

# ------------------------------------------------------------------------------------------------
# What a good profile reads as


def test_format_2_profile_reads_as_its_manifest_says(profile_v2):
    m = json.loads((FIXTURES / "profile-v2" / MANIFEST_FILE).read_text("utf-8"))
    p = profile_v2
    assert m["format_version"] == 2
    assert (p.layers, p.kv_heads, p.head_dim, p.kv_dtype) == (5, 4, 8, "float32")
    assert (p.sink, p.window, p.entropy) == (m["settings"]["sink"], m["settings"]["window"], m["settings"]["entropy"])
    assert p.profile_id == m["profile_id"] == expected_profile_id(m)
    assert p.blob_id == bytes.fromhex(m["profile_id"])[:8]
    assert p.fingerprint["id"] == m["model"]["fingerprint"]["id"]
    assert p.rope is not None and (p.rope.theta, p.rope.rotary_dim, p.rope.layout) == (10000.0, 8, "half")
    assert p.layer_ropes == [p.rope] * 5
    assert [(pl.kind, pl.layers, pl.dim, pl.rank) for pl in p.plans] == [
        (pe["kind"], tuple(pe["layers"]), pe["dim"], pe["rank"]) for pe in m["plans"]
    ]
    t = load_tensors(FIXTURES / "profile-v2")
    for pl, pe in zip(p.plans, m["plans"]):
        assert pl.basis.dtype == np.float32 and pl.basis.shape == (pl.dim, pl.rank)
        np.testing.assert_array_equal(pl.basis, t[pe["tensors"]["basis"]])
        np.testing.assert_array_equal(pl.mean, t[pe["tensors"]["mean"]])
        G = pl.basis.astype(np.float64).T @ pl.basis.astype(np.float64)
        assert np.max(np.abs(G - np.eye(pl.rank))) < 1e-4  # orthonormal, as the reader requires
        assert pl.bits_per_token == sum(g.width * g.bits + (32 if g.mode == "dynamic" else 0) for g in pl.groups)


def test_format_1_profile_reads_with_one_plan_per_layer_and_kind(profile_v1):
    p = profile_v1
    assert load_manifest(FIXTURES / "profile-v1")["format_version"] == 1
    assert sorted((pl.kind, pl.layers) for pl in p.plans) == sorted((k, (l,)) for k in ("key", "value") for l in range(5))
    assert all(pl.dim == 32 for pl in p.plans)
    assert p.rope is not None and p.layer_ropes == [p.rope] * 5


def test_profile_path_may_name_the_manifest_file():
    p = kvtc.read_profile(FIXTURES / "profile-v2" / MANIFEST_FILE)
    assert p.profile_id == load_manifest(FIXTURES / "profile-v2")["profile_id"]


def test_split_clamps_sink_and_window_to_the_cache(profile_v2):
    assert profile_v2.split(256) == (4, 128, 124)
    assert profile_v2.split(100) == (4, 96, 0)
    assert profile_v2.split(3) == (3, 0, 0)
    assert profile_v2.split(0) == (0, 0, 0)


def test_profile_id_text_is_the_canonical_text_of_spec_2_1():
    m = load_manifest(FIXTURES / "profile-v2")
    text = profile_id_text(m)
    lines = text.splitlines()
    assert lines[0] == "kvtc-profile-id 1" and lines[1] == f"tensors.sha256 {m['tensors']['sha256']}"
    assert "model.rope.theta " + struct.pack(">d", 10000.0).hex() in lines  # reals as binary64 bits
    assert text.endswith("\n")
    assert hashlib.sha256(text.encode()).hexdigest()[:16] == m["profile_id"]


def test_edits_that_decoding_ignores_keep_the_profile_readable(tmp_path):
    d = copy_profile(tmp_path / "p")

    # (within the ranges the reader checks informational fields against: test_reader_bounds.py)
    def edit(m):
        m["calibration"]["sources"][0]["name"] = "edited.txt"
        m["measured"]["ratio_blob"] = 2.5
        m["measured"]["rel_error"]["key"] = [0.5] * len(m["measured"]["rel_error"]["key"])

    edit_manifest(d, edit)
    assert kvtc.read_profile(d).profile_id == load_manifest(d)["profile_id"]


# ------------------------------------------------------------------------------------------------
# Files


def _refused(path, code="PROFILE_INVALID", **kw):
    with pytest.raises(kvtc.KvtcError) as e:
        kvtc.read_profile(path, **kw)
    assert e.value.code == code
    assert e.value.fix  # every refusal says what to do
    return e.value


def test_missing_directory(tmp_path):
    e = _refused(tmp_path / "nope")
    assert "does not exist" in e.message and "kvtc calibrate" in e.fix


def test_directory_without_manifest(tmp_path):
    e = _refused(tmp_path)
    assert f"no {MANIFEST_FILE}" in e.message


def test_manifest_larger_than_the_limit(tmp_path):
    d = copy_profile(tmp_path / "p")
    with open(d / MANIFEST_FILE, "r+b") as f:
        f.truncate(MAX_MANIFEST_BYTES + 1)  # sparse: nothing is written
    assert "larger than" in _refused(d).message


@pytest.mark.parametrize(
    "raw", [b"\xff\xfe{}", b'{"format": ', b"[" * 100000 + b"]" * 100000], ids=["not-utf8", "truncated-json", "deep-nesting"]
)
def test_manifest_not_utf8_json(tmp_path, raw):
    d = copy_profile(tmp_path / "p")
    (d / MANIFEST_FILE).write_bytes(raw)
    assert re.search(r"not valid (UTF-8 \(byte 0xff at offset 0\)|JSON)", _refused(d).message)


def test_manifest_not_an_object(tmp_path):
    d = copy_profile(tmp_path / "p")
    (d / MANIFEST_FILE).write_text("[1, 2]")
    assert "not a JSON object" in _refused(d).message


def test_tensor_file_missing(tmp_path):
    d = copy_profile(tmp_path / "p")
    os.unlink(d / TENSORS_FILE)
    assert f"tensor file {TENSORS_FILE} is missing" in _refused(d).message


def test_tensor_file_not_a_regular_file(tmp_path):
    d = copy_profile(tmp_path / "p")
    os.unlink(d / TENSORS_FILE)
    os.mkdir(d / TENSORS_FILE)
    assert "is not a regular file" in _refused(d).message


# ------------------------------------------------------------------------------------------------
# Format and version


def test_not_a_kvtc_profile(tmp_path):
    d = copy_profile(tmp_path / "p")
    edit_manifest(d, lambda m: m.update(format="other"))
    assert 'is not a kvtc profile (format is "other"' in _refused(d).message


def test_newer_format_version_names_the_writer_and_says_upgrade(tmp_path):
    d = copy_profile(tmp_path / "p")
    edit_manifest(d, lambda m: m.update(format_version=4, producer={"name": "kvtc", "version": "9.9.9"}))
    e = _refused(d, "PROFILE_VERSION")
    assert "format version 4" in e.message and "reads versions 1, 2 and 3" in e.message
    assert "kvtc 9.9.9" in e.fix and "upgrade" in e.fix
    assert e.context["format_version"] == 4


@pytest.mark.parametrize("version", [0, "2", True, None, 1.5])
def test_other_format_versions_say_recalibrate(tmp_path, version):
    d = copy_profile(tmp_path / "p")
    edit_manifest(d, lambda m: m.update(format_version=version))
    e = _refused(d, "PROFILE_VERSION")
    assert "Re-calibrate" in e.fix


# ------------------------------------------------------------------------------------------------
# Manifest fields (checked before the profile id)


def _set(path, value):
    """An edit setting manifest[path...] = value (a missing value deletes the key)."""

    def edit(m):
        *head, last = path
        o = m
        for k in head:
            o = o[k]
        if value is _DELETE:
            del o[last]
        else:
            o[last] = value

    return edit


_DELETE = object()
V1_ROPE = {"theta": 10000, "rotary_dim": 8, "layout": "half"}
GROUP = ("model", "rope", 0)

MANIFEST_REFUSALS = [
    ("model-missing", _set(("model",), _DELETE), "model is missing or not an object"),
    ("layers-zero", _set(("model", "layers"), 0), "model.layers is 0; expected an integer in [1, 65535]"),
    ("layers-fraction", _set(("model", "layers"), 1.5), "model.layers is 1.5"),
    ("layers-bool", _set(("model", "layers"), True), "model.layers is true"),
    ("kv-heads-huge", _set(("model", "kv_heads"), 70000), "model.kv_heads is 70000"),
    ("head-dim-string", _set(("model", "head_dim"), "8"), 'model.head_dim is "8"'),
    ("kv-dtype", _set(("model", "kv_dtype"), "bfloat16"), 'model.kv_dtype is "bfloat16"; expected one of float32, float16'),
    ("rope-object-in-v2", _set(("model", "rope"), V1_ROPE), "model.rope is one RoPE object (format 1)"),
    ("rope-empty", _set(("model", "rope"), []), "model.rope is one RoPE object (format 1)"),
    ("rope-group-not-object", _set(("model", "rope"), [5]), "model.rope[0] is missing or not an object"),
    ("rope-layers-empty", _set(GROUP + ("layers",), []), "model.rope[0].layers must list at least one layer"),
    ("rope-layer-out-of-range", _set(GROUP + ("layers",), [0, 1, 2, 3, 5]), "model.rope[0].layers is 5; expected an integer in [0, 4]"),
    ("rope-layers-descending", _set(GROUP + ("layers",), [0, 2, 1, 3, 4]), "model.rope[0].layers must be ascending (2 then 1)"),
    ("rope-layer-missing", _set(GROUP + ("layers",), [0, 1, 2, 3]), "model.rope names no RoPE (or none) for layer 4"),
    (
        "rope-layer-twice",
        _set(("model", "rope"), [{**V1_ROPE, "layers": [0, 1, 2]}, {**V1_ROPE, "layers": [2, 3, 4]}]),
        "model.rope[1].layers names layer 2, which model.rope[0] names too",
    ),
    ("theta-zero", _set(GROUP + ("theta",), 0), "model.rope[0].theta is 0; expected a finite number > 0"),
    ("theta-string", _set(GROUP + ("theta",), "1e4"), 'model.rope[0].theta is "1e4"'),
    ("rotary-odd", _set(GROUP + ("rotary_dim",), 7), "rotary_dim = 7 is odd"),
    ("rotary-over-head-dim", _set(GROUP + ("rotary_dim",), 10), "rotary_dim = 10 exceeds model.head_dim 8"),
    ("layout", _set(GROUP + ("layout",), "pairs"), 'model.rope[0].layout is "pairs"'),
    ("attention-factor", _set(GROUP + ("attention_factor",), -1), "model.rope[0].attention_factor is -1"),
    ("scaling-not-object", _set(GROUP + ("scaling",), 2), "model.rope[0].scaling is missing or not an object"),
    ("scaling-type", _set(GROUP + ("scaling",), {"type": "ntk", "factor": 2}), 'model.rope[0].scaling.type is "ntk"'),
    (
        "scaling-factor-missing",
        _set(GROUP + ("scaling",), {"type": "linear"}),
        "model.rope[0].scaling.factor is missing; linear scaling needs it",
    ),
    ("scaling-factor-negative", _set(GROUP + ("scaling",), {"type": "linear", "factor": -2}), "model.rope[0].scaling.factor is -2"),
    (
        "llama3-frequencies",
        _set(
            GROUP + ("scaling",),
            {"type": "llama3", "factor": 8, "low_freq_factor": 4, "high_freq_factor": 1, "original_max_position_embeddings": 8192},
        ),
        "high_freq_factor 1.0 must be greater than low_freq_factor 4.0",
    ),
    (
        "yarn-truncate",
        _set(
            GROUP + ("scaling",),
            {"type": "yarn", "factor": 4, "original_max_position_embeddings": 4096, "beta_fast": 32, "beta_slow": 1, "truncate": "yes"},
        ),
        "model.rope[0].scaling.truncate must be true or false",
    ),
    (
        "longrope-factors",
        _set(
            GROUP + ("scaling",),
            {"type": "longrope", "original_max_position_embeddings": 4096, "short_factor": [1, 1, 1, 1], "long_factor": [1, 1]},
        ),
        "model.rope[0].scaling.long_factor must hold 4 factors (rotary_dim 8)",
    ),
    (
        "longrope-factor-value",
        _set(
            GROUP + ("scaling",),
            {"type": "longrope", "original_max_position_embeddings": 4096, "short_factor": [1, 1, 0, 1], "long_factor": [1, 1, 1, 1]},
        ),
        "model.rope[0].scaling.short_factor is 0",
    ),
    ("sink-negative", _set(("settings", "sink"), -1), "settings.sink is -1"),
    ("window-huge", _set(("settings", "window"), 2**32), "settings.window is 4294967296"),
    ("entropy", _set(("settings", "entropy"), "zstd"), 'settings.entropy is "zstd"; expected one of deflate-rle'),
    ("settings-missing", _set(("settings",), _DELETE), "settings is missing or not an object"),
    ("tensors-file", _set(("tensors", "file"), "other.safetensors"), 'tensors.file is "other.safetensors"'),
    ("tensors-sha", _set(("tensors", "sha256"), "ABC"), 'tensors.sha256 "ABC" is not 64 lowercase hex digits'),
    ("tensors-bytes", _set(("tensors", "bytes"), -5), "tensors.bytes is -5"),
    ("plans-empty", _set(("plans",), []), "plans is missing or empty"),
    ("plans-too-many", _set(("plans",), [{}] * 65537), "65537 plans; a blob section names at most 65536"),
    ("plan-not-object", _set(("plans", 0), "x"), "plans[0] is missing or not an object"),
    ("plan-index", _set(("plans", 0, "index"), 1), "plans[0].index is 1, but a plan's index must equal its position 0"),
    ("plan-kind", _set(("plans", 0, "kind"), "query"), 'plans[0].kind is "query"'),
    ("plan-layers-empty", _set(("plans", 0, "layers"), []), "plans[0].layers is missing or empty"),
    (
        "plan-layer-not-in-model",
        _set(("plans", 0, "layers"), [0, 1, 2, 3, 5]),
        "plans[0].layers[4] = 5 is not a layer of the model (it has 5: 0–4)",
    ),
    (
        "plan-layer-twice",
        _set(("plans", 0, "layers"), [0, 1, 2, 3, 3]),
        "plans[0].layers[4]: key layer 3 is already covered by another plan",
    ),
    ("plan-dim", _set(("plans", 0, "dim"), 128), "plans[0].dim is 128, but 5 layers × 4 KV heads × 8 head dim = 160"),
    ("plan-rank-over-dim", _set(("plans", 0, "rank"), 161), "plans[0].rank 161 exceeds its dim 160"),
    ("plan-budget", _set(("plans", 0, "budget_bits"), -1), "plans[0].budget_bits is -1"),
    ("plan-bits", _set(("plans", 0, "bits_per_token"), 0.5), "plans[0].bits_per_token is 0.5"),
    ("groups-missing", _set(("plans", 0, "groups"), _DELETE), "plans[0].groups is missing"),
    ("group-type", _set(("plans", 0, "groups", 0, "type"), "int3"), 'plans[0].groups[0].type is "int3"'),
    ("group-mode", _set(("plans", 0, "groups", 0, "mode"), "adaptive"), 'plans[0].groups[0].mode is "adaptive"'),
    ("group-start", _set(("plans", 0, "groups", 0, "start"), -1), "plans[0].groups[0].start is -1"),
    ("groups-overlap", _set(("plans", 0, "groups", 1, "start"), 10), "plans[0].groups[1] starts at 10, before the previous group's end 14"),
    ("group-empty", _set(("plans", 0, "groups", 0, "end"), 0), "plans[0].groups[0] is empty or reversed ([0, 0))"),
    ("group-past-rank", _set(("plans", 0, "groups", 1, "end"), 54), "plans[0].groups[1] ends at 54, past the rank 53"),
    ("groups-short-of-rank", _set(("plans", 0, "groups", 1, "end"), 52), "the last group ends at 52, but the rank is 53"),
    ("bits-per-token", _set(("plans", 0, "bits_per_token"), 1), "plans[0].bits_per_token is 1, but its groups use 134 bits per token"),
    ("over-budget", _set(("plans", 0, "budget_bits"), 100), "plans[0] uses 134 bits per token, over its budget_bits 100"),
    ("tensor-name", _set(("plans", 0, "tensors", "mean"), "a/b"), 'plans[0].tensors.mean is "a/b"; a tensor name is 1–128'),
    ("tensor-name-reused", _set(("plans", 1, "tensors", "mean"), None), None),  # filled in below
    ("tensors-missing", _set(("plans", 0, "tensors"), _DELETE), "plans[0].tensors is missing or not an object"),
    ("profile-id-format", _set(("profile_id",), "XYZ"), 'profile_id "XYZ" is not 16 lowercase hex digits'),
    (
        "profile-id-wrong",
        _set(("profile_id",), "0123456789abcdef"),
        "profile_id 0123456789abcdef does not match the tensor file hash and the manifest fields",
    ),
]


def _reuse_name(m):
    m["plans"][1]["tensors"]["mean"] = m["plans"][0]["tensors"]["basis"]


MANIFEST_REFUSALS[[r[0] for r in MANIFEST_REFUSALS].index("tensor-name-reused")] = (
    "tensor-name-reused",
    _reuse_name,
    "plans[1].tensors.mean names tensor",
)


@pytest.mark.parametrize("name,edit,words", MANIFEST_REFUSALS, ids=[r[0] for r in MANIFEST_REFUSALS])
def test_manifest_refusal(tmp_path, name, edit, words):
    d = copy_profile(tmp_path / "p")
    edit_manifest(d, edit)
    e = _refused(d)
    assert words in e.message, e.message
    assert e.context["profile"] == str(d)


def test_plans_must_cover_every_layer_and_kind(tmp_path):
    d = copy_profile(tmp_path / "p", "profile-v1")
    edit_manifest(d, lambda m: m.update(plans=m["plans"][:-1]))
    assert "plans cover 9 of the 10 (kind, layer) pairs; missing: value 4" in _refused(d).message


def test_format_1_holds_one_rope_object(tmp_path):
    d = copy_profile(tmp_path / "p", "profile-v1")
    edit_manifest(d, lambda m: m["model"].update(rope=[{**V1_ROPE, "layers": [0, 1, 2, 3, 4]}]))
    assert "model.rope is a list of groups, which is format 2" in _refused(d).message


def test_format_1_knows_only_linear_and_llama3_scaling(tmp_path):
    d = copy_profile(tmp_path / "p", "profile-v1")
    yarn = {"type": "yarn", "factor": 4, "original_max_position_embeddings": 4096, "beta_fast": 32, "beta_slow": 1, "truncate": True}
    edit_manifest(d, lambda m: m["model"]["rope"].update(scaling=yarn))
    assert 'model.rope.scaling.type is "yarn"; expected one of linear, llama3' in _refused(d).message


def test_profile_id_of_the_old_rule_is_named_as_such(tmp_path):
    d = copy_profile(tmp_path / "p")
    edit_manifest(d, lambda m: m.update(profile_id=m["tensors"]["sha256"][:16]))
    assert "follows the old rule (the tensor file hash alone)" in _refused(d).message


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m["settings"].update(sink=5),
        lambda m: m["model"]["rope"][0].update(theta=500000),
        lambda m: (
            m["plans"][0]["groups"][0].update(type="int8", mode="static") or m["plans"][0].update(bits_per_token=190, budget_bits=1000)
        ),
        lambda m: m["tensors"].update(sha256="0" * 64),
    ],
    ids=["sink", "rope-theta", "plan-group", "tensor-hash"],
)
def test_an_edit_to_what_decoding_uses_breaks_the_profile_id(tmp_path, edit):
    d = copy_profile(tmp_path / "p")
    edit_manifest(d, edit)
    assert "does not match the tensor file hash and the manifest fields decoding uses" in _refused(d).message


def test_rope_giving_an_infinite_frequency(tmp_path):
    d = copy_profile(tmp_path / "p")
    # a positive, finite scaling factor so small that inv_freq / factor overflows
    edit_manifest(d, lambda m: m["model"]["rope"][0].update(scaling={"type": "linear", "factor": 5e-324}), fix_id=True)
    assert "model.rope gives inverse frequency inf for pair 0; every one must be finite and > 0" in _refused(d).message


# ------------------------------------------------------------------------------------------------
# The tensor file (checked after the profile id: each case re-binds the manifest to the new file)


def _base(d):
    return load_tensors(d)


def test_tensor_file_size_differs_from_the_manifest(tmp_path):
    d = copy_profile(tmp_path / "p")
    with open(d / TENSORS_FILE, "ab") as f:
        f.write(b"\0" * 8)
    assert "but tensors.bytes says" in _refused(d).message


def test_truncated_tensor_file(tmp_path):
    d = copy_profile(tmp_path / "p")
    data = (d / TENSORS_FILE).read_bytes()
    write_tensor_bytes(d, data[: len(data) // 2])
    assert "but the plans' tensors take" in _refused(d).message


def test_tensor_file_over_max_tensor_bytes(tmp_path):
    e = _refused(FIXTURES / "profile-v2", max_tensor_bytes=1000)
    assert "more than max_tensor_bytes=1000" in e.message and "larger max_tensor_bytes" in e.fix


def test_tensor_file_modified(tmp_path):
    d = copy_profile(tmp_path / "p")
    data = bytearray((d / TENSORS_FILE).read_bytes())
    data[-1] ^= 0x01
    (d / TENSORS_FILE).write_bytes(bytes(data))
    assert "does not match the sha256 in the manifest (modified or corrupt)" in _refused(d).message


def _with_header(d, mutate, pad=True, data_edit=None):
    header, data = layout(_base(d))
    mutate(header)
    if data_edit:
        data = data_edit(data)
    write_tensor_bytes(d, raw_tensor_file(header, data, pad=pad))


def test_header_length_that_does_not_fit(tmp_path):
    d = copy_profile(tmp_path / "p")
    header, data = layout(_base(d))
    blob = bytearray(raw_tensor_file(header, data))
    struct.pack_into("<Q", blob, 0, len(blob))
    write_tensor_bytes(d, bytes(blob))
    assert "header length" in _refused(d).message and "does not fit" in _refused(d).message


def test_header_length_not_a_multiple_of_8(tmp_path):
    d = copy_profile(tmp_path / "p")
    header, data = layout(_base(d))
    hb = json.dumps(header, separators=(",", ":")).encode()
    if len(hb) % 8 == 0:
        hb += b" "
    write_tensor_bytes(d, struct.pack("<Q", len(hb)) + hb + data)
    assert "is not a multiple of 8" in _refused(d).message


def test_header_not_json(tmp_path):
    d = copy_profile(tmp_path / "p")
    _, data = layout(_base(d))
    hb = b"{not json}      "
    write_tensor_bytes(d, struct.pack("<Q", len(hb)) + hb + data)
    assert "header is not valid UTF-8 JSON" in _refused(d).message


def test_header_not_an_object(tmp_path):
    d = copy_profile(tmp_path / "p")
    _, data = layout(_base(d))
    hb = b"[1, 2]  "
    write_tensor_bytes(d, struct.pack("<Q", len(hb)) + hb + data)
    assert "header is not a JSON object" in _refused(d).message


TENSOR_REFUSALS = [
    ("metadata-not-strings", lambda h: h.update(__metadata__={"format": 1}), "__metadata__ is not an object of strings"),
    (
        "extra-tensor",
        lambda h: h.update(extra={"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}),
        "tensor extra is not used by any plan",
    ),
    ("extra-entry-key", lambda h: h[_first(h)].update(note="x"), "entry must be exactly {dtype, shape, data_offsets}"),
    ("dtype", lambda h: h[_first(h)].update(dtype="F16"), 'has dtype "F16", expected F32'),
    ("shape", lambda h: h[_first(h)].update(shape=[1, 2]), "the plan declares"),
    ("offsets-outside", lambda h: h[_last(h)].update(data_offsets=[h[_last(h)]["data_offsets"][0], 10**9]), "outside the"),
    ("offsets-reversed", lambda h: h[_first(h)].update(data_offsets=[8, 4]), "outside the"),
    (
        "bytes-vs-shape",
        lambda h: h[_last(h)].update(data_offsets=[h[_last(h)]["data_offsets"][0] + 4, h[_last(h)]["data_offsets"][1]]),
        "bytes, but F32",
    ),
    ("missing-tensor", lambda h: h.pop(_last(h)), "is missing"),
]


def _first(h):
    return min((k for k in h if k != "__metadata__"), key=lambda k: h[k]["data_offsets"][0])


def _last(h):
    return max((k for k in h if k != "__metadata__"), key=lambda k: h[k]["data_offsets"][0])


@pytest.mark.parametrize("name,mutate,words", TENSOR_REFUSALS, ids=[r[0] for r in TENSOR_REFUSALS])
def test_tensor_header_refusal(tmp_path, name, mutate, words):
    d = copy_profile(tmp_path / "p")
    _with_header(d, mutate)
    e = _refused(d)
    assert words in e.message, e.message


def test_tensor_data_must_be_contiguous(tmp_path):
    d = copy_profile(tmp_path / "p")

    def gap(h):  # every tensor moves 4 bytes on: a gap before the first
        for k, e in h.items():
            if k != "__metadata__":
                e["data_offsets"] = [e["data_offsets"][0] + 4, e["data_offsets"][1] + 4]

    _with_header(d, gap, data_edit=lambda b: b"\0" * 4 + b)
    assert "starts at data offset 4, but the previous tensor ends at 0 (the data must be contiguous)" in _refused(d).message


def test_trailing_bytes_after_the_last_tensor(tmp_path):
    d = copy_profile(tmp_path / "p")
    _with_header(d, lambda h: None, data_edit=lambda b: b + b"\0" * 8)
    assert "8 bytes after the last tensor's data" in _refused(d).message


# ------------------------------------------------------------------------------------------------
# Values


def _edit_tensor(d, plan, role, edit):
    m = load_manifest(d)
    t = _base(d)
    name = m["plans"][plan]["tensors"][role]
    t[name] = edit(t[name].copy())
    write_tensors(d, t)
    return name


@pytest.mark.parametrize("role", ["mean", "basis", "variances", "lo", "hi"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_non_finite_values(tmp_path, role, bad):
    d = copy_profile(tmp_path / "p")

    def put(a):
        a.reshape(-1)[3] = bad
        return a

    name = _edit_tensor(d, 1, role, put)
    e = _refused(d)
    assert f"plan 1 {role}[3] (tensor {name}) = " in e.message


@pytest.mark.parametrize("role", ["mean", "lo", "hi"])
def test_values_beyond_the_bound(tmp_path, role):
    d = copy_profile(tmp_path / "p")

    def put(a):
        a[0] = -2e12 if role == "lo" else 2e12  # lo stays ≤ hi
        return a

    _edit_tensor(d, 0, role, put)
    assert "holds a value beyond ±1e+12" in _refused(d).message


def test_static_lo_above_hi(tmp_path):
    d = copy_profile(tmp_path / "p")
    lo = _base(d)[load_manifest(d)["plans"][0]["tensors"]["lo"]]
    _edit_tensor(d, 0, "hi", lambda a: (a.__setitem__(5, lo[5] - 1.0), a)[1])
    assert "plan 0 component 5: lo" in _refused(d).message


def test_basis_not_orthonormal(tmp_path):
    d = copy_profile(tmp_path / "p")
    _edit_tensor(d, 1, "basis", lambda a: a * np.float32(1.001))
    e = _refused(d)
    assert "plan 1 basis" in e.message and "is not orthonormal" in e.message


def test_orthonormality_check_of_large_bases_uses_probes():
    """Above FULL_ORTHO_WORK the check samples; it must still accept an orthonormal basis and see a
    scaled column (exact column norms are always checked)."""
    from kvtc.profile import FULL_ORTHO_WORK, _orthonormality_error

    rng = np.random.default_rng(1)
    p, r = 4096, 256
    assert p * r * r > FULL_ORTHO_WORK
    V, _ = np.linalg.qr(rng.standard_normal((p, r)))
    assert _orthonormality_error(V.astype(np.float32), 0) < 1e-5
    V[:, 7] *= 1.01
    assert _orthonormality_error(V.astype(np.float32), 0) > 1e-3


def test_errors_are_json_serializable(tmp_path):
    e = _refused(tmp_path / "nope")
    assert json.loads(json.dumps(e.to_dict()))["code"] == "PROFILE_INVALID"
    assert str(e).startswith("PROFILE_INVALID: ") and "(fix: " in str(e)


def test_save_manifest_with_fix_id_round_trips(tmp_path):
    """The helper other tests rely on: re-deriving the id of an untouched manifest is a no-op."""
    d = copy_profile(tmp_path / "p")
    m = load_manifest(d)
    save_manifest(d, dict(m), fix_id=True)
    assert load_manifest(d)["profile_id"] == m["profile_id"]
