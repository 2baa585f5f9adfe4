/**
 * Test tools for taking .kvtc blobs apart and putting them back together with any field values
 * (docs/profile-format.md §6), recomputing the CRC, so tests can build blobs that pass the checksum
 * and exercise every other check.
 */
import { readFileSync } from 'node:fs';
import { crc32, inflateRawSync } from 'node:zlib';
import { expect } from 'vitest';
import { HEADER_BYTES, SECTION_BYTES } from '../../src/codec/blob.js';
import { isKvtcError } from '../../src/errors.js';
import { loadModel } from '../../src/model/load.js';
import { ModelRunner } from '../../src/model/runner.js';
import type { KvCache } from '../../src/model/types.js';
import { DEFAULT_MODEL_DIR, WIKITEXT_TEST } from '../../src/paths.js';
import type { BasisPlan, QuantGroup } from '../../src/codec/types.js';

export interface Entry {
  kind: number;
  codec: number;
  plan: number;
  /** The section's stored bytes. */
  stored: Uint8Array;
  /** Declared decoded bytes. */
  decoded: number;
}

export interface Exploded {
  /** The 48 header bytes (a copy). */
  header: Uint8Array;
  entries: Entry[];
}

/** Splits a well-formed blob into its header bytes and table entries with their stored bytes. */
export function explode(blob: Uint8Array): Exploded {
  const dv = new DataView(blob.buffer, blob.byteOffset, blob.byteLength);
  const count = dv.getUint16(30, true);
  let at = HEADER_BYTES + SECTION_BYTES * count;
  const entries: Entry[] = [];
  for (let i = 0; i < count; i++) {
    const t = HEADER_BYTES + SECTION_BYTES * i;
    const stored = dv.getUint32(t + 4, true);
    entries.push({
      kind: dv.getUint8(t),
      codec: dv.getUint8(t + 1),
      plan: dv.getUint16(t + 2, true),
      stored: blob.slice(at, at + stored),
      decoded: dv.getUint32(t + 8, true),
    });
    at += stored;
  }
  return { header: blob.slice(0, HEADER_BYTES), entries };
}

/** Header + entries → blob with a valid CRC. `count` overrides the header's section count (default: entries.length). */
export function implode(e: Exploded, count = e.entries.length): Uint8Array {
  const payload = e.entries.reduce((a, s) => a + s.stored.byteLength, 0);
  const out = new Uint8Array(HEADER_BYTES + SECTION_BYTES * e.entries.length + payload + 4);
  const dv = new DataView(out.buffer);
  out.set(e.header.subarray(0, HEADER_BYTES));
  dv.setUint16(30, count, true);
  let at = HEADER_BYTES;
  for (const s of e.entries) {
    dv.setUint8(at, s.kind);
    dv.setUint8(at + 1, s.codec);
    dv.setUint16(at + 2, s.plan, true);
    dv.setUint32(at + 4, s.stored.byteLength, true);
    dv.setUint32(at + 8, s.decoded, true);
    at += SECTION_BYTES;
  }
  for (const s of e.entries) {
    out.set(s.stored, at);
    at += s.stored.byteLength;
  }
  dv.setUint32(at, crc32(out.subarray(0, at)) >>> 0, true);
  return out;
}

/** A copy of `blob` with its CRC recomputed (after an edit). */
export function withCrc(blob: Uint8Array): Uint8Array {
  const out = blob.slice();
  const end = out.byteLength - 4;
  new DataView(out.buffer).setUint32(end, crc32(out.subarray(0, end)) >>> 0, true);
  return out;
}

/** Writes a little-endian unsigned field of `size` bytes at `offset` of a copy, then fixes the CRC. */
export function setField(blob: Uint8Array, offset: number, size: 1 | 2 | 4, value: number): Uint8Array {
  const out = blob.slice();
  const dv = new DataView(out.buffer);
  if (size === 1) dv.setUint8(offset, value);
  else if (size === 2) dv.setUint16(offset, value, true);
  else dv.setUint32(offset, value >>> 0, true);
  return withCrc(out);
}

/** Header fields (offset, size) by name. */
export const FIELDS = {
  version: [4, 2],
  flags: [6, 2],
  tokens: [16, 4],
  start_position: [20, 4],
  layers: [24, 2],
  kv_heads: [26, 2],
  head_dim: [28, 2],
  section_count: [30, 2],
  sink: [32, 4],
  window: [36, 4],
} as const;

export function field(blob: Uint8Array, name: keyof typeof FIELDS): number {
  const [off, size] = FIELDS[name];
  const dv = new DataView(blob.buffer, blob.byteOffset, blob.byteLength);
  return size === 2 ? dv.getUint16(off, true) : dv.getUint32(off, true);
}

/** A real cache: the bundled stories260K model run on held-out WikiText-2 text. */
export async function captureCache(tokens: number, offset = 0): Promise<KvCache> {
  const model = await loadModel(DEFAULT_MODEL_DIR);
  const text = readFileSync(WIKITEXT_TEST, 'utf8').slice(offset, offset + 20_000);
  return (await new ModelRunner(model).capture(text, { maxTokens: tokens })).cache;
}

/** A deep copy of a cache (keys and values copied). */
export function cloneCache(c: KvCache): KvCache {
  return { ...c, keys: c.keys.map((k) => k.slice()), values: c.values.map((v) => v.slice()) };
}

/** Tokens [0, n) of a cache. */
export function prefix(c: KvCache, n: number): KvCache {
  const cut = (a: Float32Array) => {
    const out = new Float32Array(c.kvHeads * n * c.headDim);
    for (let h = 0; h < c.kvHeads; h++) out.set(a.subarray(h * c.tokens * c.headDim, (h * c.tokens + n) * c.headDim), h * n * c.headDim);
    return out;
  };
  return { ...c, tokens: n, keys: c.keys.map(cut), values: c.values.map(cut) };
}

/** Index of (head, token, dim) in a [kvHeads, tokens, headDim] tensor. */
export const at = (c: KvCache, head: number, token: number, dim: number) => (head * c.tokens + token) * c.headDim + dim;

/**
 * The plan with its components regrouped to cover the dynamic and fp8 coding paths: dynamic int8,
 * static fp8, a dropped component, dynamic fp8, then static int4 (the profile's static ranges reused).
 */
export function mixedGroups(plan: BasisPlan): BasisPlan {
  const spans: [number, QuantGroup['type'], QuantGroup['mode']][] = [
    [2, 'int8', 'dynamic'],
    [2, 'fp8', 'static'],
    [1, 'none', 'static'],
    [2, 'fp8', 'dynamic'],
    [Infinity, 'int4', 'static'],
  ];
  const groups: QuantGroup[] = [];
  let s = 0;
  for (const [w, type, mode] of spans) {
    if (s >= plan.rank) break;
    const end = Math.min(plan.rank, s + w);
    groups.push({ start: s, end, type, mode });
    s = end;
  }
  return { ...plan, groups };
}

/** Every key and value of two caches, bit for bit, and their metadata. */
export function sameCache(a: KvCache, b: KvCache): boolean {
  if (
    a.tokens !== b.tokens ||
    a.layers !== b.layers ||
    a.kvHeads !== b.kvHeads ||
    a.headDim !== b.headDim ||
    a.dtype !== b.dtype ||
    a.startPosition !== b.startPosition
  )
    return false;
  for (let l = 0; l < a.layers; l++) {
    if (
      !Buffer.from(a.keys[l].buffer, a.keys[l].byteOffset, a.keys[l].byteLength).equals(
        Buffer.from(b.keys[l].buffer, b.keys[l].byteOffset, b.keys[l].byteLength),
      )
    )
      return false;
    if (
      !Buffer.from(a.values[l].buffer, a.values[l].byteOffset, a.values[l].byteLength).equals(
        Buffer.from(b.values[l].buffer, b.values[l].byteOffset, b.values[l].byteLength),
      )
    )
      return false;
  }
  return true;
}

/** Whether every value of a cache is finite (and, for a float16 cache, within ±65504). */
export function allFinite(c: KvCache): boolean {
  const lim = c.dtype === 'float16' ? 65504 : Infinity;
  for (const a of [...c.keys, ...c.values]) for (let i = 0; i < a.length; i++) if (!(Math.abs(a[i]) <= lim)) return false;
  return true;
}

/** Expects `p` to reject with a KvtcError of `code` whose message matches `message`. */
export async function expectKvtcError(p: Promise<unknown>, code: string, message?: RegExp): Promise<void> {
  let err: unknown;
  try {
    await p;
  } catch (e) {
    err = e;
  }
  expect(err, 'expected a rejection').toBeDefined();
  expect(isKvtcError(err), `not a KvtcError: ${String(err)}`).toBe(true);
  const e = err as { code: string; message: string; fix?: string };
  expect(e.code, e.message).toBe(code);
  if (message) expect(e.message).toMatch(message);
  expect(e.fix).toBeTruthy();
}

/** The same blob with every section stored uncompressed (codec 0): each DEFLATE section inflated. */
export function storeAll(e: Exploded): Exploded {
  return {
    header: e.header.slice(),
    entries: e.entries.map((s) => {
      if (s.codec !== 1) return { ...s, stored: s.stored.slice() };
      const z = inflateRawSync(s.stored);
      return { ...s, codec: 0, stored: new Uint8Array(z.buffer, z.byteOffset, z.byteLength).slice() };
    }),
  };
}
