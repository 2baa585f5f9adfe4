"""Reading a kvtc profile (docs/profile-format.md §1–§3, §5): kvtc-profile.json + kvtc-profile.safetensors.

Profiles are untrusted input: read_profile runs every reader check of the spec before anything
uses the profile (see read_profile). The profile id is derived in one place: expected_profile_id.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import struct
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from . import _safetensors
from ._errors import KvtcError
from ._quant import INT_LEVELS, TYPE_BITS
from ._strict_json import StrictJsonError, loads_strict

MANIFEST_FILE = "kvtc-profile.json"
TENSORS_FILE = "kvtc-profile.safetensors"
PROFILE_FORMAT = "kvtc-profile"
#: The manifest format_version kvtc writes when no format-3 field is needed; this package reads
#: FORMAT_VERSIONS (format 3 adds value_head_dim, the MLA latent cache, cache layers and shards).
FORMAT_VERSION = 2
FORMAT_VERSIONS = (1, 2, 3)
#: The model fields only format 3 carries (docs/profile-format.md); `shard` is top-level.
V3_MODEL_FIELDS = ("value_head_dim", "cache", "model_layers", "cache_layers")
CACHE_LAYOUTS = ("gqa", "mla-latent")
#: model.family in format 3: any transformers model_type label.
FAMILY_RE = re.compile(r"[a-z0-9_]{1,64}")
#: Largest manifest read (kvtc's limit; a real one is a few KiB).
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
#: The tensor file's JSON header is at most this base + this per tensor (kvtc's limits).
HEADER_BASE_BYTES = 4096
HEADER_PER_TENSOR_BYTES = 512
#: |mean|, |lo|, |hi| beyond this mean corruption (KV values are fp16-sized).
MAX_ABS = 1e12
#: max |VᵀV − I| of a basis.
ORTHO_TOLERANCE = 1e-4
#: The whole Gram matrix is checked when p·r² is at most this; otherwise exact column norms,
#: sampled pairs and random probes (each implied by the full check).
FULL_ORTHO_WORK = 2**26
#: Default bound on the tensor file (bases of a 128-layer, 8-KV-head, 128-dim model are ~1 GiB).
DEFAULT_MAX_TENSOR_BYTES = 16 * 1024**3
ENTROPY_CODERS = ("deflate-rle", "deflate-huffman", "deflate-default", "stored")
TENSOR_ROLES = ("mean", "basis", "variances", "lo", "hi")
NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,128}")
U16_MAX = 0xFFFF
U32_MAX = 0xFFFFFFFF
#: Bounds of the informational figures (src/profile/schema.ts FIGURE_LIMITS, docs/profile-format.md
#: §2.3): relative errors in [0, MAX_REL_ERROR] (dropping every component gives ~1; two orders of
#: magnitude of head-room), ratios in (0, MAX_RATIO] (the largest target, 64, times DEFLATE's
#: largest expansion, 1032).
MAX_REL_ERROR = 100.0
MAX_RATIO = 64 * 1032
#: model.max_positions is at most this (positions are u32 in a blob).
MAX_POSITIONS_FIELD = 2**32
#: The position bound of a profile that does not record model.max_positions (written before it was).
DEFAULT_MAX_POSITIONS = 2**24
SAFE_INT = 2**53 - 1
GROUPING_RE = re.compile(r"layer|all|[1-9][0-9]{0,4}")


@dataclass(frozen=True)
class Group:
    """Components [start, end) of a plan, stored as `type` with `mode` ranges (§5)."""

    start: int
    end: int
    type: str  # int2 | int4 | int8 | fp8
    mode: str  # static | dynamic

    @property
    def bits(self) -> int:
        return TYPE_BITS[self.type]

    @property
    def width(self) -> int:
        return self.end - self.start

    @property
    def levels(self) -> int:
        """Largest int code (2^b - 1); 0 for fp8."""
        return INT_LEVELS[self.type]


@dataclass
class Plan:
    """One PCA basis: features of `layers` (in order) of one `kind`, p = dim, r = rank."""

    index: int
    kind: str  # key | value
    layers: Tuple[int, ...]
    dim: int
    rank: int
    budget_bits: int
    bits_per_token: int
    groups: Tuple[Group, ...]
    mean: np.ndarray  # float32 [p]
    basis: np.ndarray  # float32 [p, r]
    variances: np.ndarray  # float32 [r]
    lo: np.ndarray  # float32 [r]
    hi: np.ndarray  # float32 [r]
    # per-device prepared matrices (codec internals)
    _cache: Dict[Any, Any] = field(default_factory=dict, repr=False, compare=False)

    def payload_bytes(self, n: int) -> int:
        """Length of this plan's section payload for n compressed tokens (§7)."""
        total = 0
        for g in self.groups:
            total += (n * g.width * g.bits + 7) // 8
            if g.mode == "dynamic":
                total += 4 * n
        return total


@dataclass(frozen=True)
class Rope:
    """One layer's RoPE (§4.1). scaling: None or the manifest's scaling dict (linear, llama3, yarn,
    longrope); attention_factor: cos and sin are multiplied by it."""

    theta: float
    rotary_dim: int
    layout: str  # half | interleaved
    scaling: Optional[Dict[str, Any]] = None
    attention_factor: float = 1.0

    def key(self) -> str:
        return json.dumps([self.theta, self.rotary_dim, self.layout, self.attention_factor, self.scaling], sort_keys=True)


@dataclass(frozen=True)
class Shard:
    """The part of a model a profile covers (format 3 `shard`): this tensor-parallel rank's KV heads
    (`kv_heads`: the model's KV head index of each profile head, in cache order) of this pipeline
    stage's layers (Profile.cache_layers)."""

    tp_rank: int
    tp_size: int
    pp_rank: int
    pp_size: int
    kv_heads: Tuple[int, ...]


@dataclass
class Profile:
    """A checked profile. `manifest` is the parsed kvtc-profile.json, as written.

    Geometry: keys of a layer are [kv_heads, tokens, head_dim], values [kv_heads, tokens,
    value_head_dim] (equal to head_dim unless format 3 says otherwise). Profile layer l is the
    model's layer cache_layers[l] (identity unless format 3 records model.cache_layers)."""

    path: str
    manifest: Dict[str, Any]
    profile_id: str
    model_name: str
    fingerprint: Dict[str, str]
    layers: int
    kv_heads: int
    head_dim: int
    kv_dtype: str
    #: The RoPE every layer shares, or None when the layers differ (or have none): see layer_ropes.
    rope: Optional[Rope]
    sink: int
    window: int
    entropy: str
    plans: List[Plan]
    #: Each layer's RoPE (None: the layer applies none), §4.1.
    layer_ropes: List[Optional[Rope]] = field(default_factory=list)
    #: The model's context: encode and decode refuse start_position + tokens beyond it (§6).
    max_positions: int = DEFAULT_MAX_POSITIONS
    #: Whether max_positions is the profile's model.max_positions (else DEFAULT_MAX_POSITIONS).
    max_positions_recorded: bool = False
    #: The manifest's format_version (1, 2 or 3).
    format_version: int = FORMAT_VERSION
    #: Width of each value head (model.value_head_dim; None given → head_dim).
    value_head_dim: Optional[int] = None
    #: "gqa" (per-head keys and values) or "mla-latent" (keys: the RoPE'd k_rot; values: the
    #: compressed latent c_kv; kv_heads 1), docs/kv-dumps.md §2.1.
    cache: str = "gqa"
    #: The model's decoder layers (model.model_layers; None given → layers).
    model_layers: Optional[int] = None
    #: The model layer index of each profile layer (model.cache_layers; None given → 0..layers-1).
    cache_layers: Optional[Tuple[int, ...]] = None
    #: The tensor/pipeline-parallel rank this profile is for; None: the whole model.
    shard: Optional[Shard] = None

    def __post_init__(self) -> None:
        if self.value_head_dim is None:
            self.value_head_dim = self.head_dim
        if self.model_layers is None:
            self.model_layers = self.layers
        if self.cache_layers is None:
            self.cache_layers = tuple(range(self.layers))

    @property
    def blob_id(self) -> bytes:
        """The 8 bytes a blob names this profile by (header offset 8)."""
        return blob_profile_id(self.profile_id)

    @property
    def fp16_bytes_per_token(self) -> int:
        """Bytes of one token of the cache in fp16, every layer's keys and values (§9's ratio basis)."""
        return self.layers * self.kv_heads * (self.head_dim + int(self.value_head_dim)) * 2  # type: ignore[arg-type]

    def dims(self, kind: str) -> int:
        """The head width of `kind` ("key": head_dim, "value": value_head_dim)."""
        return self.head_dim if kind == "key" else int(self.value_head_dim)  # type: ignore[arg-type]

    def check_shard(
        self, *, tp_rank: int = 0, tp_size: int = 1, pp_rank: int = 0, pp_size: int = 1, kv_heads=None, cache_layers=None
    ) -> None:
        """Refuses (PROFILE_MISMATCH) when this profile is not the one for the given serving rank: a
        whole-model profile serves only tp_size = pp_size = 1; a shard's profile only its own rank.
        kv_heads / cache_layers, when given, are the model's KV head indices and layer indices the
        rank holds, compared with the profile's (a rank whose engine cuts differently is refused too)."""
        sh = self.shard
        have = (sh.tp_rank, sh.tp_size, sh.pp_rank, sh.pp_size) if sh else (0, 1, 0, 1)
        want = (int(tp_rank), int(tp_size), int(pp_rank), int(pp_size))
        what = f"tp rank {have[0]} of {have[1]}, pp rank {have[2]} of {have[3]}" if sh else "the whole model (no shard)"
        ctx = {"profile": self.path, "profile_shard": list(have), "rank": list(want)}
        if have != want:
            raise KvtcError(
                "PROFILE_MISMATCH",
                f"profile {self.path} is for {what}, but this rank is tp rank {want[0]} of {want[1]}, pp rank {want[2]} of {want[3]}",
                "Load the profile calibrated for this rank (`kvtc calibrate --kv DIR` writes one per rank under tp_<t>_pp_<p>/).",
                ctx,
            )
        heads = tuple(sh.kv_heads) if sh else None
        if kv_heads is not None and heads is not None and tuple(int(h) for h in kv_heads) != heads:
            raise KvtcError(
                "PROFILE_MISMATCH",
                f"profile {self.path} covers the model's KV heads {list(heads)}, but this rank holds {[int(h) for h in kv_heads]}",
                "The engine splits KV heads differently from the profile's calibration: calibrate with the engine's split.",
                {**ctx, "profile_kv_heads": list(heads)},
            )
        if kv_heads is not None and heads is None and len(kv_heads) != self.kv_heads:
            raise KvtcError(
                "PROFILE_MISMATCH",
                f"profile {self.path} covers all {self.kv_heads} KV heads, but this rank holds {len(kv_heads)}",
                "Load the profile calibrated for this rank.",
                ctx,
            )
        if cache_layers is not None and tuple(int(l) for l in cache_layers) != tuple(self.cache_layers or ()):
            raise KvtcError(
                "PROFILE_MISMATCH",
                f"profile {self.path} covers the model's layers {list(self.cache_layers or ())}, but this rank holds {[int(l) for l in cache_layers]}",
                "Load the profile calibrated for this pipeline stage (its model.cache_layers name the layers it covers).",
                {**ctx, "profile_cache_layers": list(self.cache_layers or ())},
            )

    def split(self, tokens: int) -> Tuple[int, int, int]:
        """(sink, window, n): the raw counts a blob of `tokens` tokens uses, and the compressed count (§6)."""
        s = min(self.sink, tokens)
        w = min(self.window, tokens - s)
        return s, w, tokens - s - w


# ------------------------------------------------------------------------------------------------
# Profile id: the ONE place that knows how profile_id is derived (§2.1) and how blobs use it (§6).


def _f64_hex(v: float) -> str:
    """A real in the canonical text: its IEEE 754 binary64 bits, big-endian, 16 lowercase hex digits."""
    return struct.pack(">d", float(v)).hex()


def _v1_expressible(rope) -> Optional[Dict[str, Any]]:
    """The one description format 1 could say (one group over every layer, default/linear/llama3,
    attention factor 1), or None."""
    if isinstance(rope, dict):
        return rope
    if len(rope) != 1 or rope[0].get("none") or float(rope[0].get("attention_factor", 1)) != 1:
        return None
    sc = rope[0].get("scaling")
    return rope[0] if sc is None or sc["type"] in ("linear", "llama3") else None


def _rope_id_lines(rope) -> List[str]:
    """§2.1's lines for model.rope: format 1's for RoPE format 1 could say, else one block per group."""
    lines: List[str] = []
    one = _v1_expressible(rope)
    if one is not None:
        lines.append(f"model.rope.theta {_f64_hex(one['theta'])}")
        lines.append(f"model.rope.rotary_dim {int(one['rotary_dim'])}")
        lines.append(f"model.rope.layout {one['layout']}")
        sc = one.get("scaling")
        if sc is not None:
            lines.append(f"model.rope.scaling.type {sc['type']}")
            lines.append(f"model.rope.scaling.factor {_f64_hex(sc['factor'])}")
            for k in ("low_freq_factor", "high_freq_factor", "original_max_position_embeddings"):
                if k in sc:
                    lines.append(f"model.rope.scaling.{k} {_f64_hex(sc[k])}")
        return lines
    lines.append(f"model.rope.groups {len(rope)}")
    for j, g in enumerate(rope):
        p = f"model.rope.{j}"
        lines.append(f"{p}.layers {','.join(str(int(l)) for l in g['layers'])}")
        if g.get("none"):
            lines.append(f"{p}.none")
            continue
        lines.append(f"{p}.theta {_f64_hex(g['theta'])}")
        lines.append(f"{p}.rotary_dim {int(g['rotary_dim'])}")
        lines.append(f"{p}.layout {g['layout']}")
        lines.append(f"{p}.attention_factor {_f64_hex(g.get('attention_factor', 1.0))}")
        sc = g.get("scaling")
        if sc is None:
            continue
        lines.append(f"{p}.scaling.type {sc['type']}")
        for k in sorted(k for k in sc if k != "type"):
            v = sc[k]
            if isinstance(v, bool):
                lines.append(f"{p}.scaling.{k} {1 if v else 0}")
            elif isinstance(v, list):
                lines.append(f"{p}.scaling.{k} {','.join(_f64_hex(x) for x in v)}")
            else:
                lines.append(f"{p}.scaling.{k} {_f64_hex(v)}")
    return lines


def profile_id_text(manifest: Dict[str, Any]) -> str:
    """The canonical text profile_id hashes (§2.1): one "key value" line per field that decoding
    uses, plus the tensor file's sha256; integers in decimal, reals as float64 bits in hex.
    `manifest` must have passed _checked_manifest (types and names are already checked)."""
    model = manifest["model"]
    rope = model["rope"]
    settings = manifest["settings"]
    lines = ["kvtc-profile-id 1", f"tensors.sha256 {manifest['tensors']['sha256']}"]
    for k in ("layers", "kv_heads", "head_dim"):
        lines.append(f"model.{k} {int(model[k])}")
    lines.append(f"model.kv_dtype {model['kv_dtype']}")
    # format 3's fields, each only when present (so format 1 and 2 ids are unchanged)
    if "value_head_dim" in model:
        lines.append(f"model.value_head_dim {int(model['value_head_dim'])}")
    if "cache" in model:
        lines.append(f"model.cache {model['cache']}")
    if "model_layers" in model:
        lines.append(f"model.model_layers {int(model['model_layers'])}")
    if "cache_layers" in model:
        lines.append(f"model.cache_layers {','.join(str(int(l)) for l in model['cache_layers'])}")
    shard = manifest.get("shard")
    if shard is not None:
        lines.append(f"shard {int(shard['tp_rank'])} {int(shard['tp_size'])} {int(shard['pp_rank'])} {int(shard['pp_size'])}")
        lines.append(f"shard.kv_heads {','.join(str(int(h)) for h in shard['kv_heads'])}")
    lines.extend(_rope_id_lines(rope))
    for k in ("sink", "window"):
        lines.append(f"settings.{k} {int(settings[k])}")
    lines.append(f"settings.entropy {settings['entropy']}")
    plans = manifest["plans"]
    lines.append(f"plans {len(plans)}")
    for i, plan in enumerate(plans):
        lines.append(f"plan {i} index {int(plan['index'])}")
        lines.append(f"plan {i} kind {plan['kind']}")
        lines.append(f"plan {i} layers {','.join(str(int(l)) for l in plan['layers'])}")
        for k in ("dim", "rank", "budget_bits", "bits_per_token"):
            lines.append(f"plan {i} {k} {int(plan[k])}")
        lines.append(f"plan {i} groups {len(plan['groups'])}")
        for g, grp in enumerate(plan["groups"]):
            lines.append(f"plan {i} group {g} {int(grp['start'])} {int(grp['end'])} {grp['type']} {grp['mode']}")
        for role in TENSOR_ROLES:
            lines.append(f"plan {i} tensor {role} {plan['tensors'][role]}")
    return "".join(line + "\n" for line in lines)


def expected_profile_id(manifest: Dict[str, Any]) -> str:
    """The profile_id a manifest must carry: the first 16 hex digits of sha256(profile_id_text)."""
    return hashlib.sha256(profile_id_text(manifest).encode("utf-8")).hexdigest()[:16]


def kv_dump_fingerprint_id(spec_sha256: str) -> str:
    """The model fingerprint id of a profile calibrated from a KV dump (fingerprint.source "kv-dump"):
    the first 16 hex digits of sha256("kv-dump:" + spec_sha256 + "\n")."""
    return hashlib.sha256(f"kv-dump:{spec_sha256}\n".encode("utf-8")).hexdigest()[:16]


def blob_profile_id(profile_id: str) -> bytes:
    """The blob header's profile id: the first 8 bytes of the hex-decoded profile_id (§6)."""
    return bytes.fromhex(profile_id)[:8]


def verify_profile_id(manifest: Dict[str, Any], where: str) -> str:
    """Checks the manifest's profile_id (§2.1); returns it."""
    pid = manifest.get("profile_id")
    if not isinstance(pid, str) or not re.fullmatch(r"[0-9a-f]{16}", pid):
        raise _invalid(where, f"profile_id {json.dumps(pid)} is not 16 lowercase hex digits")
    want = expected_profile_id(manifest)
    if pid != want:
        legacy = pid == manifest["tensors"]["sha256"][:16]
        raise _invalid(
            where,
            f"profile_id {pid} follows the old rule (the tensor file hash alone); profiles now bind the id to the manifest too (expected {want})"
            if legacy
            else f"profile_id {pid} does not match the tensor file hash and the manifest fields decoding uses (expected {want}): "
            "the model shape, RoPE, sink/window/entropy, a plan or tensors.sha256 was edited",
        )
    return pid


# ------------------------------------------------------------------------------------------------


def _invalid(
    where: str, message: str, fix: str = "Re-create the profile with `kvtc calibrate` (or restore the two files it wrote)."
) -> KvtcError:
    return KvtcError("PROFILE_INVALID", f"profile {where}: {message}", fix, {"profile": where})


def _int(v: Any, what: str, where: str, lo: int = 0, hi: int = 2**53) -> int:
    """A JSON integer (8 and 8.0 are the same integer) in [lo, hi]."""
    ok = not isinstance(v, bool) and (isinstance(v, int) or (isinstance(v, float) and math.isfinite(v) and v.is_integer()))
    if not ok or not lo <= v <= hi:
        raise _invalid(where, f"{what} is {json.dumps(v)}; expected an integer in [{lo}, {hi}]")
    return int(v)


def _num(v: Any, what: str, where: str, positive: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or (positive and v <= 0):
        raise _invalid(where, f"{what} is {json.dumps(v)}; expected a finite number{' > 0' if positive else ''}")
    return float(v)


def _obj(v: Any, what: str, where: str) -> Dict[str, Any]:
    if not isinstance(v, dict):
        raise _invalid(where, f"{what} is missing or not an object")
    return v


def _choice(v: Any, what: str, where: str, choices) -> str:
    if v not in choices:
        raise _invalid(where, f"{what} is {json.dumps(v)}; expected one of {', '.join(choices)}")
    return v


def _name(v: Any, what: str, where: str) -> str:
    if not isinstance(v, str) or not NAME_RE.fullmatch(v):
        raise _invalid(where, f"{what} is {json.dumps(v)}; a tensor name is 1–128 letters, digits, '_', '.' or '-'")
    return v


def profile_dir(path) -> str:
    """A profile argument (the directory, or its kvtc-profile.json) → the directory."""
    path = os.fspath(path)
    if os.path.isfile(path) and os.path.basename(path) == MANIFEST_FILE:
        return os.path.dirname(path) or "."
    return path


def _check_version(manifest: Dict[str, Any], where: str) -> None:
    if manifest.get("format") != PROFILE_FORMAT:
        raise _invalid(
            where, f'{MANIFEST_FILE} is not a kvtc profile (format is {json.dumps(manifest.get("format"))}, expected "{PROFILE_FORMAT}")'
        )
    v = manifest.get("format_version")
    if v in FORMAT_VERSIONS and not isinstance(v, bool):
        return
    producer = manifest.get("producer") if isinstance(manifest.get("producer"), dict) else {}
    writer = f"{producer.get('name', 'kvtc')} {producer.get('version', '(unknown version)')}"
    newer = isinstance(v, (int, float)) and not isinstance(v, bool) and v > max(FORMAT_VERSIONS)
    known = ", ".join(map(str, FORMAT_VERSIONS[:-1])) + f" and {FORMAT_VERSIONS[-1]}"
    raise KvtcError(
        "PROFILE_VERSION",
        f"profile {where} has format version {json.dumps(v)}; this kvtc Python package reads versions {known}",
        (
            f"It was written by {writer}: upgrade the kvtc Python package to a version that reads format {v}."
            if newer
            else f"Re-calibrate the model with kvtc to write a version-{FORMAT_VERSION} profile."
        ),
        {"profile": where, "format_version": v, "producer": producer},
    )


def _checked_description(r: Dict[str, Any], at: str, D: int, where: str, v2: bool) -> Dict[str, Any]:
    """One RoPE description (§4.1), normalized; format 1 allows only linear/llama3 scaling."""
    rope: Dict[str, Any] = {
        "theta": _num(r.get("theta"), f"{at}.theta", where, positive=True),
        "rotary_dim": _int(r.get("rotary_dim"), f"{at}.rotary_dim", where, 1, U16_MAX),
        "layout": _choice(r.get("layout"), f"{at}.layout", where, ("half", "interleaved")),
    }
    if rope["rotary_dim"] % 2:
        raise _invalid(where, f"{at}.rotary_dim = {rope['rotary_dim']} is odd; RoPE rotates pairs, so it must be even")
    if rope["rotary_dim"] > D:
        raise _invalid(where, f"{at}.rotary_dim = {rope['rotary_dim']} exceeds model.head_dim {D}")
    if v2 and r.get("attention_factor") is not None:
        rope["attention_factor"] = _num(r.get("attention_factor"), f"{at}.attention_factor", where, positive=True)
    if r.get("scaling") is None:
        return rope
    sc = _obj(r.get("scaling"), f"{at}.scaling", where)
    kind = _choice(sc.get("type"), f"{at}.scaling.type", where, ("linear", "llama3", "yarn", "longrope") if v2 else ("linear", "llama3"))
    scaling: Dict[str, Any] = {"type": kind}
    need = {
        "linear": ("factor",),
        "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
        "yarn": ("factor", "original_max_position_embeddings", "beta_fast", "beta_slow"),
        "longrope": ("original_max_position_embeddings",),
    }[kind]
    for k in need:
        if k not in sc:
            raise _invalid(where, f"{at}.scaling.{k} is missing; {kind} scaling needs it")
        scaling[k] = _num(sc[k], f"{at}.scaling.{k}", where, positive=True)
    if kind == "llama3" and not scaling["high_freq_factor"] > scaling["low_freq_factor"]:
        raise _invalid(
            where,
            f"{at}.scaling.high_freq_factor {scaling['high_freq_factor']} must be greater than low_freq_factor {scaling['low_freq_factor']}",
        )
    if kind == "yarn":
        if not isinstance(sc.get("truncate"), bool):
            raise _invalid(where, f"{at}.scaling.truncate must be true or false")
        scaling["truncate"] = sc["truncate"]
    if kind == "longrope":
        for k in ("short_factor", "long_factor"):
            v = sc.get(k)
            if not isinstance(v, list) or len(v) != rope["rotary_dim"] // 2:
                raise _invalid(where, f"{at}.scaling.{k} must hold {rope['rotary_dim'] // 2} factors (rotary_dim {rope['rotary_dim']})")
            scaling[k] = [_num(x, f"{at}.scaling.{k}", where, positive=True) for x in v]
    rope["scaling"] = scaling
    return rope


def _checked_rope(r: Any, version: Any, L: int, D: int, where: str):
    """model.rope (§4.1): format 1's one object, or format 2's groups naming every layer once."""
    if version == 1:
        if not isinstance(r, dict):
            raise _invalid(where, "model.rope is a list of groups, which is format 2; a format 1 manifest has one RoPE object")
        return _checked_description(r, "model.rope", D, where, False)
    if not isinstance(r, list) or not r:
        raise _invalid(where, "model.rope is one RoPE object (format 1); a format 2 manifest lists the RoPE of each layer as groups")
    seen: Dict[int, int] = {}
    groups = []
    for j, g in enumerate(r):
        at = f"model.rope[{j}]"
        g = _obj(g, at, where)
        layers = g.get("layers")
        if not isinstance(layers, list) or not layers:
            raise _invalid(where, f"{at}.layers must list at least one layer")
        ls = [_int(l, f"{at}.layers", where, 0, L - 1) for l in layers]
        for a, b in zip(ls, ls[1:]):
            if b <= a:
                raise _invalid(where, f"{at}.layers must be ascending ({a} then {b})")
        for l in ls:
            if l in seen:
                raise _invalid(where, f"{at}.layers names layer {l}, which model.rope[{seen[l]}] names too")
            seen[l] = j
        if g.get("none") is True:
            groups.append({"layers": ls, "none": True})
        else:
            groups.append({"layers": ls, **_checked_description(g, at, D, where, True)})
    missing = [l for l in range(L) if l not in seen]
    if missing:
        raise _invalid(where, f"model.rope names no RoPE (or none) for layer {missing[0]}; every layer needs one")
    return groups


def layer_ropes(rope, L: int) -> List[Optional[Rope]]:
    """Each layer's Rope from a checked model.rope (format 1 or 2)."""

    def mk(d):
        return Rope(d["theta"], d["rotary_dim"], d["layout"], d.get("scaling"), float(d.get("attention_factor", 1.0)))

    if isinstance(rope, dict):
        one = mk(rope)
        return [one] * L
    out: List[Optional[Rope]] = [None] * L
    for g in rope:
        r = None if g.get("none") else mk(g)
        for l in g["layers"]:
            out[l] = r
    return out


def _checked_manifest(m: Dict[str, Any], where: str) -> Dict[str, Any]:
    """Types and ranges of every manifest field the runtime (and the profile id) uses, normalized
    (integers as int). Checks the limits, plans, groups, bits and budget (§2, §3 reader checks)."""
    model = _obj(m.get("model"), "model", where)
    L = _int(model.get("layers"), "model.layers", where, 1, U16_MAX)
    H = _int(model.get("kv_heads"), "model.kv_heads", where, 1, U16_MAX)
    D = _int(model.get("head_dim"), "model.head_dim", where, 1, U16_MAX)
    kv_dtype = _choice(model.get("kv_dtype"), "model.kv_dtype", where, ("float32", "float16"))
    v3 = _checked_v3(m, model, L, H, D, where)
    Dv = v3.get("value_head_dim", D)
    rope = _checked_rope(model.get("rope"), m.get("format_version"), L, D, where)
    st_ = _obj(m.get("settings"), "settings", where)
    settings = {
        "sink": _int(st_.get("sink"), "settings.sink", where, 0, U32_MAX),
        "window": _int(st_.get("window"), "settings.window", where, 0, U32_MAX),
        "entropy": _choice(st_.get("entropy"), "settings.entropy", where, ENTROPY_CODERS),
    }
    t = _obj(m.get("tensors"), "tensors", where)
    if t.get("file") != TENSORS_FILE:
        raise _invalid(where, f'tensors.file is {json.dumps(t.get("file"))}; expected "{TENSORS_FILE}"')
    sha = t.get("sha256")
    if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{64}", sha):
        raise _invalid(where, f"tensors.sha256 {json.dumps(sha)} is not 64 lowercase hex digits")
    tensors = {"file": TENSORS_FILE, "sha256": sha, "bytes": _int(t.get("bytes"), "tensors.bytes", where, 0, 2**62)}

    entries = m.get("plans")
    if not isinstance(entries, list) or not entries:
        raise _invalid(where, "plans is missing or empty")
    if len(entries) > U16_MAX + 1:
        raise _invalid(where, f"{len(entries)} plans; a blob section names at most {U16_MAX + 1}")
    plans = []
    covered = set()
    names: Dict[str, str] = {}
    for pos, pe in enumerate(entries):
        at = f"plans[{pos}]"
        pe = _obj(pe, at, where)
        idx = _int(pe.get("index"), f"{at}.index", where, 0, U16_MAX)
        if idx != pos:
            raise _invalid(
                where, f"{at}.index is {idx}, but a plan's index must equal its position {pos} (blob sections refer to plans by it)"
            )
        kind = _choice(pe.get("kind"), f"{at}.kind", where, ("key", "value"))
        layers = pe.get("layers")
        if not isinstance(layers, list) or not layers:
            raise _invalid(where, f"{at}.layers is missing or empty")
        layers = [_int(l, f"{at}.layers[{li}]", where, 0, U16_MAX) for li, l in enumerate(layers)]
        for li, l in enumerate(layers):
            if l >= L:
                raise _invalid(where, f"{at}.layers[{li}] = {l} is not a layer of the model (it has {L}: 0–{L - 1})")
            if (kind, l) in covered:
                raise _invalid(where, f"{at}.layers[{li}]: {kind} layer {l} is already covered by another plan")
            covered.add((kind, l))
        p = _int(pe.get("dim"), f"{at}.dim", where, 1, 2**40)
        width, wname = (D, "head dim") if kind == "key" else (Dv, "value head dim")
        if p != len(layers) * H * width:
            raise _invalid(where, f"{at}.dim is {p}, but {len(layers)} layers × {H} KV heads × {width} {wname} = {len(layers) * H * width}")
        rank = _int(pe.get("rank"), f"{at}.rank", where, 0, 2**40)
        if rank > p:
            raise _invalid(where, f"{at}.rank {rank} exceeds its dim {p} (a basis has at most p orthonormal columns)")
        budget = _int(pe.get("budget_bits"), f"{at}.budget_bits", where, 0, 2**53)
        bpt = _int(pe.get("bits_per_token"), f"{at}.bits_per_token", where, 0, 2**53)
        groups_in = pe.get("groups")
        if not isinstance(groups_in, list):
            raise _invalid(where, f"{at}.groups is missing")
        groups = []
        end_at = 0
        bits = 0
        for gi, g in enumerate(groups_in):
            g = _obj(g, f"{at}.groups[{gi}]", where)
            start = _int(g.get("start"), f"{at}.groups[{gi}].start", where, 0, 2**40)
            end = _int(g.get("end"), f"{at}.groups[{gi}].end", where, 0, 2**40)
            gtype = _choice(g.get("type"), f"{at}.groups[{gi}].type", where, tuple(TYPE_BITS))
            mode = _choice(g.get("mode"), f"{at}.groups[{gi}].mode", where, ("static", "dynamic"))
            if start < end_at:
                raise _invalid(
                    where,
                    f"{at}.groups[{gi}] starts at {start}, before the previous group's end {end_at} (groups must be sorted and disjoint)",
                )
            if end <= start:
                raise _invalid(where, f"{at}.groups[{gi}] is empty or reversed ([{start}, {end}))")
            if end > rank:
                raise _invalid(where, f"{at}.groups[{gi}] ends at {end}, past the rank {rank}")
            end_at = end
            groups.append({"start": start, "end": end, "type": gtype, "mode": mode})
            bits += (end - start) * TYPE_BITS[gtype] + (32 if mode == "dynamic" else 0)
        if end_at != rank:
            raise _invalid(where, f"{at}: the last group ends at {end_at}, but the rank is {rank} (the last group must end at the rank)")
        if bpt != bits:
            raise _invalid(where, f"{at}.bits_per_token is {bpt}, but its groups use {bits} bits per token")
        if bits > budget:
            raise _invalid(where, f"{at} uses {bits} bits per token, over its budget_bits {budget}")
        tn = _obj(pe.get("tensors"), f"{at}.tensors", where)
        tnames = {}
        for role in TENSOR_ROLES:
            name = _name(tn.get(role), f"{at}.tensors.{role}", where)
            if name in names:
                raise _invalid(where, f"{at}.tensors.{role} names tensor {name}, already used as {names[name]}")
            names[name] = f"{at}.tensors.{role}"
            tnames[role] = name
        plans.append(
            {
                "index": idx,
                "kind": kind,
                "layers": layers,
                "dim": p,
                "rank": rank,
                "budget_bits": budget,
                "bits_per_token": bpt,
                "groups": groups,
                "tensors": tnames,
            }
        )
    if len(covered) != 2 * L:
        missing = [f"{k} {l}" for k in ("key", "value") for l in range(L) if (k, l) not in covered]
        raise _invalid(
            where,
            f"plans cover {len(covered)} of the {2 * L} (kind, layer) pairs; missing: {', '.join(missing[:5])}{', …' if len(missing) > 5 else ''}",
        )
    return {
        "profile_id": m.get("profile_id"),
        "model": {
            "name": m["model"].get("name", ""),
            "fingerprint": model.get("fingerprint"),
            "layers": L,
            "kv_heads": H,
            "head_dim": D,
            "kv_dtype": kv_dtype,
            "rope": rope,
            **{k: v for k, v in v3.items() if k != "shard"},
        },
        **({"shard": v3["shard"]} if "shard" in v3 else {}),
        "settings": settings,
        "plans": plans,
        "tensors": tensors,
    }


def _checked_v3(m: Dict[str, Any], model: Dict[str, Any], L: int, H: int, D: int, where: str) -> Dict[str, Any]:
    """Format 3's geometry fields, normalized; only the ones present (each goes into profile_id only
    when present). model.value_head_dim, model.cache ("mla-latent" ⇒ kv_heads 1), model.model_layers
    with model.cache_layers (strictly increasing, one per profile layer, each < model_layers) and the
    top-level shard (ranks < sizes, one model KV head index per profile head, distinct)."""
    version = m.get("format_version")
    fp = model.get("fingerprint")
    present = (
        [f"model.{k}" for k in V3_MODEL_FIELDS if k in model]
        + (["shard"] if "shard" in m else [])
        + (["model.fingerprint.source"] if isinstance(fp, dict) and "source" in fp else [])
    )
    if version != 3:
        if present:
            raise _invalid(
                where,
                f"{present[0]} is a format 3 field, but format_version is {json.dumps(version)}",
                "Set format_version to 3 (kvtc writes 3 whenever it records this field), or re-create the profile with `kvtc calibrate`.",
            )
        return {}
    if not present:
        raise _invalid(
            where,
            "format_version is 3, but the manifest has none of format 3's fields (model.value_head_dim, model.cache, model.model_layers, "
            "model.cache_layers, shard, model.fingerprint.source); kvtc writes such a profile as format 2",
        )
    out: Dict[str, Any] = {}
    if "value_head_dim" in model:
        out["value_head_dim"] = _int(model["value_head_dim"], "model.value_head_dim", where, 1, U16_MAX)
    if "cache" in model:
        out["cache"] = _choice(model["cache"], "model.cache", where, CACHE_LAYOUTS)
        if out["cache"] == "mla-latent" and H != 1:
            raise _invalid(
                where,
                f"model.cache is mla-latent but model.kv_heads is {H}; an MLA latent cache has one head per layer (k_rot and c_kv)",
            )
    if ("model_layers" in model) != ("cache_layers" in model):
        one, other = ("model_layers", "cache_layers") if "model_layers" in model else ("cache_layers", "model_layers")
        raise _invalid(where, f"model.{one} is present without model.{other}; a profile records both or neither")
    if "model_layers" in model:
        ML = _int(model["model_layers"], "model.model_layers", where, L, U16_MAX)
        cl = model["cache_layers"]
        if not isinstance(cl, list) or len(cl) != L:
            got = f"{len(cl)} entries" if isinstance(cl, list) else json.dumps(cl)
            raise _invalid(where, f"model.cache_layers must hold one model layer per profile layer (model.layers = {L}); it holds {got}")
        layers = [_int(x, f"model.cache_layers[{i}]", where, 0, ML - 1) for i, x in enumerate(cl)]
        for i in range(1, L):
            if layers[i] <= layers[i - 1]:
                raise _invalid(
                    where, f"model.cache_layers must be strictly increasing: [{i - 1}] = {layers[i - 1]} then [{i}] = {layers[i]}"
                )
        out["model_layers"] = ML
        out["cache_layers"] = layers
    if "shard" in m:
        sh = _obj(m["shard"], "shard", where)
        norm: Dict[str, Any] = {}
        for dim in ("tp", "pp"):
            size = _int(sh.get(f"{dim}_size"), f"shard.{dim}_size", where, 1, U16_MAX)
            rank = _int(sh.get(f"{dim}_rank"), f"shard.{dim}_rank", where, 0, U16_MAX)
            if rank >= size:
                raise _invalid(where, f"shard.{dim}_rank {rank} is not a rank of shard.{dim}_size {size} (ranks are 0–{size - 1})")
            norm[f"{dim}_rank"], norm[f"{dim}_size"] = rank, size
        kh = sh.get("kv_heads")
        if not isinstance(kh, list) or len(kh) != H:
            got = f"{len(kh)} entries" if isinstance(kh, list) else json.dumps(kh)
            raise _invalid(
                where, f"shard.kv_heads must name the model's KV head of each profile head (model.kv_heads = {H}); it holds {got}"
            )
        heads = [_int(x, f"shard.kv_heads[{i}]", where, 0, U16_MAX) for i, x in enumerate(kh)]
        if len(set(heads)) != len(heads):
            dup = next(h for h in heads if heads.count(h) > 1)
            raise _invalid(where, f"shard.kv_heads names the model's KV head {dup} twice; a rank holds each head once")
        norm["kv_heads"] = heads
        out["shard"] = {k: norm[k] for k in ("tp_rank", "tp_size", "pp_rank", "pp_size", "kv_heads")}
    return out


def _label(v: Any, what: str, where: str, most: int = 1024) -> str:
    if not isinstance(v, str) or not 1 <= len(v) <= most:
        raise _invalid(where, f"{what} is {json.dumps(v)}; expected a string of 1 to {most} characters")
    return v


def _figure(v: Any, what: str, where: str, lo: float, hi: float, lo_open: bool = False) -> float:
    """An informational number: finite, in [lo, hi] (or (lo, hi] when lo_open)."""
    ok = not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v) and (v > lo if lo_open else v >= lo) and v <= hi
    if not ok:
        raise _invalid(where, f"{what} is {json.dumps(v)}; expected a number in {'(' if lo_open else '['}{lo:g}, {hi:g}]")
    return float(v)


def _checked_labels(model: Dict[str, Any], version: Any, where: str) -> None:
    """model.family (a transformers model_type label; format 1–2 name one of kvtc's families, which
    kvtc checks: this package, which loads no model, only checks the label) and model.fingerprint
    (its hex digests; format 3's kv-dump source: no ONNX graph, id derived from spec_sha256)."""
    fam = model.get("family")
    if not isinstance(fam, str) or not FAMILY_RE.fullmatch(fam):
        raise _invalid(where, f"model.family is {json.dumps(fam)}; expected a model type label of 1–64 characters a–z, 0–9 or '_'")
    fp = _obj(model.get("fingerprint"), "model.fingerprint", where)
    for k, n in (("id", 16), ("spec_sha256", 64)) + ((("onnx_sha256", 64),) if "onnx_sha256" in fp else ()):
        v = fp.get(k)
        if not isinstance(v, str) or not re.fullmatch(f"[0-9a-f]{{{n}}}", v):
            raise _invalid(where, f"model.fingerprint.{k} is {json.dumps(v)}; expected {n} lowercase hex digits")
    if "source" in fp and fp["source"] != "kv-dump":
        raise _invalid(where, f'model.fingerprint.source is {json.dumps(fp["source"])}; expected "kv-dump" (or absent)')
    if fp.get("source") == "kv-dump":
        if "onnx_sha256" in fp:
            raise _invalid(
                where,
                "model.fingerprint.onnx_sha256 is present, but fingerprint.source is kv-dump: a profile calibrated from a KV dump has no ONNX graph",
            )
        want = kv_dump_fingerprint_id(fp["spec_sha256"])
        if fp["id"] != want:
            raise _invalid(
                where,
                f'model.fingerprint.id {fp["id"]} is not the id of a kv-dump fingerprint with this spec_sha256 (expected {want}: sha256("kv-dump:" + spec_sha256 + "\\n"))',
            )
    if "onnx_sha256" not in fp and fp.get("source") != "kv-dump":
        raise _invalid(
            where,
            'model.fingerprint.onnx_sha256 is missing; only a profile calibrated from a KV dump (fingerprint.source "kv-dump") has none',
        )


def _checked_informational(m: Dict[str, Any], c: Dict[str, Any], where: str) -> Optional[int]:
    """The fields decoding does not use, range-checked as kvtc's schema does (§2.3): kvtc never
    writes values outside these ranges, so a manifest holding one was edited or corrupted. Returns
    model.max_positions, or None when the profile does not record it."""
    prod = _obj(m.get("producer"), "producer", where)
    _label(prod.get("name"), "producer.name", where)
    _label(prod.get("version"), "producer.version", where)
    model = m["model"]
    _label(model.get("name"), "model.name", where)
    _label(model.get("architecture"), "model.architecture", where)
    if "onnx_file" in model:
        _label(model.get("onnx_file"), "model.onnx_file", where, 4096)
    heads = _int(model.get("heads"), "model.heads", where, 1, U16_MAX)
    kvh = c["model"]["kv_heads"]
    _checked_labels(model, m.get("format_version"), where)
    # a shard's kv_heads is its rank's share, which need not divide the model's query heads
    if heads % kvh and "shard" not in c:
        raise _invalid(
            where, f"model.heads {heads} is not a multiple of model.kv_heads {kvh} (each KV head serves heads / kv_heads query heads)"
        )
    max_positions = None
    if "max_positions" in model:
        max_positions = _int(model.get("max_positions"), "model.max_positions", where, 1, MAX_POSITIONS_FIELD)
    st = m["settings"]
    _figure(st.get("ratio_target"), "settings.ratio_target", where, 1, 64)
    for k in ("tokens", "heldout", "chunk", "granule"):
        _int(st.get(k), f"settings.{k}", where, 1, SAFE_INT)
    if "report" in st:
        _int(st.get("report"), "settings.report", where, 1, SAFE_INT)
    _int(st.get("seed"), "settings.seed", where, -SAFE_INT, SAFE_INT)
    for k in ("grouping", "grouping_requested"):
        if k == "grouping_requested" and k not in st:
            continue
        g = st.get(k)
        if not isinstance(g, str) or not (GROUPING_RE.fullmatch(g) or (k == "grouping_requested" and g == "auto")):
            also = ' (or "auto")' if k == "grouping_requested" else ""
            raise _invalid(where, f'settings.{k} is {json.dumps(g)}; expected "layer", "all" or a number of layers{also}')
    cal = _obj(m.get("calibration"), "calibration", where)
    sources = cal.get("sources")
    if not isinstance(sources, list) or not sources:
        raise _invalid(where, "calibration.sources must list at least one source (calibrate reads at least one text)")
    for i, src in enumerate(sources):
        src = _obj(src, f"calibration.sources[{i}]", where)
        _label(src.get("name"), f"calibration.sources[{i}].name", where)
        if not isinstance(src.get("sha256"), str) or not re.fullmatch(r"[0-9a-f]{64}", src["sha256"]):
            raise _invalid(where, f"calibration.sources[{i}].sha256 {json.dumps(src.get('sha256'))} is not 64 lowercase hex digits")
        _int(src.get("bytes"), f"calibration.sources[{i}].bytes", where, 1, SAFE_INT)
    for k in ("tokens_fit", "tokens_heldout", "sequences") + (("tokens_report",) if "tokens_report" in cal else ()):
        _int(cal.get(k), f"calibration.{k}", where, 1, SAFE_INT)
    if "grouping_candidates" in cal:
        cands = cal.get("grouping_candidates")
        if not isinstance(cands, list) or not cands:
            raise _invalid(where, "calibration.grouping_candidates, when present, lists at least one candidate")
        for i, cd in enumerate(cands):
            cd = _obj(cd, f"calibration.grouping_candidates[{i}]", where)
            if not isinstance(cd.get("grouping"), str) or not GROUPING_RE.fullmatch(cd["grouping"]):
                raise _invalid(where, f"calibration.grouping_candidates[{i}].grouping is {json.dumps(cd.get('grouping'))}")
            _figure(cd.get("ratio_compressed"), f"calibration.grouping_candidates[{i}].ratio_compressed", where, 0, MAX_RATIO, lo_open=True)
            for k in ("key_mean", "value_mean"):
                _figure(cd.get(k), f"calibration.grouping_candidates[{i}].{k}", where, 0, MAX_REL_ERROR)
    me = _obj(m.get("measured"), "measured", where)
    if "split" in me and me["split"] != "report":
        raise _invalid(where, f'measured.split is {json.dumps(me["split"])}; expected "report" (or absent)')
    ctx = _int(me.get("context_tokens"), "measured.context_tokens", where, 1, SAFE_INT)
    sink, window = c["settings"]["sink"], c["settings"]["window"]
    if ctx <= sink + window:
        raise _invalid(
            where,
            f"measured.context_tokens {ctx} leaves no compressed token after sink {sink} + window {window} (calibrate measures on contexts longer than that)",
        )
    for k in ("ratio_compressed", "ratio_blob"):
        _figure(me.get(k), f"measured.{k}", where, 0, MAX_RATIO, lo_open=True)
    rel = _obj(me.get("rel_error"), "measured.rel_error", where)
    L = c["model"]["layers"]
    for kind in ("key", "value"):
        per = rel.get(kind)
        if not isinstance(per, list) or len(per) != L:
            raise _invalid(
                where,
                f"measured.rel_error.{kind} must hold one figure per layer ({L}); it holds {len(per) if isinstance(per, list) else json.dumps(per)}",
            )
        for i, v in enumerate(per):
            _figure(v, f"measured.rel_error.{kind}[{i}]", where, 0, MAX_REL_ERROR)
        _figure(rel.get(f"{kind}_mean"), f"measured.rel_error.{kind}_mean", where, 0, MAX_REL_ERROR)
        ci = rel.get(f"{kind}_mean_ci95")
        if ci is not None or f"{kind}_mean_ci95" in rel:
            if not isinstance(ci, list) or len(ci) != 2:
                raise _invalid(where, f"measured.rel_error.{kind}_mean_ci95 is {json.dumps(ci)}; expected [low, high]")
            lo, hi = (_figure(x, f"measured.rel_error.{kind}_mean_ci95", where, 0, MAX_REL_ERROR) for x in ci)
            if not lo <= hi:
                raise _invalid(where, f"measured.rel_error.{kind}_mean_ci95 is [{ci[0]}, {ci[1]}]: its low end is above its high end")
    if "tuning_rel_error" in me:
        tu = _obj(me.get("tuning_rel_error"), "measured.tuning_rel_error", where)
        for k in ("key_mean", "value_mean"):
            _figure(tu.get(k), f"measured.tuning_rel_error.{k}", where, 0, MAX_REL_ERROR)
    if c["tensors"]["bytes"] < 8:
        raise _invalid(where, f"tensors.bytes is {c['tensors']['bytes']}; a safetensors file has at least 8 bytes")
    return max_positions


def _read_tensor_file(d: str, m: Dict[str, Any], where: str, max_tensor_bytes: int) -> Dict[str, np.ndarray]:
    """The tensor file, strictly (§3): size as declared and as the plans imply, sha256, a header
    length that fits and is a multiple of 8, exactly the plans' tensors (F32, declared shapes,
    entries of exactly dtype/shape/data_offsets), data contiguous from 0 to the end of the file."""
    path = os.path.join(d, TENSORS_FILE)
    try:
        size = os.stat(path).st_size
    except OSError:
        raise _invalid(where, f"tensor file {TENSORS_FILE} is missing") from None
    if not os.path.isfile(path):
        raise _invalid(where, f"{TENSORS_FILE} is not a regular file")
    wanted: Dict[str, Tuple[int, ...]] = {}
    for pe in m["plans"]:
        p, r = pe["dim"], pe["rank"]
        shapes = {"mean": (p,), "basis": (p, r), "variances": (r,), "lo": (r,), "hi": (r,)}
        for role in TENSOR_ROLES:
            wanted[pe["tensors"][role]] = shapes[role]
    data_bytes = sum(4 * int(np.prod(s, dtype=np.int64)) for s in wanted.values())
    max_header = HEADER_BASE_BYTES + HEADER_PER_TENSOR_BYTES * len(wanted)
    if size != m["tensors"]["bytes"]:
        raise _invalid(where, f"{TENSORS_FILE} has {size} bytes, but tensors.bytes says {m['tensors']['bytes']}")
    if size < 8 + data_bytes or size > 8 + max_header + data_bytes:
        raise _invalid(
            where,
            f"{TENSORS_FILE} has {size} bytes, but the plans' tensors take {data_bytes} bytes of data plus a header of at most {max_header}",
        )
    if size > max_tensor_bytes:
        raise _invalid(
            where,
            f"{TENSORS_FILE} is {size} bytes, more than max_tensor_bytes={max_tensor_bytes}",
            "Pass a larger max_tensor_bytes to read_profile if the profile is trusted.",
        )
    try:
        with open(path, "rb") as f:
            buf = f.read(size + 1)
    except OSError as e:
        raise _invalid(where, f"cannot read {TENSORS_FILE} ({e.strerror or e})") from None
    if len(buf) != size:
        raise _invalid(where, f"{TENSORS_FILE} changed while it was read")
    digest = hashlib.sha256(buf).hexdigest()
    if digest != m["tensors"]["sha256"]:
        raise _invalid(
            where,
            f"{TENSORS_FILE} does not match the sha256 in the manifest (modified or corrupt): file {digest}, manifest {m['tensors']['sha256']}",
        )
    # The one safetensors parser, strict: bounded header length, a multiple of 8, exactly the plans'
    # tensors (F32, declared shapes, entries of exactly dtype/shape/data_offsets), contiguous data.
    strict = _safetensors.Strict(max_header_bytes=max_header, dtypes=("F32",), tensors=wanted)
    tensors, _ = _safetensors.parse(buf, TENSORS_FILE, strict, error=lambda msg: _invalid(where, f"{TENSORS_FILE}: {msg}"))
    return {name: _safetensors.array(buf, t).astype(np.float32) for name, t in tensors.items()}


def _orthonormality_error(V: np.ndarray, seed: int) -> float:
    """max |VᵀV − I| (float64) — the whole Gram matrix when p·r² ≤ FULL_ORTHO_WORK; otherwise exact
    column norms, 64 random off-diagonal entries and 4 random ±1 probes (each implied by the full
    check, so it never refuses a basis the full check accepts)."""
    p, r = V.shape
    if r == 0:
        return 0.0
    V = V.astype(np.float64)
    if p * r * r <= FULL_ORTHO_WORK:
        worst = 0.0
        for a in range(0, r, 512):  # blocks of the Gram matrix: bounded scratch
            G = V[:, a : a + 512].T @ V
            G[np.arange(G.shape[0]), a + np.arange(G.shape[0])] -= 1.0
            worst = max(worst, float(np.max(np.abs(G))))
        return worst
    rng = np.random.default_rng(0x9E3779B9 ^ seed)
    worst = float(np.max(np.abs(np.einsum("ij,ij->j", V, V) - 1.0)))
    if r > 1:
        a = rng.integers(0, r, 64)
        b = (a + 1 + rng.integers(0, r - 1, 64)) % r
        worst = max(worst, float(np.max(np.abs(np.einsum("ij,ij->j", V[:, a], V[:, b])))))
    for _ in range(4):
        z = np.where(rng.random(r) < 0.5, -1.0, 1.0)
        w = V.T @ (V @ z)
        worst = max(worst, float(np.max(np.abs(w - z))) / r)
    return worst


def read_profile(path, *, max_tensor_bytes: int = DEFAULT_MAX_TENSOR_BYTES) -> Profile:
    """Reads and checks a profile directory (or its kvtc-profile.json), as kvtc does, before
    anything uses it: format and version, every manifest field the runtime uses, the plans'
    consistency (index, layers, dims, ranks, groups, bits, budget), RoPE, the profile id, a strict
    parse of the tensor file (size, sha256, header, exactly the plans' tensors, contiguous),
    finite and bounded values, lo ≤ hi for static components and orthonormal bases.

    Raises KvtcError: PROFILE_INVALID (missing, corrupt, edited or inconsistent files) or
    PROFILE_VERSION (a format_version other than 1, 2 or 3).
    """
    d = profile_dir(path)
    where = d
    if not os.path.isdir(d):
        raise KvtcError(
            "PROFILE_INVALID",
            f"profile {d} does not exist",
            "Pass a profile directory written by `kvtc calibrate` (e.g. kvtc-profiles/stories260k).",
            {"profile": d},
        )
    mpath = os.path.join(d, MANIFEST_FILE)
    if not os.path.isfile(mpath):
        raise _invalid(
            where,
            f"no {MANIFEST_FILE} in it",
            "Pass the directory `kvtc calibrate` wrote (it holds kvtc-profile.json and kvtc-profile.safetensors).",
        )
    try:
        if os.stat(mpath).st_size > MAX_MANIFEST_BYTES:
            raise _invalid(where, f"{MANIFEST_FILE} is larger than {MAX_MANIFEST_BYTES} bytes")
        with open(mpath, "rb") as f:
            raw = f.read(MAX_MANIFEST_BYTES + 1)
    except OSError as e:
        raise _invalid(where, f"cannot read {MANIFEST_FILE} ({e.strerror or e})") from None
    if len(raw) > MAX_MANIFEST_BYTES:
        raise _invalid(where, f"{MANIFEST_FILE} is larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        manifest = loads_strict(raw)
    except StrictJsonError as e:
        raise _invalid(where, f"{MANIFEST_FILE} {e}") from None
    if not isinstance(manifest, dict):
        raise _invalid(where, f"{MANIFEST_FILE} is not a JSON object")
    _check_version(manifest, where)
    m = _checked_manifest(manifest, where)
    max_positions = _checked_informational(manifest, m, where)

    ropes = layer_ropes(m["model"]["rope"], m["model"]["layers"])
    from ._rope import inv_freq  # local: avoids a cycle at import time

    for r in {x.key(): x for x in ropes if x is not None}.values():
        sc = r.scaling or {}
        lens = [0, int(sc["original_max_position_embeddings"]) + 1] if sc.get("type") == "longrope" else [0]
        for n in lens:
            with np.errstate(all="ignore"):
                inv = inv_freq(r, n)
            bad = np.nonzero(~(np.isfinite(inv) & (inv > 0)))[0]
            if bad.size:
                raise _invalid(
                    where, f"model.rope gives inverse frequency {inv[bad[0]]} for pair {bad[0]}; every one must be finite and > 0"
                )
    shared = ropes[0] if ropes and all(x is not None and ropes[0] is not None and x.key() == ropes[0].key() for x in ropes) else None
    pid = verify_profile_id(m, where)

    tensors = _read_tensor_file(d, m, where, max_tensor_bytes)
    plans: List[Plan] = []
    for pe in m["plans"]:
        idx = pe["index"]
        t = {role: tensors[pe["tensors"][role]] for role in TENSOR_ROLES}
        for role in TENSOR_ROLES:
            a = t[role].reshape(-1)
            bad = np.nonzero(~np.isfinite(a))[0]
            if bad.size:
                raise _invalid(where, f"plan {idx} {role}[{bad[0]}] (tensor {pe['tensors'][role]}) = {a[bad[0]]}")
            if role in ("mean", "lo", "hi") and a.size and float(np.max(np.abs(a))) > MAX_ABS:
                raise _invalid(where, f"plan {idx} {role} (tensor {pe['tensors'][role]}) holds a value beyond ±{MAX_ABS:g}")
        for g in pe["groups"]:
            if g["mode"] != "static":
                continue
            lo, hi = t["lo"][g["start"] : g["end"]], t["hi"][g["start"] : g["end"]]
            bad = np.nonzero(~(lo <= hi))[0]
            if bad.size:
                j = g["start"] + int(bad[0])
                raise _invalid(where, f"plan {idx} component {j}: lo {t['lo'][j]} > hi {t['hi'][j]}")
        err = _orthonormality_error(t["basis"], idx)
        if not err <= ORTHO_TOLERANCE:
            raise _invalid(
                where,
                f"plan {idx} basis (tensor {pe['tensors']['basis']}) is not orthonormal: |VᵀV − I| reaches {err:.2e}, tolerance {ORTHO_TOLERANCE}",
            )
        plans.append(
            Plan(
                index=idx,
                kind=pe["kind"],
                layers=tuple(pe["layers"]),
                dim=pe["dim"],
                rank=pe["rank"],
                budget_bits=pe["budget_bits"],
                bits_per_token=pe["bits_per_token"],
                groups=tuple(Group(**g) for g in pe["groups"]),
                mean=t["mean"],
                basis=t["basis"],
                variances=t["variances"],
                lo=t["lo"],
                hi=t["hi"],
            )
        )
    fp = m["model"]["fingerprint"] if isinstance(m["model"]["fingerprint"], dict) else {}
    return Profile(
        path=d,
        manifest=manifest,
        profile_id=pid,
        model_name=str(m["model"]["name"]),
        fingerprint={str(k): str(v) for k, v in fp.items()},
        layers=m["model"]["layers"],
        kv_heads=m["model"]["kv_heads"],
        head_dim=m["model"]["head_dim"],
        kv_dtype=m["model"]["kv_dtype"],
        rope=shared,
        sink=m["settings"]["sink"],
        window=m["settings"]["window"],
        entropy=m["settings"]["entropy"],
        plans=plans,
        layer_ropes=ropes,
        max_positions=max_positions if max_positions is not None else DEFAULT_MAX_POSITIONS,
        max_positions_recorded=max_positions is not None,
        format_version=int(manifest["format_version"]),
        value_head_dim=m["model"].get("value_head_dim", m["model"]["head_dim"]),
        cache=m["model"].get("cache", "gqa"),
        model_layers=m["model"].get("model_layers", m["model"]["layers"]),
        cache_layers=tuple(m["model"].get("cache_layers", range(m["model"]["layers"]))),
        shard=Shard(**{**m["shard"], "kv_heads": tuple(m["shard"]["kv_heads"])}) if "shard" in m else None,
    )
