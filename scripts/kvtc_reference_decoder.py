#!/usr/bin/env python3
"""Independent reference decoder for kvtc profiles (formats 1, 2 and 3) and .kvtc blobs (version 1).

Written from docs/profile-format.md alone (no kvtc source consulted), to check that the
specification is precise enough to implement in another language.

Usage:
    python3 scripts/kvtc_reference_decoder.py PROFILE_DIR BLOB OUT.npz

Writes OUT.npz with float32 arrays key_{l} [kv_heads, tokens, head_dim] and value_{l}
[kv_heads, tokens, value_head_dim] (l: profile layer; value_head_dim = head_dim below format 3), plus int64 scalars tokens and start_position and a uint8 scalar float16 (the blob's dtype flag).
Exits non-zero with a message on stderr when any check fails. Needs only Python 3 and NumPy.
"""

import hashlib
import json
import math
import os
import re
import struct
import sys
import zlib

import numpy as np

MANIFEST_NAME = "kvtc-profile.json"
FORMAT_VERSIONS = (1, 2, 3)
BLOB_VERSION = 1
HEADER_BYTES = 48
SECTION_ENTRY_BYTES = 12
TYPE_BITS = {"int2": 2, "int4": 4, "int8": 8, "fp8": 8}


class KvtcError(Exception):
    pass


def fail(msg):
    raise KvtcError(msg)


# ---------------------------------------------------------------------------------------------
# Profile (§2, §3)


MAX_ABS = 1e12  # |mean|, |lo|, |hi| (§3, reader checks)
ORTHO_TOL = 1e-4  # max |VᵀV − I|
NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,128}")


def _int_text(v, what):
    """A JSON integer in the canonical text (§2.1): decimal; 8 and 8.0 are the same integer."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        fail(f"{what} = {v!r} is not an integer")
    if isinstance(v, float) and not (math.isfinite(v) and v.is_integer()):
        fail(f"{what} = {v!r} is not an integer")
    return str(int(v))


def _f64_text(v, what):
    """A JSON real in the canonical text: its IEEE 754 binary64 bits, big-endian, 16 hex digits."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        fail(f"{what} = {v!r} is not a number")
    try:
        return struct.pack(">d", float(v)).hex()
    except OverflowError:
        fail(f"{what} = {v!r} is out of range")


def _word(v, what):
    if not isinstance(v, str) or not NAME_RE.fullmatch(v):
        fail(f"{what} = {v!r} is not a name of letters, digits, '_', '.' or '-'")
    return v


def profile_id_text(manifest):
    """The canonical text profile_id hashes (§2.1)."""
    model = manifest["model"]
    rope = model["rope"]
    settings = manifest["settings"]
    lines = ["kvtc-profile-id 1", f"tensors.sha256 {manifest['tensors']['sha256']}"]
    for k in ("layers", "kv_heads", "head_dim"):
        lines.append(f"model.{k} {_int_text(model[k], 'model.' + k)}")
    lines.append(f"model.kv_dtype {_word(model['kv_dtype'], 'model.kv_dtype')}")
    # §2.4: format 3's fields, each only when present, in this order.
    if "value_head_dim" in model:
        lines.append(f"model.value_head_dim {_int_text(model['value_head_dim'], 'model.value_head_dim')}")
    if "cache" in model:
        lines.append(f"model.cache {_word(model['cache'], 'model.cache')}")
    if "model_layers" in model:
        lines.append(f"model.model_layers {_int_text(model['model_layers'], 'model.model_layers')}")
    if "cache_layers" in model:
        lines.append(f"model.cache_layers {','.join(_int_text(l, 'model.cache_layers') for l in model['cache_layers'])}")
    shard = manifest.get("shard")
    if "shard" in manifest:
        nums = " ".join(_int_text(shard[k], "shard." + k) for k in ("tp_rank", "tp_size", "pp_rank", "pp_size"))
        lines.append(f"shard {nums}")
        lines.append(f"shard.kv_heads {','.join(_int_text(h, 'shard.kv_heads') for h in shard['kv_heads'])}")
    one = rope if isinstance(rope, dict) else None
    if (
        isinstance(rope, list)
        and len(rope) == 1
        and not rope[0].get("none")
        and float(rope[0].get("attention_factor", 1)) == 1
        and (rope[0].get("scaling") is None or rope[0]["scaling"]["type"] in ("linear", "llama3"))
    ):
        one = rope[0]
    if one is not None:
        lines.append(f"model.rope.theta {_f64_text(one['theta'], 'model.rope.theta')}")
        lines.append(f"model.rope.rotary_dim {_int_text(one['rotary_dim'], 'model.rope.rotary_dim')}")
        lines.append(f"model.rope.layout {_word(one['layout'], 'model.rope.layout')}")
        sc = one.get("scaling")
        if sc is not None:
            lines.append(f"model.rope.scaling.type {_word(sc['type'], 'model.rope.scaling.type')}")
            lines.append(f"model.rope.scaling.factor {_f64_text(sc['factor'], 'model.rope.scaling.factor')}")
            for k in ("low_freq_factor", "high_freq_factor", "original_max_position_embeddings"):
                if k in sc:
                    lines.append(f"model.rope.scaling.{k} {_f64_text(sc[k], 'model.rope.scaling.' + k)}")
    else:
        lines.append(f"model.rope.groups {len(rope)}")
        for j, g in enumerate(rope):
            p = f"model.rope.{j}"
            lines.append(f"{p}.layers {','.join(_int_text(l, p + '.layers') for l in g['layers'])}")
            if g.get("none") is True:
                lines.append(f"{p}.none")
                continue
            lines.append(f"{p}.theta {_f64_text(g['theta'], p + '.theta')}")
            lines.append(f"{p}.rotary_dim {_int_text(g['rotary_dim'], p + '.rotary_dim')}")
            lines.append(f"{p}.layout {_word(g['layout'], p + '.layout')}")
            lines.append(f"{p}.attention_factor {_f64_text(g.get('attention_factor', 1.0), p + '.attention_factor')}")
            sc = g.get("scaling")
            if sc is None:
                continue
            lines.append(f"{p}.scaling.type {_word(sc['type'], p + '.scaling.type')}")
            for k in sorted(k for k in sc if k != "type"):
                v = sc[k]
                if isinstance(v, bool):
                    lines.append(f"{p}.scaling.{k} {1 if v else 0}")
                elif isinstance(v, list):
                    lines.append(f"{p}.scaling.{k} {','.join(_f64_text(x, p + '.scaling.' + k) for x in v)}")
                else:
                    lines.append(f"{p}.scaling.{k} {_f64_text(v, p + '.scaling.' + k)}")
    for k in ("sink", "window"):
        lines.append(f"settings.{k} {_int_text(settings[k], 'settings.' + k)}")
    lines.append(f"settings.entropy {_word(settings['entropy'], 'settings.entropy')}")
    plans = manifest["plans"]
    lines.append(f"plans {len(plans)}")
    for i, plan in enumerate(plans):
        at = f"plans[{i}]"
        lines.append(f"plan {i} index {_int_text(plan['index'], at + '.index')}")
        lines.append(f"plan {i} kind {_word(plan['kind'], at + '.kind')}")
        lines.append(f"plan {i} layers {','.join(_int_text(l, at + '.layers') for l in plan['layers'])}")
        for k in ("dim", "rank", "budget_bits", "bits_per_token"):
            lines.append(f"plan {i} {k} {_int_text(plan[k], at + '.' + k)}")
        lines.append(f"plan {i} groups {len(plan['groups'])}")
        for g, grp in enumerate(plan["groups"]):
            lines.append(
                f"plan {i} group {g} {_int_text(grp['start'], at + '.start')} {_int_text(grp['end'], at + '.end')} "
                f"{_word(grp['type'], at + '.type')} {_word(grp['mode'], at + '.mode')}"
            )
        for role in ("mean", "basis", "variances", "lo", "hi"):
            lines.append(f"plan {i} tensor {role} {_word(plan['tensors'][role], at + '.tensors.' + role)}")
    return "".join(line + "\n" for line in lines)


def profile_id(manifest):
    return hashlib.sha256(profile_id_text(manifest).encode("utf-8")).hexdigest()[:16]


def read_safetensors(data, wanted):
    """Strict: exact header length (a multiple of 8), only F32 tensors, exactly the names in
    `wanted` (name -> shape), data contiguous from offset 0 to the end of the file."""
    if len(data) < 8:
        fail("safetensors: file shorter than its 8-byte header length")
    (n,) = struct.unpack_from("<Q", data, 0)
    if 8 + n > len(data):
        fail(f"safetensors: header length {n} runs past the end of the file ({len(data)} bytes)")
    if n % 8:
        fail(f"safetensors: header length {n} is not a multiple of 8")
    try:
        header = json.loads(data[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        fail(f"safetensors: header is not valid UTF-8 JSON: {e}")
    if not isinstance(header, dict):
        fail("safetensors: header is not a JSON object")
    base = 8 + n
    data_len = len(data) - base
    tensors = {}
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            if not isinstance(info, dict) or not all(isinstance(v, str) for v in info.values()):
                fail("safetensors: __metadata__ is not an object of strings")
            continue
        if name not in wanted:
            fail(f"safetensors: tensor {name} is not used by any plan")
        if not isinstance(info, dict) or sorted(info) != ["data_offsets", "dtype", "shape"]:
            fail(f"safetensors: tensor {name}: entry must be exactly dtype, shape, data_offsets")
        if info["dtype"] != "F32":
            fail(f"safetensors: tensor {name} has dtype {info['dtype']}, expected F32")
        shape = info["shape"]
        offs = info["data_offsets"]

        def ints(xs):
            return isinstance(xs, list) and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in xs)

        if not ints(shape) or not ints(offs) or len(offs) != 2:
            fail(f"safetensors: tensor {name} has an invalid shape or data_offsets")
        if shape != list(wanted[name]):
            fail(f"safetensors: tensor {name} has shape {shape}, the plan declares {list(wanted[name])}")
        begin, end = offs
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if end - begin != 4 * count or end > data_len:
            fail(f"safetensors: tensor {name} offsets [{begin}, {end}) do not fit shape {shape} / file size")
        spans.append((begin, end, name))
        arr = np.frombuffer(data, dtype="<f4", count=count, offset=base + begin).reshape(shape)
        tensors[name] = arr.astype(np.float32)
    for name in wanted:
        if name not in tensors:
            fail(f"safetensors: tensor {name} is missing")
    at = 0
    for begin, end, name in sorted(spans):
        if begin != at:
            fail(f"safetensors: tensor {name} starts at {begin}, the previous data ends at {at} (not contiguous)")
        at = end
    if at != data_len:
        fail(f"safetensors: {data_len - at} bytes after the last tensor (trailing bytes or a wrong header length)")
    return tensors


def check_rope(model, version):
    if (version == 1) != isinstance(model["rope"], dict):
        fail(f"model.rope has the wrong form for format {version} (1: one object, 2: a list of groups)")
    for rope in {json.dumps(r, sort_keys=True): r for r in layer_ropes(model) if r is not None}.values():
        check_one_rope(rope, model["head_dim"])


def check_one_rope(rope, head_dim):
    R, theta = rope["rotary_dim"], rope["theta"]
    if not (isinstance(theta, (int, float)) and math.isfinite(theta) and theta > 0):
        fail(f"model.rope.theta {theta!r} must be finite and > 0")
    if R % 2 or R <= 0 or R > head_dim:
        fail(f"model.rope.rotary_dim {R} must be even, > 0 and ≤ head_dim {head_dim}")
    af = rope.get("attention_factor", 1.0)
    if not (isinstance(af, (int, float)) and math.isfinite(af) and af > 0):
        fail(f"model.rope.attention_factor {af!r} must be finite and > 0")
    sc = rope.get("scaling")
    lens = [0]
    if sc is not None:
        if sc["type"] != "longrope" and not (math.isfinite(sc["factor"]) and sc["factor"] > 0):
            fail(f"model.rope.scaling.factor {sc['factor']!r} must be finite and > 0")
        if sc["type"] == "llama3":
            for k in ("low_freq_factor", "high_freq_factor", "original_max_position_embeddings"):
                if k not in sc or not (math.isfinite(sc[k]) and sc[k] > 0):
                    fail(f"model.rope.scaling.{k} must be given, finite and > 0 for llama3 scaling")
            if not sc["high_freq_factor"] > sc["low_freq_factor"]:
                fail("model.rope.scaling.high_freq_factor must exceed low_freq_factor")
        elif sc["type"] == "yarn":
            for k in ("original_max_position_embeddings", "beta_fast", "beta_slow"):
                if not (math.isfinite(sc[k]) and sc[k] > 0):
                    fail(f"model.rope.scaling.{k} must be finite and > 0 for yarn scaling")
            if not isinstance(sc.get("truncate"), bool):
                fail("model.rope.scaling.truncate must be true or false")
        elif sc["type"] == "longrope":
            for k in ("short_factor", "long_factor"):
                if len(sc[k]) != R // 2:
                    fail(f"model.rope.scaling.{k} must hold {R // 2} factors")
            lens = [0, sc["original_max_position_embeddings"] + 1]
        elif sc["type"] != "linear":
            fail(f"unknown rope scaling type {sc['type']!r}")
    for n in lens:
        inv = rope_inv_freq(rope, n)
        if not np.all(np.isfinite(inv) & (inv > 0)):
            fail("model.rope gives an inverse frequency that is not finite and > 0")


FAMILY3_RE = re.compile(r"[a-z0-9_]{1,64}")


def _is_int(v, lo, hi):
    """A JSON integer (8 and 8.0 alike, §2.1) in [lo, hi]."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    if isinstance(v, float) and not (math.isfinite(v) and v.is_integer()):
        return False
    return lo <= v <= hi


def value_head_dim(model):
    """§2.4: the width of each value head; head_dim when absent."""
    return int(model.get("value_head_dim", model["head_dim"]))


def check_format3(manifest):
    """§2.4, fields whose rules depend on the version (kvtc's `format` check)."""
    model = manifest["model"]
    version = manifest["format_version"]
    fp = model["fingerprint"]
    present = [f"model.{k}" for k in ("value_head_dim", "cache", "model_layers", "cache_layers") if k in model]
    present += ["shard"] if "shard" in manifest else []
    present += ["model.fingerprint.source"] if "source" in fp else []
    if version == 3 and not present:
        fail(
            "format_version 3 without any field of format 3 (model.value_head_dim, model.cache, model.model_layers, "
            "model.cache_layers, shard, model.fingerprint.source): write format_version 2"
        )
    if version != 3 and present:
        fail(f"{present[0]} is a format 3 field, but format_version is {version}: write format_version 3")
    if version == 3:
        fam = model["family"]
        if not (isinstance(fam, str) and FAMILY3_RE.fullmatch(fam)):
            fail(f"model.family {fam!r} is not a transformers model_type ([a-z0-9_]{{1,64}})")
    if "value_head_dim" in model and not _is_int(model["value_head_dim"], 1, 0xFFFF):
        fail(f"model.value_head_dim {model['value_head_dim']!r} is not an integer in [1, 65535]")
    cache = model.get("cache", "gqa")
    if cache not in ("gqa", "mla-latent"):
        fail(f"model.cache {cache!r} is not 'gqa' or 'mla-latent'")
    if cache == "mla-latent" and model["kv_heads"] != 1:
        fail(f"model.cache 'mla-latent' requires model.kv_heads = 1, not {model['kv_heads']!r}")
    if ("model_layers" in model) != ("cache_layers" in model):
        fail("model.model_layers and model.cache_layers must be present together (or both absent)")
    if "model_layers" in model:
        ml, cl = model["model_layers"], model["cache_layers"]
        if not _is_int(ml, 1, 0xFFFF):
            fail(f"model.model_layers {ml!r} is not an integer in [1, 65535]")
        if not isinstance(cl, list) or len(cl) != model["layers"]:
            fail(f"model.cache_layers must list one model layer per profile layer ({model['layers']})")
        prev = -1
        for i, l in enumerate(cl):
            if not _is_int(l, 0, ml - 1) or l <= prev:
                fail(f"model.cache_layers[{i}] = {l!r}: the list must be strictly increasing integers below model.model_layers {ml}")
            prev = l
    if "shard" in manifest:
        sh = manifest["shard"]
        if not isinstance(sh, dict) or sorted(sh) != ["kv_heads", "pp_rank", "pp_size", "tp_rank", "tp_size"]:
            fail("shard must be exactly {tp_rank, tp_size, pp_rank, pp_size, kv_heads}")
        for r, n in (("tp_rank", "tp_size"), ("pp_rank", "pp_size")):
            if not _is_int(sh[n], 1, 0xFFFF):
                fail(f"shard.{n} {sh[n]!r} is not an integer in [1, 65535]")
            if not _is_int(sh[r], 0, sh[n] - 1):
                fail(f"shard.{r} {sh[r]!r} must be an integer below shard.{n} {sh[n]}")
        heads = sh["kv_heads"]
        if not isinstance(heads, list) or len(heads) != model["kv_heads"]:
            fail(f"shard.kv_heads must list one model KV head per profile head ({model['kv_heads']})")
        if not all(_is_int(h, 0, 0xFFFF) for h in heads) or len(set(heads)) != len(heads):
            fail(f"shard.kv_heads {heads!r} must be distinct integers in [0, 65535]")
    src = fp.get("source")
    if "source" in fp and src != "kv-dump":
        fail(f"model.fingerprint.source {src!r} is not 'kv-dump'")
    if ("onnx_sha256" in fp) == (src == "kv-dump"):
        fail("model.fingerprint.onnx_sha256 must be absent exactly when model.fingerprint.source is 'kv-dump'")
    if src == "kv-dump":
        want = hashlib.sha256(f"kv-dump:{fp['spec_sha256']}\n".encode("utf-8")).hexdigest()[:16]
        if fp["id"] != want:
            fail(f"model.fingerprint.id {fp['id']!r} is not the kv-dump id of its spec_sha256 (expected {want})")


DEFAULT_MAX_POSITIONS = 2**24  # §6: the bound when model.max_positions is absent


def _unique_keys(pairs):
    # §2: a key twice in one object is an error (readers disagree on which one counts).
    obj = {}
    for k, v in pairs:
        if k in obj:
            raise ValueError(f"the key {k!r} appears twice in one object")
        obj[k] = v
    return obj


def _no_constant(name):
    raise ValueError(f"{name} is not JSON")


def read_profile(profile_dir):
    mpath = os.path.join(profile_dir, MANIFEST_NAME)
    try:
        with open(mpath, "rb") as f:
            manifest = json.loads(f.read().decode("utf-8"), object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except OSError as e:
        fail(f"cannot read manifest {mpath}: {e}")
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        fail(f"manifest {mpath} is not valid UTF-8 JSON: {e}")
    if not isinstance(manifest, dict) or manifest.get("format") != "kvtc-profile":
        fail(f"manifest format is {manifest.get('format') if isinstance(manifest, dict) else None!r}, expected 'kvtc-profile'")
    version = manifest.get("format_version")
    if version not in FORMAT_VERSIONS or isinstance(version, bool):
        producer = manifest.get("producer", {})
        fail(
            f"manifest format_version {version} is not supported (this reader reads {FORMAT_VERSIONS}); "
            f"written by {producer.get('name')} {producer.get('version')}"
        )
    try:
        return _read_profile(profile_dir, manifest)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        fail(f"manifest is malformed: {type(e).__name__}: {e}")


def _read_profile(profile_dir, manifest):
    # The profile id first: it binds every manifest field used below to the tensor file's hash.
    want_id = profile_id(manifest)
    if manifest["profile_id"] != want_id:
        fail(
            f"profile_id {manifest['profile_id']} does not match the canonical text of the manifest and "
            f"the tensor file hash (expected {want_id}): the profile was edited"
        )
    tinfo = manifest["tensors"]
    if tinfo.get("file") != "kvtc-profile.safetensors":
        fail(f"tensors.file {tinfo.get('file')!r}, expected 'kvtc-profile.safetensors'")
    tpath = os.path.join(profile_dir, tinfo["file"])
    try:
        with open(tpath, "rb") as f:
            tdata = f.read()
    except OSError as e:
        fail(f"cannot read tensor file {tpath}: {e}")
    if len(tdata) != int(tinfo["bytes"]):
        fail(f"tensor file {tpath} has {len(tdata)} bytes, manifest says {tinfo['bytes']}")
    digest = hashlib.sha256(tdata).hexdigest()
    if digest != tinfo["sha256"]:
        fail(f"tensor file sha256 mismatch: file {digest}, manifest {tinfo['sha256']}")

    model = manifest["model"]
    L, H, D = int(model["layers"]), int(model["kv_heads"]), int(model["head_dim"])
    if max(L, H, D) > 0xFFFF or min(L, H, D) < 1:
        fail(f"model shape {L}/{H}/{D} outside [1, 65535]")
    check_format3(manifest)
    DV = value_head_dim(model)
    check_rope(model, manifest["format_version"])
    plans = []
    covered = {"key": set(), "value": set()}
    wanted = {}
    for pos, plan in enumerate(manifest["plans"]):
        idx = int(plan["index"])
        if idx != pos:
            fail(f"plan at position {pos} has index {idx}")
        kind = plan["kind"]
        if kind not in ("key", "value"):
            fail(f"plan {idx}: kind {kind!r}")
        layers = [int(l) for l in plan["layers"]]
        p, r = int(plan["dim"]), int(plan["rank"])
        width, wname = (D, "head_dim") if kind == "key" else (DV, "value_head_dim")
        if p != len(layers) * H * width:
            fail(f"plan {idx}: dim {p} != len(layers)·kv_heads·{wname} = {len(layers) * H * width}")
        if not 0 <= r <= p:
            fail(f"plan {idx}: rank {r} not in [0, dim {p}]")
        for l in layers:
            if not 0 <= l < L or l in covered[kind]:
                fail(f"plan {idx}: layer {l} out of range or already covered for {kind}")
            covered[kind].add(l)
        names = plan["tensors"]
        for role, shape in (("mean", (p,)), ("basis", (p, r)), ("variances", (r,)), ("lo", (r,)), ("hi", (r,))):
            if names[role] in wanted:
                fail(f"plan {idx}: tensor {names[role]} is named twice")
            wanted[names[role]] = shape
        groups = []
        prev_end = 0
        bits_per_token = 0
        for g in plan["groups"]:
            start, end, gtype, mode = int(g["start"]), int(g["end"]), g["type"], g["mode"]
            if gtype not in TYPE_BITS or mode not in ("static", "dynamic"):
                fail(f"plan {idx}: group type {gtype!r} / mode {mode!r}")
            if not (prev_end <= start < end <= r):
                fail(f"plan {idx}: groups not sorted/disjoint within [0, {r}): {plan['groups']}")
            prev_end = end
            groups.append({"start": start, "end": end, "type": gtype, "mode": mode, "bits": TYPE_BITS[gtype]})
            bits_per_token += (end - start) * TYPE_BITS[gtype] + (32 if mode == "dynamic" else 0)
        if prev_end != r:
            fail(f"plan {idx}: last group ends at {prev_end}, rank is {r}")
        if bits_per_token != int(plan["bits_per_token"]):
            fail(f"plan {idx}: bits_per_token {plan['bits_per_token']} != computed {bits_per_token}")
        if bits_per_token > int(plan["budget_bits"]):
            fail(f"plan {idx}: bits_per_token {bits_per_token} exceeds budget_bits {plan['budget_bits']}")
        plans.append({"index": idx, "kind": kind, "layers": layers, "p": p, "r": r, "groups": groups, "names": names})
    for kind in ("key", "value"):
        if covered[kind] != set(range(L)):
            fail(f"plans do not cover every layer for {kind}: {sorted(covered[kind])}")

    tensors = read_safetensors(tdata, wanted)
    for plan in plans:
        idx, names = plan["index"], plan["names"]
        for role in ("mean", "basis", "variances", "lo", "hi"):
            t = tensors[names[role]]
            if not np.all(np.isfinite(t)):
                fail(f"plan {idx}: tensor {names[role]} holds NaN or Inf")
            if role in ("mean", "lo", "hi") and t.size and np.max(np.abs(t)) > MAX_ABS:
                fail(f"plan {idx}: tensor {names[role]} holds a value beyond ±{MAX_ABS:g}")
        plan["mean"] = tensors[names["mean"]].reshape(-1)
        plan["basis"] = tensors[names["basis"]]
        plan["lo"] = tensors[names["lo"]].reshape(-1)
        plan["hi"] = tensors[names["hi"]].reshape(-1)
        for g in plan["groups"]:
            sl = slice(g["start"], g["end"])
            if g["mode"] == "static" and np.any(plan["lo"][sl] > plan["hi"][sl]):
                fail(f"plan {idx}: a static component has lo > hi")
        V = plan["basis"].astype(np.float64)
        err = np.max(np.abs(V.T @ V - np.eye(plan["r"]))) if plan["r"] else 0.0
        if not err <= ORTHO_TOL:
            fail(f"plan {idx}: basis is not orthonormal (max |VᵀV − I| = {err:.2e} > {ORTHO_TOL})")
    return manifest, plans


# ---------------------------------------------------------------------------------------------
# RoPE (§4)


def rope_inv_freq(rope, seq_len=0):
    """§4.1; seq_len = start_position + tokens (longrope's factor set)."""
    R = int(rope["rotary_dim"])
    theta = float(rope["theta"])
    i = np.arange(R // 2, dtype=np.float64)
    inv = 1.0 / theta ** (2.0 * i / R)
    sc = rope.get("scaling")
    if sc:
        stype = sc.get("type")
        if stype == "longrope":
            ext = sc["long_factor"] if seq_len > sc["original_max_position_embeddings"] else sc["short_factor"]
            return 1.0 / (np.asarray(ext, dtype=np.float64) * theta ** (2.0 * i / R))
        factor = float(sc["factor"])
        if stype == "yarn":
            orig = float(sc["original_max_position_embeddings"])
            dim = lambda rot: R * math.log(orig / (rot * 2.0 * math.pi)) / (2.0 * math.log(theta))  # noqa: E731
            low, high = dim(float(sc["beta_fast"])), dim(float(sc["beta_slow"]))
            if sc["truncate"]:
                low, high = math.floor(low), math.ceil(high)
            low, high = max(low, 0), min(high, R - 1)
            if low == high:
                high += 0.001
            ramp = np.clip((i - low) / (high - low), 0.0, 1.0)
            e = 1.0 - ramp
            return (inv / factor) * (1.0 - e) + inv * e
        if stype == "linear":
            inv = inv / factor
        elif stype == "llama3":
            low = float(sc["low_freq_factor"])
            high = float(sc["high_freq_factor"])
            orig = float(sc["original_max_position_embeddings"])
            out = inv.copy()
            for k in range(len(inv)):
                wavelen = 2.0 * math.pi / inv[k]
                if wavelen < orig / high:
                    continue
                if wavelen > orig / low:
                    out[k] = inv[k] / factor
                else:
                    s = (orig / wavelen - low) / (high - low)
                    out[k] = (1.0 - s) * inv[k] / factor + s * inv[k]
            inv = out
        else:
            fail(f"unknown rope scaling type {stype!r}")
    return inv


def apply_rope(x, positions, rope, sign, seq_len=0):
    """x: [n, heads, head_dim] float64, rotated in place by sign·θ at the given positions, then
    multiplied by the attention factor (sign +1) or divided by it (sign −1), §4.1."""
    R = int(rope["rotary_dim"])
    inv = rope_inv_freq(rope, seq_len)
    f = float(rope.get("attention_factor", 1.0)) ** sign
    ang = sign * positions.astype(np.float64)[:, None] * inv[None, :]  # [n, R/2]
    cos = np.cos(ang)[:, None, :]
    sin = np.sin(ang)[:, None, :]
    if rope["layout"] == "half":
        ia = np.arange(R // 2)
        ib = ia + R // 2
    elif rope["layout"] == "interleaved":
        ia = np.arange(R // 2) * 2
        ib = ia + 1
    else:
        fail(f"unknown rope layout {rope['layout']!r}")
    a = x[:, :, ia].copy()
    b = x[:, :, ib].copy()
    x[:, :, ia] = (a * cos - b * sin) * f
    x[:, :, ib] = (b * cos + a * sin) * f
    return x


def layer_ropes(model):
    """Each layer's RoPE description (None: no RoPE): format 1's one object, or format 2's groups."""
    rope = model["rope"]
    L = model["layers"]
    if isinstance(rope, dict):
        return [rope] * L
    out = [None] * L
    seen = set()
    for j, g in enumerate(rope):
        for l in g["layers"]:
            if not (isinstance(l, int) and 0 <= l < L) or l in seen:
                fail(f"model.rope[{j}].layers: layer {l!r} is out of range or named twice")
            seen.add(l)
            out[l] = None if g.get("none") is True else g
    if len(seen) != L:
        fail(f"model.rope names {len(seen)} of the {L} layers")
    return out


# ---------------------------------------------------------------------------------------------
# Quantization (§5, §7)


def e4m3fn_table():
    t = np.zeros(256, dtype=np.float64)
    for code in range(256):
        sign = -1.0 if code & 0x80 else 1.0
        e = (code >> 3) & 0xF
        m = code & 0x7
        if (code & 0x7F) == 0x7F:
            t[code] = np.nan
        elif e == 0:
            t[code] = sign * (m / 8.0) * 2.0**-6
        else:
            t[code] = sign * (1.0 + m / 8.0) * 2.0 ** (e - 7)
    return t.astype(np.float32)


E4M3FN = e4m3fn_table()


def unpack_codes(buf, count, bits):
    raw = np.frombuffer(buf, dtype=np.uint8)
    per = 8 // bits
    mask = (1 << bits) - 1
    shifts = (np.arange(per, dtype=np.uint8) * bits).astype(np.uint8)
    codes = ((raw[:, None] >> shifts[None, :]) & mask).reshape(-1)
    return codes[:count]


def plan_payload_bytes(plan, n):
    total = 0
    for g in plan["groups"]:
        total += (n * (g["end"] - g["start"]) * g["bits"] + 7) // 8
    for g in plan["groups"]:
        if g["mode"] == "dynamic":
            total += 4 * n
    return total


def decode_coefficients(plan, n, payload):
    r = plan["r"]
    c = np.zeros((n, r), dtype=np.float32)
    pos = 0
    code_blocks = []
    for g in plan["groups"]:
        w = g["end"] - g["start"]
        nbytes = (n * w * g["bits"] + 7) // 8
        codes = unpack_codes(payload[pos : pos + nbytes], n * w, g["bits"])
        code_blocks.append(codes.reshape(w, n).T)  # component-major -> [n, w]
        pos += nbytes
    dyn = {}
    for gi, g in enumerate(plan["groups"]):
        if g["mode"] == "dynamic":
            off = np.frombuffer(payload, dtype="<f2", count=n, offset=pos).astype(np.float32)
            pos += 2 * n
            sca = np.frombuffer(payload, dtype="<f2", count=n, offset=pos).astype(np.float32)
            pos += 2 * n
            dyn[gi] = (off, sca)
    assert pos == len(payload)
    for gi, g in enumerate(plan["groups"]):
        codes = code_blocks[gi]
        b = g["bits"]
        if g["type"] == "fp8":
            if np.any((codes & 0x7F) == 0x7F):
                fail(f"plan {plan['index']}: fp8 NaN code in the blob")
            q = E4M3FN[codes]
        else:
            q = codes.astype(np.float32)
        sl = slice(g["start"], g["end"])
        if g["mode"] == "static":
            lo = plan["lo"][sl]
            hi = plan["hi"][sl]
            if g["type"] == "fp8":
                offset = ((lo + hi) / np.float32(2)).astype(np.float32)
                scale = np.where(hi > lo, (hi - lo) / np.float32(2 * 448), np.float32(0)).astype(np.float32)
            else:
                offset = lo
                scale = ((hi - lo) / np.float32((1 << b) - 1)).astype(np.float32)
            c[:, sl] = offset[None, :] + q * scale[None, :]
        else:
            off, sca = dyn[gi]
            c[:, sl] = off[:, None] + q * sca[:, None]
    return c


# ---------------------------------------------------------------------------------------------
# Blob (§6, §7, §8)


def decode_blob(manifest, plans, blob):
    model = manifest["model"]
    L, H, D = int(model["layers"]), int(model["kv_heads"]), int(model["head_dim"])
    DV = value_head_dim(model)  # §2.4: the header's head_dim is the key width
    if len(blob) < HEADER_BYTES + 4:
        fail(f"blob too short ({len(blob)} bytes) for a header and CRC")
    if blob[0:4] != b"KVTC":
        fail(f"bad magic {blob[0:4]!r}, expected b'KVTC'")
    (version,) = struct.unpack_from("<H", blob, 4)
    if version != BLOB_VERSION:
        fail(f"blob version {version} is not supported (this reader reads {BLOB_VERSION})")
    (stored_crc,) = struct.unpack_from("<I", blob, len(blob) - 4)
    crc = zlib.crc32(blob[:-4]) & 0xFFFFFFFF
    if crc != stored_crc:
        fail(f"CRC-32 checksum mismatch: blob says {stored_crc:08x}, bytes give {crc:08x} (corrupt blob)")
    (flags,) = struct.unpack_from("<H", blob, 6)
    pid = blob[8:16]
    want = bytes.fromhex(manifest["profile_id"])[:8]
    if pid != want:
        fail(f"blob was written for profile {pid.hex()}, this profile is {want.hex()}")
    T, start_pos = struct.unpack_from("<II", blob, 16)
    layers, kvh, hd, S = struct.unpack_from("<HHHH", blob, 24)
    sink, window = struct.unpack_from("<II", blob, 32)
    if (layers, kvh, hd) != (L, H, D):
        fail(f"blob shape layers={layers} kv_heads={kvh} head_dim={hd} differs from the profile's {L}/{H}/{D}")
    if sink + window > T:
        fail(f"sink {sink} + window {window} exceeds tokens {T}")
    max_pos = model.get("max_positions", DEFAULT_MAX_POSITIONS)
    if start_pos + T > max_pos:
        fail(f"start_position {start_pos} + {T} tokens runs past the model's {max_pos} positions (model.max_positions)")
    n = T - sink - window

    table_end = HEADER_BYTES + SECTION_ENTRY_BYTES * S
    if table_end > len(blob) - 4:
        fail(f"section table ({S} entries) runs past the end of the blob")
    sections = []
    pos = table_end
    for k in range(S):
        kind, codec, plan_idx, stored, decoded = struct.unpack_from("<BBHII", blob, HEADER_BYTES + SECTION_ENTRY_BYTES * k)
        if pos + stored > len(blob) - 4:
            fail(f"section {k}: stored bytes [{pos}, {pos + stored}) run past the CRC at {len(blob) - 4}")
        sections.append((kind, codec, plan_idx, blob[pos : pos + stored], decoded))
        pos += stored
    if pos != len(blob) - 4:
        fail(f"sections end at byte {pos}, but the CRC starts at {len(blob) - 4}")

    def inflate(k, codec, data, decoded):
        if codec == 0:
            out = data
        elif codec == 1:
            d = zlib.decompressobj(wbits=-15)
            try:
                out = d.decompress(data, decoded + 1)
            except zlib.error as e:
                fail(f"section {k}: bad DEFLATE stream: {e}")
            if not d.eof:
                fail(f"section {k}: DEFLATE stream does not end within its stored bytes / decoded size")
            if d.unused_data:
                fail(f"section {k}: {len(d.unused_data)} stray bytes after the DEFLATE stream")
        else:
            fail(f"section {k}: unknown codec {codec}")
        if len(out) != decoded:
            fail(f"section {k}: decoded {len(out)} bytes, table says {decoded}")
        return out

    raw = None
    plan_payloads = {}
    for k, (kind, codec, plan_idx, data, decoded) in enumerate(sections):
        if kind == 0:
            if raw is not None:
                fail("more than one raw section")
            # bit 1 of the flags: the raw section holds float32 values (spec §6, Raw section)
            want_raw = L * H * (sink + window) * (D + DV) * (4 if flags & 2 else 2)
            if decoded != want_raw:
                fail(f"raw section: decoded size {decoded}, expected {want_raw}")
            raw = inflate(k, codec, data, decoded)
        elif kind == 1:
            if plan_idx >= len(plans):
                fail(f"section {k}: plan index {plan_idx} out of range ({len(plans)} plans)")
            if plan_idx in plan_payloads:
                fail(f"section {k}: second section for plan {plan_idx}")
            want = plan_payload_bytes(plans[plan_idx], n)
            if decoded != want:
                fail(f"section {k} (plan {plan_idx}): decoded size {decoded}, expected {want} for n={n}")
            plan_payloads[plan_idx] = inflate(k, codec, data, decoded)
        else:
            fail(f"section {k}: unknown kind {kind}")
    if raw is None:
        fail("blob has no raw section")

    keys = [np.zeros((H, T, D), dtype=np.float32) for _ in range(L)]
    values = [np.zeros((H, T, DV), dtype=np.float32) for _ in range(L)]
    ropes = layer_ropes(model)
    if n > 0:
        positions = start_pos + sink + np.arange(n, dtype=np.int64)
        for plan in plans:
            i, r = plan["index"], plan["r"]
            if r > 0 and plan_payload_bytes(plan, n) > 0:
                if i not in plan_payloads:
                    fail(f"blob has no section for plan {i}")
                c = decode_coefficients(plan, n, plan_payloads[i])
            else:
                # r = 0 (or no stored group): every component dropped, x̂ = μ. A zero-length
                # section, if present, is accepted.
                c = np.zeros((n, r), dtype=np.float32)
            xh = c.astype(np.float64) @ plan["basis"].astype(np.float64).T + plan["mean"].astype(np.float64)[None, :]
            xh = xh.astype(np.float32).astype(np.float64)  # the spec's X̂ is f32 data
            nl = len(plan["layers"])
            xh = xh.reshape(n, nl, H, D if plan["kind"] == "key" else DV)
            for li, l in enumerate(plan["layers"]):
                blk = xh[:, li]  # [n, H, D]
                if plan["kind"] == "key" and ropes[l] is not None:
                    blk = apply_rope(blk.copy(), positions, ropes[l], +1.0, start_pos + T)
                dst = keys[l] if plan["kind"] == "key" else values[l]
                dst[:, sink : T - window, :] = blk.transpose(1, 0, 2).astype(np.float32)

    # per layer: keys [H, s+w, D] then values [H, s+w, DV] (§6 Raw section, §2.4)
    rawv = np.frombuffer(raw, dtype="<f4" if flags & 2 else "<f2").astype(np.float32).reshape(L, -1)
    nk = H * (sink + window) * D
    for l in range(L):
        for dst, part, width in ((keys[l], rawv[l, :nk], D), (values[l], rawv[l, nk:], DV)):
            rows = part.reshape(H, sink + window, width)
            dst[:, :sink, :] = rows[:, :sink, :]
            dst[:, T - window :, :] = rows[:, sink:, :]

    if flags & 1:
        # the cache was float16: restore that dtype (values rounded to fp16, stored as f32 here)
        keys = [k.astype(np.float16).astype(np.float32) for k in keys]
        values = [v.astype(np.float16).astype(np.float32) for v in values]
    return {
        "tokens": T,
        "start_position": start_pos,
        "float16": flags & 1,
        "sink": sink,
        "window": window,
        "keys": keys,
        "values": values,
    }


def main(argv):
    if len(argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    profile_dir, blob_path, out_path = argv[1:]
    try:
        manifest, plans = read_profile(profile_dir)
        with open(blob_path, "rb") as f:
            blob = f.read()
        res = decode_blob(manifest, plans, blob)
    except KvtcError as e:
        print(f"kvtc_reference_decoder: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"kvtc_reference_decoder: error: {e}", file=sys.stderr)
        return 1
    arrays = {}
    for l, (k, v) in enumerate(zip(res["keys"], res["values"])):
        arrays[f"key_{l}"] = np.ascontiguousarray(k, dtype="<f4")
        arrays[f"value_{l}"] = np.ascontiguousarray(v, dtype="<f4")
    arrays["tokens"] = np.array(res["tokens"], dtype="<i8")
    arrays["start_position"] = np.array(res["start_position"], dtype="<i8")
    arrays["float16"] = np.array(res["float16"], dtype=np.uint8)
    np.savez(out_path, **arrays)
    print(
        f"decoded {res['tokens']} tokens (start_position {res['start_position']}, sink {res['sink']}, "
        f"window {res['window']}) into {out_path}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
