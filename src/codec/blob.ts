/**
 * The .kvtc blob container, format version 1 (all integers little-endian):
 *
 *   offset size  field
 *   0      4     magic "KVTC"
 *   4      2     format version (1)
 *   6      2     flags: bit 0 = the cache was float16 (raw tokens stored as fp16, else fp32)
 *   8      8     profile id (first 8 bytes of the profile tensor file's sha256)
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
 */
import { crc32, deflateRawSync, inflateRawSync, constants as zc } from 'node:zlib';
import { KvtcError } from '../errors.js';

export const BLOB_MAGIC = 0x4354564b; // "KVTC" read as u32 LE
export const BLOB_VERSION = 1;
export const HEADER_BYTES = 48;
export const SECTION_BYTES = 12;

export type SectionKind = 'raw' | 'plan';
export type EntropyCoder = 'deflate-rle' | 'deflate-huffman' | 'deflate-default' | 'stored';

const DEFLATE_OPTIONS: Record<Exclude<EntropyCoder, 'stored'>, { strategy?: number; level: number }> = {
  'deflate-rle': { strategy: zc.Z_RLE, level: 1 },
  'deflate-huffman': { strategy: zc.Z_HUFFMAN_ONLY, level: 1 },
  'deflate-default': { level: 6 },
};

export interface BlobHeader {
  fp16: boolean;
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
  if (coder === 'stored' || kind === 'raw' || data.byteLength === 0) return { kind, plan, codec: 0, stored: data, rawBytes: data.byteLength };
  const z = deflateRawSync(data, DEFLATE_OPTIONS[coder]);
  // Never expand: incompressible payloads are stored.
  if (z.byteLength >= data.byteLength) return { kind, plan, codec: 0, stored: data, rawBytes: data.byteLength };
  return { kind, plan, codec: 1, stored: new Uint8Array(z.buffer, z.byteOffset, z.byteLength), rawBytes: data.byteLength };
}

export function assembleBlob(h: BlobHeader, sections: EncodedSection[]): Uint8Array {
  const payload = sections.reduce((a, s) => a + s.stored.byteLength, 0);
  const total = HEADER_BYTES + SECTION_BYTES * sections.length + payload + 4;
  const out = new Uint8Array(total);
  const dv = new DataView(out.buffer);
  dv.setUint32(0, BLOB_MAGIC, true);
  dv.setUint16(4, BLOB_VERSION, true);
  dv.setUint16(6, h.fp16 ? 1 : 0, true);
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

function corrupt(message: string, source: string): KvtcError {
  return new KvtcError('BLOB_INVALID', `${source}: ${message}`, {
    fix: 'The blob is corrupt, truncated or not a kvtc blob: re-encode the cache with `kvtc encode`.',
    context: { blob: source },
  });
}

/** Reads just the header (no checksum, no inflation), e.g. to check the profile before decoding. */
export function readBlobHeader(buf: Uint8Array, source = '<blob>'): BlobHeader & { sectionCount: number } {
  if (buf.byteLength < HEADER_BYTES + 4) throw corrupt(`only ${buf.byteLength} bytes; a kvtc blob has at least ${HEADER_BYTES + 4}`, source);
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  if (dv.getUint32(0, true) !== BLOB_MAGIC) throw corrupt('does not start with the "KVTC" magic: not a kvtc blob', source);
  const version = dv.getUint16(4, true);
  if (version !== BLOB_VERSION) {
    throw new KvtcError('BLOB_INVALID', `${source}: blob format version ${version}; this kvtc reads version ${BLOB_VERSION}`, {
      fix: version > BLOB_VERSION ? 'Upgrade kvtc to decode it.' : 'Re-encode the cache with this kvtc.',
    });
  }
  return {
    fp16: (dv.getUint16(6, true) & 1) === 1,
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
}

/** Parses and verifies a blob (checksum, table, sizes) and inflates its sections. */
export function parseBlob(buf: Uint8Array, source = '<blob>'): { header: BlobHeader; sections: BlobSection[]; bytes: number } {
  const header = readBlobHeader(buf, source);
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const end = buf.byteLength - 4;
  if (crc32(buf.subarray(0, end)) >>> 0 !== dv.getUint32(end, true)) throw corrupt('checksum mismatch (the file was truncated or modified)', source);
  const tableEnd = HEADER_BYTES + SECTION_BYTES * header.sectionCount;
  if (tableEnd > end) throw corrupt('section table runs past the end of the file', source);
  let at = tableEnd;
  const sections: BlobSection[] = [];
  for (let i = 0; i < header.sectionCount; i++) {
    const t = HEADER_BYTES + SECTION_BYTES * i;
    const kindCode = dv.getUint8(t);
    const codec = dv.getUint8(t + 1);
    const plan = dv.getUint16(t + 2, true);
    const stored = dv.getUint32(t + 4, true);
    const rawBytes = dv.getUint32(t + 8, true);
    if (kindCode > 1 || codec > 1) throw corrupt(`section ${i} has unknown kind ${kindCode} or codec ${codec}`, source);
    if (at + stored > end) throw corrupt(`section ${i} (${stored} bytes) runs past the end of the file`, source);
    const slice = buf.subarray(at, at + stored);
    at += stored;
    let data: Uint8Array;
    if (codec === 1) {
      try {
        const z = inflateRawSync(slice);
        data = new Uint8Array(z.buffer, z.byteOffset, z.byteLength);
      } catch (e) {
        throw corrupt(`section ${i} does not inflate (${(e as Error).message})`, source);
      }
    } else data = slice;
    if (data.byteLength !== rawBytes) throw corrupt(`section ${i} decodes to ${data.byteLength} bytes, the table says ${rawBytes}`, source);
    sections.push({ kind: kindCode === 0 ? 'raw' : 'plan', plan, data });
  }
  if (at !== end) throw corrupt(`${end - at} unexpected bytes after the last section`, source);
  const { sectionCount: _n, ...h } = header;
  return { header: h, sections, bytes: buf.byteLength };
}
