/**
 * The .kvtc blob container, format version 1 (all integers little-endian):
 *
 *   offset size  field
 *   0      4     magic "KVTC"
 *   4      2     format version (1)
 *   6      2     flags: bit 0 = the cache was float16; bit 1 = raw tokens stored as float32 (else
 *                fp16; set only for a float32 cache with a raw value fp16 cannot hold); others 0
 *   8      8     profile id (first 8 bytes of the profile's profile_id)
 *   16     4     tokens in the cache
 *   20     4     absolute position of token 0
 *   24     2     layers          26  2  kv heads        28  2  head dim
 *   30     2     section count
 *   32     4     sink tokens stored raw at the start
 *   36     4     window tokens stored raw at the end
 *   40     8     reserved (0)
 *   48     12·S  section table: u8 kind (0 raw tokens, 1 plan), u8 codec (0 stored, 1 raw DEFLATE),
 *                u16 plan index, u32 stored bytes, u32 decoded bytes
 *   ...          section payloads, in table order
 *   end-4  4     CRC-32 (zlib) of every byte before it
 *
 * Blobs are untrusted input: parseBlob bounds every header and table field by the file and the
 * profile before anything is allocated (docs/profile-format.md §6).
 */
import { crc32, deflateRawSync, inflateRawSync, constants as zc } from 'node:zlib';
import { KvtcError } from '../errors.js';

export const BLOB_MAGIC = 0x4354564b; // "KVTC" read as u32 LE
export const BLOB_VERSION = 1;
export const HEADER_BYTES = 48;
export const SECTION_BYTES = 12;
/** Header flag bit 0: the cache was float16 (the dtype a decoder restores). */
export const FLAG_FP16 = 1;
/** Header flag bit 1: the raw section holds float32 values (a float32 cache with a raw value fp16 cannot hold). */
export const FLAG_RAW_F32 = 2;
const KNOWN_FLAGS = FLAG_FP16 | FLAG_RAW_F32;
/** Most tokens one blob holds (header field T). */
export const MAX_TOKENS = 2 ** 24;
/** start_position + T must not exceed this: every token's absolute position fits a u32. */
export const MAX_POSITIONS = 2 ** 32;
/**
 * The model's context bound for a profile that does not record model.max_positions (written
 * before kvtc recorded it): generous — 16M positions, beyond every released model's context —
 * yet far below the u32 header field, so a corrupt start_position near 2^32 is still refused.
 */
export const DEFAULT_MAX_POSITIONS = 2 ** 24;
/**
 * DEFLATE's largest possible expansion: a 1-bit length-258 code and a 1-bit distance code make
 * 258 bytes from 2 bits. A section declaring more decoded bytes than this × its stored bytes
 * cannot be a valid stream, so it is refused before inflating.
 */
export const DEFLATE_MAX_EXPANSION = 1032;

export type SectionKind = 'raw' | 'plan';
/** How plan sections may be entropy-coded (the profile's settings.entropy): the one list. */
export const ENTROPY_CODERS = ['deflate-rle', 'deflate-huffman', 'deflate-default', 'stored'] as const;
export type EntropyCoder = (typeof ENTROPY_CODERS)[number];

const DEFLATE_OPTIONS: Record<Exclude<EntropyCoder, 'stored'>, { strategy?: number; level: number }> = {
  'deflate-rle': { strategy: zc.Z_RLE, level: 1 },
  'deflate-huffman': { strategy: zc.Z_HUFFMAN_ONLY, level: 1 },
  'deflate-default': { level: 6 },
};

export interface BlobHeader {
  fp16: boolean;
  /** Raw tokens stored as float32 (flag bit 1; only for a float32 cache that fp16 cannot hold). */
  rawFloat32?: boolean;
  profileId: string; // 16 hex digits
  tokens: number;
  startPosition: number;
  layers: number;
  kvHeads: number;
  headDim: number;
  sink: number;
  window: number;
}

export interface BlobSection {
  kind: SectionKind;
  plan: number;
  /** Decoded payload. */
  data: Uint8Array;
}

export interface EncodedSection {
  kind: SectionKind;
  plan: number;
  codec: 0 | 1;
  stored: Uint8Array;
  rawBytes: number;
}

/**
 * Entropy-codes one section payload. The default, DEFLATE with Z_RLE (run-length matches only),
 * measured as small as level 1-6 LZ77 and as fast as Huffman-only on real payloads: see
 * docs/codec.md (scripts/entropy-compare.ts).
 */
export function compressSection(kind: SectionKind, plan: number, data: Uint8Array, coder: EntropyCoder): EncodedSection {
  if (coder === 'stored' || kind === 'raw' || data.byteLength === 0)
    return { kind, plan, codec: 0, stored: data, rawBytes: data.byteLength };
  const z = deflateRawSync(data, DEFLATE_OPTIONS[coder]);
  // Never expand: incompressible payloads are stored.
  if (z.byteLength >= data.byteLength) return { kind, plan, codec: 0, stored: data, rawBytes: data.byteLength };
  return { kind, plan, codec: 1, stored: new Uint8Array(z.buffer, z.byteOffset, z.byteLength), rawBytes: data.byteLength };
}

export function assembleBlob(h: BlobHeader, sections: EncodedSection[]): Uint8Array {
  const total = blobBytes(sections.map((s) => s.stored.byteLength));
  const out = new Uint8Array(total);
  const dv = new DataView(out.buffer);
  dv.setUint32(0, BLOB_MAGIC, true);
  dv.setUint16(4, BLOB_VERSION, true);
  dv.setUint16(6, (h.fp16 ? FLAG_FP16 : 0) | (h.rawFloat32 ? FLAG_RAW_F32 : 0), true);
  out.set(Buffer.from(h.profileId, 'hex').subarray(0, 8), 8);
  dv.setUint32(16, h.tokens, true);
  dv.setUint32(20, h.startPosition, true);
  dv.setUint16(24, h.layers, true);
  dv.setUint16(26, h.kvHeads, true);
  dv.setUint16(28, h.headDim, true);
  dv.setUint16(30, sections.length, true);
  dv.setUint32(32, h.sink, true);
  dv.setUint32(36, h.window, true);
  let at = HEADER_BYTES;
  for (const s of sections) {
    dv.setUint8(at, s.kind === 'raw' ? 0 : 1);
    dv.setUint8(at + 1, s.codec);
    dv.setUint16(at + 2, s.plan, true);
    dv.setUint32(at + 4, s.stored.byteLength, true);
    dv.setUint32(at + 8, s.rawBytes, true);
    at += SECTION_BYTES;
  }
  for (const s of sections) {
    out.set(s.stored, at);
    at += s.stored.byteLength;
  }
  dv.setUint32(at, crc32(out.subarray(0, at)) >>> 0, true);
  return out;
}

function corrupt(message: string, source: string, context: Record<string, unknown> = {}): KvtcError {
  return new KvtcError('BLOB_INVALID', `${source}: ${message}`, {
    fix: 'The blob is corrupt, truncated or not a kvtc blob: re-encode the cache with `kvtc encode`.',
    context: { blob: source, ...context },
  });
}

/**
 * Reads and checks just the header (no checksum, no inflation, no profile), e.g. to check the
 * profile before decoding: magic, version, flags, reserved bytes, and the token counts that need
 * no profile (T ≤ MAX_TOKENS, s + w ≤ T, start_position + T ≤ 2³²).
 */
export function readBlobHeader(buf: Uint8Array, source = '<blob>'): BlobHeader & { rawFloat32: boolean; sectionCount: number } {
  if (buf.byteLength < HEADER_BYTES + 4)
    throw corrupt(`only ${buf.byteLength} bytes; a kvtc blob has at least ${HEADER_BYTES + 4}`, source, { bytes: buf.byteLength });
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  if (dv.getUint32(0, true) !== BLOB_MAGIC) throw corrupt('does not start with the "KVTC" magic: not a kvtc blob', source);
  const version = dv.getUint16(4, true);
  if (version !== BLOB_VERSION) {
    throw new KvtcError('BLOB_INVALID', `${source}: blob format version ${version}; this kvtc reads version ${BLOB_VERSION}`, {
      fix: version > BLOB_VERSION ? 'Upgrade kvtc to decode it.' : 'Re-encode the cache with this kvtc.',
      context: { blob: source, version },
    });
  }
  const flags = dv.getUint16(6, true);
  if (flags & ~KNOWN_FLAGS)
    throw corrupt(
      `header flags 0x${flags.toString(16).padStart(4, '0')} set unknown bits (known: bit 0 float16 cache, bit 1 float32 raw tokens)`,
      source,
      { flags },
    );
  if (flags & FLAG_FP16 && flags & FLAG_RAW_F32)
    throw corrupt(
      'header flags say both "float16 cache" (bit 0) and "raw tokens stored as float32" (bit 1); a float16 cache never needs float32 raw tokens',
      source,
      { flags },
    );
  for (let i = 40; i < HEADER_BYTES; i++) {
    if (buf[i] !== 0) throw corrupt(`reserved header byte ${i} is ${buf[i]}, must be 0`, source, { offset: i, value: buf[i] });
  }
  const h = {
    fp16: (flags & FLAG_FP16) !== 0,
    rawFloat32: (flags & FLAG_RAW_F32) !== 0,
    profileId: Buffer.from(buf.subarray(8, 16)).toString('hex'),
    tokens: dv.getUint32(16, true),
    startPosition: dv.getUint32(20, true),
    layers: dv.getUint16(24, true),
    kvHeads: dv.getUint16(26, true),
    headDim: dv.getUint16(28, true),
    sectionCount: dv.getUint16(30, true),
    sink: dv.getUint32(32, true),
    window: dv.getUint32(36, true),
  };
  if (h.tokens > MAX_TOKENS)
    throw corrupt(`header says ${h.tokens} tokens; a kvtc blob holds at most ${MAX_TOKENS} (2^24)`, source, {
      tokens: h.tokens,
      max_tokens: MAX_TOKENS,
    });
  if (h.sink + h.window > h.tokens)
    throw corrupt(`header says sink ${h.sink} + window ${h.window} raw tokens, more than its ${h.tokens} tokens`, source, {
      tokens: h.tokens,
      sink: h.sink,
      window: h.window,
    });
  if (h.startPosition + h.tokens > MAX_POSITIONS) {
    throw corrupt(`header start_position ${h.startPosition} + ${h.tokens} tokens runs past position 2^32 − 1`, source, {
      start_position: h.startPosition,
      tokens: h.tokens,
    });
  }
  return h;
}

/** What a blob must look like for one profile: everything the header and table are checked against. */
export interface BlobLayout {
  profileId: string;
  layers: number;
  kvHeads: number;
  headDim: number;
  /** Width of each value head (profile model.value_head_dim; absent: headDim). Not in the header: the profile gives it. */
  valueDim?: number;
  /** The profile's sink and window settings (the header holds min(sink, T) and min(window, T − s)). */
  sink: number;
  window: number;
  /** Per plan, in plan order: its section's payload bytes for n compressed tokens, or null for a plan without a section (rank 0). */
  planBytes: (((n: number) => number) | null)[];
  /** start_position + T may not exceed this: the model's context (the profile's model.max_positions); absent: DEFAULT_MAX_POSITIONS. */
  maxPositions?: number;
  /** Whether maxPositions is the profile's own (model.max_positions) or DEFAULT_MAX_POSITIONS. */
  maxPositionsRecorded?: boolean;
}

/**
 * Bytes of a blob whose sections have these payload sizes (stored, after entropy coding):
 * header, section table, payloads, CRC-32.
 */
export function blobBytes(payloadBytes: readonly number[]): number {
  let payload = 0;
  for (const b of payloadBytes) payload += b;
  return HEADER_BYTES + SECTION_BYTES * payloadBytes.length + payload + 4;
}

/**
 * fp16 bytes of one token of a cache (keys and values of every layer and KV head): the
 * denominator of every ratio kvtc reports (docs/profile-format.md §9; values of valueDim each when
 * it differs from headDim, §2.4).
 */
export function fp16BytesPerToken(shape: { layers: number; kvHeads: number; headDim: number; valueDim?: number }): number {
  return shape.layers * shape.kvHeads * (shape.headDim + (shape.valueDim ?? shape.headDim)) * 2;
}

/**
 * Bytes of the raw section: layers · kv_heads · (s + w) · (head_dim + value_head_dim) values of 2
 * (fp16) or 4 (float32) bytes; `valueDim` is the profile's (absent: headDim).
 */
export function rawSectionBytes(
  h: Pick<BlobHeader, 'layers' | 'kvHeads' | 'headDim' | 'sink' | 'window' | 'rawFloat32'>,
  valueDim = h.headDim,
): number {
  return h.layers * h.kvHeads * (h.sink + h.window) * (h.headDim + valueDim) * (h.rawFloat32 ? 4 : 2);
}

export interface ParsedBlob {
  header: BlobHeader & { rawFloat32: boolean };
  /** The raw-token section's decoded bytes. */
  raw: Uint8Array;
  /** Decoded payload per plan index (plans with a section only; none when n = 0). */
  plans: Map<number, Uint8Array>;
  /** Every section, decoded, in table order (raw first). */
  sections: BlobSection[];
  bytes: number;
}

/**
 * Parses and verifies a blob against the profile it claims, before anything is allocated:
 * the header (readBlobHeader), the checksum, the profile id, the shape, s and w, the section
 * count, order, kinds, codecs, and every section's sizes — each plan section's decoded size must
 * be what the plan needs for n tokens, and a DEFLATE section may declare at most
 * DEFLATE_MAX_EXPANSION × its stored bytes — and only then inflates, with zlib's output capped at
 * the declared size (a DEFLATE bomb stops there). docs/profile-format.md §6 lists the rules.
 */
export function parseBlob(buf: Uint8Array, layout: BlobLayout, source = '<blob>'): ParsedBlob {
  const head = readBlobHeader(buf, source);
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const end = buf.byteLength - 4;
  if (crc32(buf.subarray(0, end)) >>> 0 !== dv.getUint32(end, true))
    throw corrupt('checksum mismatch (the file was truncated or modified)', source);
  if (head.profileId !== layout.profileId) {
    throw new KvtcError(
      'BLOB_MISMATCH',
      `${source} was encoded with profile ${head.profileId}, not with this profile (${layout.profileId})`,
      {
        fix: 'Decode with the profile the blob was encoded with (its id is in `kvtc inspect`).',
        context: { blob: source, blob_profile: head.profileId, profile: layout.profileId },
      },
    );
  }
  const { sectionCount, ...header } = head;
  const { tokens: T } = header;
  const maxPositions = layout.maxPositions ?? DEFAULT_MAX_POSITIONS;
  if (header.startPosition + T > maxPositions) {
    const last = header.startPosition + T - 1;
    throw new KvtcError(
      'BLOB_INVALID',
      `${source}: header start_position ${header.startPosition} + ${T} tokens puts its last token at position ${last}, but the model has ${maxPositions} positions (0–${maxPositions - 1}${layout.maxPositionsRecorded ? ", the profile's model.max_positions" : ', the bound for a profile that does not record model.max_positions'})`,
      {
        fix: layout.maxPositionsRecorded
          ? 'kvtc never encodes such a blob with this profile: the blob is corrupt or its start_position was edited; re-encode the cache with `kvtc encode`.'
          : "The blob is corrupt or its start_position was edited: re-encode the cache with `kvtc encode`. (Re-calibrating records the model's own bound, model.max_positions.)",
        context: { blob: source, start_position: header.startPosition, tokens: T, max_positions: maxPositions },
      },
    );
  }
  for (const [field, got, want] of [
    ['layers', header.layers, layout.layers],
    ['kv_heads', header.kvHeads, layout.kvHeads],
    ['head_dim', header.headDim, layout.headDim],
  ] as const) {
    if (got !== want)
      throw corrupt(`header ${field} is ${got}, but the profile's model has ${want}`, source, { field, value: got, profile: want });
  }
  const s = Math.min(layout.sink, T);
  const w = Math.min(layout.window, T - s);
  if (header.sink !== s || header.window !== w) {
    throw corrupt(
      `header says sink ${header.sink} and window ${header.window} for ${T} tokens; the profile (sink ${layout.sink}, window ${layout.window}) gives ${s} and ${w}`,
      source,
      { tokens: T, sink: header.sink, window: header.window },
    );
  }
  const n = T - s - w;
  // The sections a blob of this profile has, in order: the raw one, then one per plan with a section when n > 0.
  const expected: { kind: SectionKind; plan: number; bytes: number }[] = [
    { kind: 'raw', plan: 0, bytes: rawSectionBytes(header, layout.valueDim) },
  ];
  if (n > 0) layout.planBytes.forEach((f, i) => f && expected.push({ kind: 'plan', plan: i, bytes: f(n) }));
  if (sectionCount !== expected.length) {
    throw corrupt(
      `header says ${sectionCount} sections; with ${n} compressed tokens this profile's blob has ${expected.length} (one raw section${n > 0 ? ` and one per plan with rank > 0` : ', no plan sections when no token is compressed'})`,
      source,
      { sections: sectionCount, expected: expected.length, compressed_tokens: n },
    );
  }
  const tableEnd = HEADER_BYTES + SECTION_BYTES * sectionCount;
  if (tableEnd > end)
    throw corrupt(`section table (${sectionCount} entries) runs past the end of the file`, source, {
      sections: sectionCount,
      bytes: buf.byteLength,
    });
  const table: { codec: number; stored: number; rawBytes: number }[] = [];
  let payload = 0;
  for (let i = 0; i < sectionCount; i++) {
    const t = HEADER_BYTES + SECTION_BYTES * i;
    const kindCode = dv.getUint8(t);
    const codec = dv.getUint8(t + 1);
    const plan = dv.getUint16(t + 2, true);
    const stored = dv.getUint32(t + 4, true);
    const rawBytes = dv.getUint32(t + 8, true);
    const want = expected[i];
    const what = want.kind === 'raw' ? 'the raw section' : `plan ${want.plan}'s section`;
    const ctx = { section: i, kind: kindCode, codec, plan, stored_bytes: stored, decoded_bytes: rawBytes };
    if (kindCode > 1) throw corrupt(`section ${i} has unknown kind ${kindCode} (0 raw tokens, 1 plan)`, source, ctx);
    if (codec > 1) throw corrupt(`section ${i} has unknown codec ${codec} (0 stored, 1 raw DEFLATE)`, source, ctx);
    const kind: SectionKind = kindCode === 0 ? 'raw' : 'plan';
    if (kind !== want.kind || plan !== want.plan) {
      throw corrupt(
        `section ${i} is a ${kind} section${kind === 'plan' ? ` for plan ${plan}` : ` (plan index ${plan})`}; section ${i} must be ${what}${want.kind === 'raw' ? ' with plan index 0' : ''} (one raw section, then one per plan with rank > 0, in plan order)`,
        source,
        ctx,
      );
    }
    if (rawBytes !== want.bytes) {
      throw corrupt(
        `section ${i} (${what}) declares ${rawBytes} decoded bytes; ${want.kind === 'raw' ? `${s + w} raw tokens of this shape are` : `the plan needs`} ${want.bytes}${want.kind === 'plan' ? ` for ${n} compressed tokens` : ''}`,
        source,
        { ...ctx, expected_bytes: want.bytes },
      );
    }
    if (codec === 0 && stored !== rawBytes)
      throw corrupt(`section ${i} (${what}) is stored uncompressed in ${stored} bytes but declares ${rawBytes} decoded bytes`, source, ctx);
    if (codec === 1 && rawBytes > DEFLATE_MAX_EXPANSION * stored) {
      throw corrupt(
        `section ${i} (${what}) declares ${rawBytes} decoded bytes from ${stored} DEFLATE bytes; DEFLATE expands at most ${DEFLATE_MAX_EXPANSION}:1`,
        source,
        ctx,
      );
    }
    payload += stored;
    table.push({ codec, stored, rawBytes });
  }
  if (tableEnd + payload !== end) {
    throw corrupt(
      `the section table declares ${payload} stored bytes, but ${end - tableEnd} lie between the table and the checksum`,
      source,
      { stored_bytes: payload, available: end - tableEnd },
    );
  }
  let at = tableEnd;
  const sections: BlobSection[] = [];
  for (let i = 0; i < table.length; i++) {
    const { codec, stored, rawBytes } = table[i];
    const slice = buf.subarray(at, at + stored);
    at += stored;
    let data: Uint8Array = slice;
    if (codec === 1) {
      try {
        // maxOutputLength: zlib stops (and throws) past the declared size instead of allocating more.
        const z = inflateRawSync(slice, { maxOutputLength: Math.max(1, rawBytes) });
        data = new Uint8Array(z.buffer, z.byteOffset, z.byteLength);
      } catch (e) {
        throw corrupt(`section ${i} does not inflate to its declared ${rawBytes} bytes (${(e as Error).message})`, source, {
          section: i,
          decoded_bytes: rawBytes,
        });
      }
      if (data.byteLength !== rawBytes)
        throw corrupt(`section ${i} inflates to ${data.byteLength} bytes, the table says ${rawBytes}`, source, {
          section: i,
          decoded_bytes: rawBytes,
          inflated: data.byteLength,
        });
    }
    sections.push({ kind: expected[i].kind, plan: expected[i].plan, data });
  }
  const plans = new Map<number, Uint8Array>();
  for (const sec of sections.slice(1)) plans.set(sec.plan, sec.data);
  return { header, raw: sections[0].data, plans, sections, bytes: buf.byteLength };
}
