"""The .kvtc blob container, version 1 (docs/profile-format.md §6): header, section table, CRC."""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import List, Sequence, Tuple

from ._errors import KvtcError

MAGIC = b"KVTC"
BLOB_VERSION = 1
HEADER_BYTES = 48
SECTION_BYTES = 12
KIND_RAW = 0
KIND_PLAN = 1
CODEC_STORED = 0
CODEC_DEFLATE = 1
#: DEFLATE's largest expansion (a 1-bit length-258 code and a 1-bit distance code make 258 bytes
#: from 2 bits): a section declaring more decoded bytes than this × its stored bytes is refused.
DEFLATE_MAX_RATIO = 1032
#: Header flag bit 0: the cache was float16 (the dtype a decoder restores).
FLAG_FP16 = 1
#: Header flag bit 1: the raw section holds float32 values (a float32 cache with a raw value fp16 cannot hold).
FLAG_RAW_F32 = 2
KNOWN_FLAGS = FLAG_FP16 | FLAG_RAW_F32
#: Most tokens one blob holds.
MAX_TOKENS = 2**24
#: start_position + tokens must not exceed this (every position fits a u32).
MAX_POSITIONS = 2**32
#: The model's context for a profile that does not record model.max_positions: 16M positions,
#: beyond every released model's context, yet far below 2^32 (kvtc's DEFAULT_MAX_POSITIONS).
DEFAULT_MAX_POSITIONS = 2**24

_DEFLATE = {
    "deflate-rle": dict(level=1, strategy=zlib.Z_RLE),
    "deflate-huffman": dict(level=1, strategy=zlib.Z_HUFFMAN_ONLY),
    "deflate-default": dict(level=6, strategy=zlib.Z_DEFAULT_STRATEGY),
}


@dataclass(frozen=True)
class BlobHeader:
    """The fixed 48-byte header of a blob (§6)."""

    version: int
    flags: int
    profile_id: str  # 16 hex digits: the 8 id bytes
    tokens: int
    start_position: int
    layers: int
    kv_heads: int
    head_dim: int
    section_count: int
    sink: int
    window: int

    @property
    def float16(self) -> bool:
        """Flag bit 0: the cache was float16 (else float32); the dtype a decoder restores."""
        return bool(self.flags & FLAG_FP16)

    @property
    def raw_float32(self) -> bool:
        """Flag bit 1: the raw tokens are stored as float32 (else fp16)."""
        return bool(self.flags & FLAG_RAW_F32)

    @property
    def dtype(self) -> str:
        return "float16" if self.float16 else "float32"

    @property
    def compressed_tokens(self) -> int:
        return max(0, self.tokens - self.sink - self.window)


@dataclass(frozen=True)
class Section:
    kind: int
    codec: int
    plan: int
    offset: int  # of the stored bytes in the blob
    stored_bytes: int
    decoded_bytes: int


def check_positions(start: int, tokens: int, max_positions: int, recorded: bool, source: str, *, encoding: bool = False) -> None:
    """Refuses positions past the model's context (§6): start + tokens ≤ max_positions (the profile's
    model.max_positions when `recorded`, else DEFAULT_MAX_POSITIONS). Decoding: BLOB_INVALID (kvtc
    never encodes such a blob); encoding: KV_INVALID (no cache of the model reaches past it)."""
    if start + tokens <= max_positions:
        return
    whose = "the profile's model.max_positions" if recorded else "the bound for a profile that does not record model.max_positions"
    ctx = {"start_position": start, "tokens": tokens, "max_positions": max_positions}
    if encoding:
        raise KvtcError(
            "KV_INVALID",
            f"{source} starts at position {start} with {tokens} tokens, so its last token is at position {start + tokens - 1}, "
            f"but the model has {max_positions} positions (0–{max_positions - 1}, {whose})",
            "Give the cache its real start position (the absolute position of its first token)"
            + (": no cache of this model reaches past its context." if recorded else "; re-calibrating records the model's own bound."),
            {"source": source, **ctx},
        )
    raise KvtcError(
        "BLOB_INVALID",
        f"{source}: header start_position {start} + {tokens} tokens puts its last token at position {start + tokens - 1}, "
        f"but the model has {max_positions} positions (0–{max_positions - 1}, {whose})",
        "kvtc never encodes such a blob with this profile: the blob is corrupt or its start_position was edited; re-encode the cache with `kvtc encode`."
        if recorded
        else "The blob is corrupt or its start_position was edited: re-encode the cache with `kvtc encode`. (Re-calibrating records the model's own bound, model.max_positions.)",
        {"blob": source, **ctx},
    )


def _corrupt(source: str, message: str, context=None) -> KvtcError:
    return KvtcError(
        "BLOB_INVALID",
        f"{source}: {message}",
        "The blob is corrupt, truncated or not a kvtc blob: re-encode the cache with `kvtc encode`.",
        {"blob": source, **(context or {})},
    )


def as_buffer(data) -> memoryview:
    """bytes, bytearray, memoryview or a uint8 NumPy array → a flat byte memoryview (no copy)."""
    try:
        mv = memoryview(data)
    except TypeError:
        raise KvtcError(
            "BLOB_INVALID", f"a blob must be bytes-like, not {type(data).__name__}", "Pass the blob's bytes (e.g. open(path, 'rb').read())."
        ) from None
    if mv.ndim != 1 or mv.itemsize != 1:
        mv = mv.cast("B") if mv.c_contiguous else memoryview(mv.tobytes())
    return mv


def read_blob_header(data, source: str = "<blob>") -> BlobHeader:
    """Reads and checks just the header (no checksum, no inflation, no profile): magic, version,
    flags (no unknown bit, not both float16 and float32 raw tokens), reserved bytes 0, and the
    token counts that need no profile (T ≤ 2^24, sink + window ≤ T, start_position + T ≤ 2^32)."""
    buf = as_buffer(data)
    if len(buf) < HEADER_BYTES + 4:
        raise _corrupt(source, f"only {len(buf)} bytes; a kvtc blob has at least {HEADER_BYTES + 4}")
    if bytes(buf[0:4]) != MAGIC:
        raise _corrupt(source, 'does not start with the "KVTC" magic: not a kvtc blob')
    (version, flags) = struct.unpack_from("<HH", buf, 4)
    if version != BLOB_VERSION:
        raise KvtcError(
            "BLOB_INVALID",
            f"{source}: blob format version {version}; this kvtc Python package reads version {BLOB_VERSION}",
            "Upgrade the kvtc Python package to decode it." if version > BLOB_VERSION else "Re-encode the cache with this kvtc.",
            {"blob": source, "version": version},
        )
    if flags & ~KNOWN_FLAGS:
        raise _corrupt(
            source, f"header flags 0x{flags:04x} set unknown bits (known: bit 0 float16 cache, bit 1 float32 raw tokens)", {"flags": flags}
        )
    if (flags & FLAG_FP16) and (flags & FLAG_RAW_F32):
        raise _corrupt(
            source,
            'header flags say both "float16 cache" (bit 0) and "raw tokens stored as float32" (bit 1); a float16 cache never needs float32 raw tokens',
            {"flags": flags},
        )
    for i in range(40, HEADER_BYTES):
        if buf[i] != 0:
            raise _corrupt(source, f"reserved header byte {i} is {buf[i]}, must be 0", {"offset": i, "value": buf[i]})
    pid = bytes(buf[8:16]).hex()
    tokens, start = struct.unpack_from("<II", buf, 16)
    layers, kvh, hd, count = struct.unpack_from("<HHHH", buf, 24)
    sink, window = struct.unpack_from("<II", buf, 32)
    if tokens > MAX_TOKENS:
        raise _corrupt(source, f"header says {tokens} tokens; a kvtc blob holds at most {MAX_TOKENS} (2^24)", {"tokens": tokens})
    if sink + window > tokens:
        raise _corrupt(
            source,
            f"header says sink {sink} + window {window} raw tokens, more than its {tokens} tokens",
            {"tokens": tokens, "sink": sink, "window": window},
        )
    if start + tokens > MAX_POSITIONS:
        raise _corrupt(
            source,
            f"header start_position {start} + {tokens} tokens runs past position 2^32 − 1",
            {"start_position": start, "tokens": tokens},
        )
    return BlobHeader(version, flags, pid, tokens, start, layers, kvh, hd, count, sink, window)


def check_crc(data, source: str = "<blob>") -> None:
    buf = as_buffer(data)
    end = len(buf) - 4
    (stored_crc,) = struct.unpack_from("<I", buf, end)
    if (zlib.crc32(buf[:end]) & 0xFFFFFFFF) != stored_crc:
        raise _corrupt(source, "checksum mismatch (the file was truncated or modified)")


def parse_sections(data, header: BlobHeader, expected: Sequence[Tuple[int, int, int]], source: str = "<blob>") -> List[Section]:
    """The section table against the sections a blob of its profile has, in order: `expected` is
    (kind, plan index, decoded bytes) per section (§6). Checks kinds, codecs, order, declared
    sizes (stored == decoded for stored sections; decoded ≤ 1032 × stored for DEFLATE) and that
    the sections fill the file up to the CRC exactly. Nothing is inflated here."""
    buf = as_buffer(data)
    end = len(buf) - 4
    if header.section_count != len(expected):
        n = header.compressed_tokens
        raise _corrupt(
            source,
            f"header says {header.section_count} sections; with {n} compressed tokens this profile's blob has {len(expected)} "
            f"(one raw section{' and one per plan with rank > 0' if n > 0 else ', no plan sections when no token is compressed'})",
            {"sections": header.section_count, "expected": len(expected)},
        )
    table_end = HEADER_BYTES + SECTION_BYTES * header.section_count
    if table_end > end:
        raise _corrupt(source, f"section table ({header.section_count} entries) runs past the end of the file")
    at = table_end
    out: List[Section] = []
    for i, (want_kind, want_plan, want_bytes) in enumerate(expected):
        kind, codec, plan, stored, decoded = struct.unpack_from("<BBHII", buf, HEADER_BYTES + SECTION_BYTES * i)
        what = "the raw section" if want_kind == KIND_RAW else f"plan {want_plan}'s section"
        ctx = {"section": i, "kind": kind, "codec": codec, "plan": plan, "stored_bytes": stored, "decoded_bytes": decoded}
        if kind > 1:
            raise _corrupt(source, f"section {i} has unknown kind {kind} (0 raw tokens, 1 plan)", ctx)
        if codec > 1:
            raise _corrupt(source, f"section {i} has unknown codec {codec} (0 stored, 1 raw DEFLATE)", ctx)
        if kind != want_kind or plan != want_plan:
            raise _corrupt(
                source,
                f"section {i} is a {'raw' if kind == KIND_RAW else 'plan'} section for plan index {plan}; section {i} must be {what}"
                f"{' with plan index 0' if want_kind == KIND_RAW else ''} (one raw section, then one per plan with rank > 0, in plan order)",
                ctx,
            )
        if decoded != want_bytes:
            raise _corrupt(
                source,
                f"section {i} ({what}) declares {decoded} decoded bytes; this profile needs {want_bytes}",
                {**ctx, "expected_bytes": want_bytes},
            )
        if codec == CODEC_STORED and stored != decoded:
            raise _corrupt(
                source, f"section {i} ({what}) is stored uncompressed in {stored} bytes but declares {decoded} decoded bytes", ctx
            )
        if codec == CODEC_DEFLATE and decoded > DEFLATE_MAX_RATIO * stored:
            raise _corrupt(
                source,
                f"section {i} ({what}) declares {decoded} decoded bytes from {stored} DEFLATE bytes; DEFLATE expands at most {DEFLATE_MAX_RATIO}:1",
                ctx,
            )
        out.append(Section(kind, codec, plan, at, stored, decoded))
        at += stored
    if at != end:
        raise _corrupt(
            source,
            f"the section table declares {at - table_end} stored bytes, but {end - table_end} lie between the table and the checksum",
            {"stored_bytes": at - table_end, "available": end - table_end},
        )
    return out


def inflate(data, s: Section, source: str = "<blob>", index: int = 0) -> bytes:
    """A section's payload; at most decoded_bytes + 1 are ever produced."""
    buf = as_buffer(data)
    raw = buf[s.offset : s.offset + s.stored_bytes]
    if s.codec == CODEC_STORED:
        return bytes(raw)
    d = zlib.decompressobj(wbits=-15)
    try:
        out = d.decompress(raw, s.decoded_bytes + 1)
    except zlib.error as e:
        raise _corrupt(source, f"section {index} does not inflate to its declared {s.decoded_bytes} bytes ({e})") from None
    if len(out) != s.decoded_bytes or not d.eof:
        got = f"more than {s.decoded_bytes}" if len(out) > s.decoded_bytes else f"{len(out)}"
        raise _corrupt(source, f"section {index} decodes to {got} bytes, the table says {s.decoded_bytes}")
    if d.unused_data:
        raise _corrupt(source, f"section {index} has {len(d.unused_data)} stray bytes after its DEFLATE stream")
    return out


def compress(kind: int, payload: bytes, entropy: str) -> Tuple[int, bytes]:
    """(codec, stored bytes) of one section as kvtc writes it: raw sections and empty payloads are
    stored; a DEFLATE result that is not smaller than the payload is stored instead."""
    if entropy == "stored" or kind == KIND_RAW or len(payload) == 0:
        return CODEC_STORED, payload
    opts = _DEFLATE[entropy]
    c = zlib.compressobj(level=opts["level"], method=zlib.DEFLATED, wbits=-15, memLevel=8, strategy=opts["strategy"])
    z = c.compress(payload) + c.flush()
    if len(z) >= len(payload):
        return CODEC_STORED, payload
    return CODEC_DEFLATE, z


def assemble(
    *,
    float16: bool,
    raw_float32: bool = False,
    profile_id: bytes,
    tokens: int,
    start_position: int,
    layers: int,
    kv_heads: int,
    head_dim: int,
    sink: int,
    window: int,
    sections: Sequence[Tuple[int, int, int, bytes, int]],
) -> bytes:
    """Header + table + sections + CRC. sections: (kind, codec, plan, stored bytes, decoded length)."""
    head = bytearray(HEADER_BYTES)
    head[0:4] = MAGIC
    struct.pack_into("<HH", head, 4, BLOB_VERSION, (FLAG_FP16 if float16 else 0) | (FLAG_RAW_F32 if raw_float32 else 0))
    head[8:16] = profile_id[:8].ljust(8, b"\0")
    struct.pack_into("<II", head, 16, tokens, start_position)
    struct.pack_into("<HHHH", head, 24, layers, kv_heads, head_dim, len(sections))
    struct.pack_into("<II", head, 32, sink, window)
    table = b"".join(struct.pack("<BBHII", k, c, p, len(s), d) for k, c, p, s, d in sections)
    body = b"".join([bytes(head), table, *(s for _, _, _, s, _ in sections)])
    return body + struct.pack("<I", zlib.crc32(body) & 0xFFFFFFFF)
