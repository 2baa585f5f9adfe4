/**
 * Blob fuzzing (issue 10: blobs are untrusted input). Real encodes of a captured stories260K cache
 * with the committed profile — an ordinary blob, one of only raw tokens, one with float32 raw
 * tokens (flag bit 1), one with dynamic and fp8 groups — are mutated by a seeded, deterministic
 * PRNG, in process: bit flips, byte edits, truncation, appended junk, and edits that recompute the
 * CRC (header fields, section-table fields, table entries added/removed/swapped, payload bytes
 * inserted/removed/changed). Every mutated blob must either be refused with a typed KvtcError
 * (BLOB_INVALID or BLOB_MISMATCH, with a fix) or decode:
 *   - "exact" mutations (everything except the two below) to exactly the unmutated blob's cache;
 *   - mutations that make a different valid blob — a CRC-valid edit of start_position (within
 *     the model's context, the profile's model.max_positions; past it the blob is refused) or of
 *     flag bit 0 (float16), or of section payload bytes — to finite values of the header's shape.
 * Nothing else may escape (no RangeError, no TypeError), and no mutation may allocate
 * unboundedly (ArrayBuffer memory is sampled after each decode).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_MAX_POSITIONS, HEADER_BYTES, SECTION_BYTES } from '../../src/codec/blob.js';
import { KvtcCodec } from '../../src/codec/codec.js';
import { isKvtcError } from '../../src/errors.js';
import type { KvCache } from '../../src/model/types.js';
import { DEFAULT_PROFILES_DIR } from '../../src/paths.js';
import { codecFromProfile } from '../../src/profile/codec-from-profile.js';
import { readProfile } from '../../src/profile/read.js';
import {
  allFinite,
  at,
  captureCache,
  cloneCache,
  explode,
  implode,
  mixedGroups,
  prefix,
  sameCache,
  setField,
  storeAll,
  withCrc,
} from './blob-tools.js';
import { rng } from './rng.js';

const MUTATIONS = 1600;
/** The committed profile's model.max_positions (stories260K's max_position_embeddings). */
const STORIES_POSITIONS = 512;
const SEED = 0x6b767463; // "kvtc"

interface Base {
  name: string;
  codec: KvtcCodec;
  blob: Uint8Array;
  ref: KvCache;
}

let codec: KvtcCodec;
let mixed: KvtcCodec;
const bases: Base[] = [];

beforeAll(async () => {
  const profile = await readProfile(`${DEFAULT_PROFILES_DIR}/stories260k`);
  codec = await codecFromProfile(profile);
  mixed = await KvtcCodec.create(codec.spec, profile.plans.map(mixedGroups));
  const cache = await captureCache(260, 3000);
  const wide = cloneCache(cache);
  wide.keys[1][at(wide, 2, 1, 5)] = 1e5; // a sink value fp16 cannot hold: float32 raw section
  const make = async (name: string, c: KvtcCodec, kv: KvCache) => {
    const { blob } = await c.encode(kv);
    bases.push({ name, codec: c, blob, ref: (await c.decode(blob)).cache });
  };
  await make('ordinary', codec, cache);
  await make('raw-only', codec, prefix(cache, 90));
  await make('float32-raw', codec, wide);
  await make('dynamic+fp8', mixed, cache);
});

afterAll(async () => {
  await codec?.release();
  await mixed?.release();
});

interface Mutation {
  blob: Uint8Array;
  /** true: the decode, if any, must equal the unmutated one; false: a different valid blob may result. */
  exact: boolean;
  what: string;
}

type Rand = ReturnType<typeof rng>;
const int = (r: Rand, n: number) => Math.floor(r.uniform() * n);
const pick = <T>(r: Rand, xs: readonly T[]): T => xs[int(r, xs.length)];

/** Values worth trying in a field that holds `cur`. */
function interesting(r: Rand, cur: number, max: number): number {
  const c = [
    0,
    1,
    cur - 1,
    cur + 1,
    cur * 2,
    cur >>> 1,
    cur + 4,
    max,
    max - 1,
    2 ** 24,
    2 ** 24 + 1,
    1e7,
    1.26e9,
    0x7fffffff,
    int(r, max + 1),
  ];
  return Math.min(max, Math.max(0, Math.round(pick(r, c))));
}

const tableEnd = (b: Uint8Array) => HEADER_BYTES + SECTION_BYTES * new DataView(b.buffer, b.byteOffset).getUint16(30, true);

const mutators: Record<string, (r: Rand, b: Uint8Array) => Mutation> = {
  bitFlips(r, b) {
    const out = b.slice();
    const k = 1 + int(r, 4);
    const spots: number[] = [];
    for (let i = 0; i < k; i++) {
      // half of them in the header and table, where the structure is
      const p = r.uniform() < 0.5 ? int(r, Math.min(b.length, tableEnd(b))) : int(r, b.length);
      out[p] ^= 1 << int(r, 8);
      spots.push(p);
    }
    return { blob: out, exact: true, what: `bit flips at ${spots}` };
  },
  byteEdits(r, b) {
    const out = b.slice();
    const k = 1 + int(r, 4);
    for (let i = 0; i < k; i++) out[int(r, b.length)] = int(r, 256);
    return { blob: out, exact: true, what: `${k} byte edits` };
  },
  truncate(r, b) {
    const n = r.uniform() < 0.3 ? int(r, 64) : int(r, b.length);
    return { blob: b.slice(0, n), exact: true, what: `truncated to ${n}` };
  },
  appendJunk(r, b) {
    const junk = Uint8Array.from({ length: 1 + int(r, 64) }, () => int(r, 256));
    const out = new Uint8Array(b.length + junk.length);
    out.set(b);
    out.set(junk, b.length);
    return { blob: out, exact: true, what: `${junk.length} junk bytes appended` };
  },
  headerFieldCrc(r, b) {
    const fields: [string, number, 1 | 2 | 4][] = [
      ['version', 4, 2],
      ['flags', 6, 2],
      ['profile', 8, 4],
      ['profile+4', 12, 4],
      ['tokens', 16, 4],
      ['start_position', 20, 4],
      ['layers', 24, 2],
      ['kv_heads', 26, 2],
      ['head_dim', 28, 2],
      ['sections', 30, 2],
      ['sink', 32, 4],
      ['window', 36, 4],
      ['reserved', 40, 4],
      ['reserved+4', 44, 4],
    ];
    const [name, off, size] = pick(r, fields);
    const dv = new DataView(b.buffer, b.byteOffset);
    const cur = size === 2 ? dv.getUint16(off, true) : dv.getUint32(off, true);
    const v = interesting(r, cur, size === 2 ? 0xffff : 0xffffffff);
    // start_position and the float16 flag are free: another value is another valid blob.
    const free = name === 'start_position' || (name === 'flags' && ((v ^ cur) & ~1) === 0);
    return { blob: setField(b, off, size, v), exact: !free, what: `header ${name} ${cur} → ${v} (CRC fixed)` };
  },
  headerByteCrc(r, b) {
    const off = 4 + int(r, HEADER_BYTES - 4);
    const out = b.slice();
    out[off] = r.uniform() < 0.5 ? out[off] ^ (1 << int(r, 8)) : int(r, 256);
    const free = (off >= 20 && off < 24) || (off === 6 && ((out[6] ^ b[6]) & ~1) === 0);
    return { blob: withCrc(out), exact: !free, what: `header byte ${off} ${b[off]} → ${out[off]} (CRC fixed)` };
  },
  tableFieldCrc(r, b) {
    const e = explode(b);
    const i = int(r, e.entries.length);
    const s = e.entries[i];
    const f = pick(r, ['kind', 'codec', 'plan', 'decoded'] as const);
    const max = f === 'plan' ? 0xffff : f === 'decoded' ? 0xffffffff : 0xff;
    const before = s[f];
    s[f] = interesting(r, before, max);
    return { blob: implode(e), exact: true, what: `section ${i} ${f} ${before} → ${s[f]} (CRC fixed)` };
  },
  tableShapeCrc(r, b) {
    const e = explode(b);
    const n = e.entries.length;
    const op = pick(r, ['duplicate', 'remove', 'swap', 'count'] as const);
    if (op === 'duplicate') e.entries.splice(int(r, n + 1), 0, { ...e.entries[int(r, n)] });
    else if (op === 'remove') e.entries.splice(int(r, n), 1);
    else if (op === 'swap' && n > 1) {
      const a = int(r, n);
      const c = (a + 1 + int(r, n - 1)) % n;
      [e.entries[a], e.entries[c]] = [e.entries[c], e.entries[a]];
    } else return { blob: implode(e, interesting(r, n, 0xffff)), exact: true, what: 'section count changed (CRC fixed)' };
    return { blob: implode(e), exact: true, what: `table entry ${op} (CRC fixed)` };
  },
  payloadResizeCrc(r, b) {
    const start = tableEnd(b);
    const p = start + int(r, b.length - 4 - start + 1);
    const k = 1 + int(r, 16);
    const out =
      r.uniform() < 0.5
        ? new Uint8Array([...b.subarray(0, p), ...Uint8Array.from({ length: k }, () => int(r, 256)), ...b.subarray(p)])
        : new Uint8Array([...b.subarray(0, p), ...b.subarray(Math.min(p + k, b.length - 4))]);
    return { blob: withCrc(out), exact: true, what: `payload bytes inserted/removed at ${p} (CRC fixed)` };
  },
  startPositionNearBoundCrc(r, b) {
    // start_position near the model's context (the profile's model.max_positions, 512), near the
    // bound for profiles that record none (2^24) and near the u32 limit: refused past the model's
    // context, another valid blob within it.
    const T = new DataView(b.buffer, b.byteOffset).getUint32(16, true);
    const k = int(r, 8);
    const v = pick(r, [
      STORIES_POSITIONS - T - k,
      STORIES_POSITIONS - T + 1 + k,
      2 ** 24 - T + k,
      2 ** 32 - 1 - k,
      2 ** 32 - T - k,
      4.29e9 + k,
    ]);
    return { blob: setField(b, 20, 4, v), exact: false, what: `start_position → ${v} (CRC fixed)` };
  },
  payloadEditCrc(r, b) {
    // Edit decoded payload bytes (sections stored, so edits reach the codes, fp16 scales and raw values).
    const e = storeAll(explode(b));
    const i = r.uniform() < 0.6 && e.entries.length > 1 ? 1 + int(r, e.entries.length - 1) : 0;
    const s = e.entries[i].stored;
    if (s.length === 0) return { blob: implode(e), exact: true, what: `empty section ${i}` };
    const k = 1 + int(r, 8);
    for (let j = 0; j < k; j++) {
      const p = int(r, s.length);
      // often an exponent-ish high byte of an fp16, to make ∞/NaN/huge values
      s[p] = r.uniform() < 0.5 ? pick(r, [0x7c, 0x7e, 0xfc, 0xff, 0x7b, 0x7f]) : int(r, 256);
    }
    return { blob: implode(e), exact: false, what: `${k} payload byte edits in section ${i} (stored, CRC fixed)` };
  },
};

describe('blob fuzzing: every mutated blob is refused with a typed error or decodes as specified', () => {
  it(`${MUTATIONS} seeded mutations of 4 real blobs`, async () => {
    const r = rng(SEED);
    const names = Object.keys(mutators);
    const tally: Record<string, { refused: number; same: number; other: number }> = {};
    const codes = new Set<string>();
    const baseline = process.memoryUsage().arrayBuffers;
    let peak = 0;
    for (let m = 0; m < MUTATIONS; m++) {
      const base = bases[m % bases.length];
      const name = names[int(r, names.length)];
      const mut = mutators[name](r, base.blob);
      const label = `#${m} ${base.name} ${name}: ${mut.what}`;
      const t = (tally[name] ??= { refused: 0, same: 0, other: 0 });
      let out: KvCache | undefined;
      try {
        out = (await base.codec.decode(mut.blob, 'fuzz.kvtc')).cache;
      } catch (e) {
        if (!isKvtcError(e)) throw new Error(`${label}: threw a non-KvtcError: ${(e as Error)?.stack ?? e}`);
        if (e.code !== 'BLOB_INVALID' && e.code !== 'BLOB_MISMATCH') throw new Error(`${label}: ${e.code} (${e.message})`);
        if (!e.fix || !e.message.startsWith('fuzz.kvtc')) throw new Error(`${label}: error without a fix or the blob's name: ${e.message}`);
        codes.add(e.code);
        t.refused++;
      }
      peak = Math.max(peak, process.memoryUsage().arrayBuffers - baseline);
      if (!out) continue;
      if (sameCache(out, base.ref)) {
        t.same++;
        continue;
      }
      if (mut.exact) throw new Error(`${label}: decoded to a cache that differs from the unmutated blob's`);
      const { tokens, layers, kvHeads, headDim } = base.ref;
      expect([out.tokens, out.layers, out.kvHeads, out.headDim], label).toEqual([tokens, layers, kvHeads, headDim]);
      expect(allFinite(out), `${label}: non-finite value decoded`).toBe(true);
      t.other++;
    }
    if (process.env.KVTC_FUZZ_TALLY) console.log(JSON.stringify(tally), peak);
    // Bounded memory: the largest blob is ~130 KB and its cache ~330 KB.
    expect(peak).toBeLessThan(256 << 20);
    expect(codes).toEqual(new Set(['BLOB_INVALID', 'BLOB_MISMATCH']));
    // Every mutator ran and was refused at least sometimes; payload edits also decoded.
    for (const n of names) expect(tally[n]?.refused, n).toBeGreaterThan(0);
    expect(tally.payloadEditCrc.other).toBeGreaterThan(0);
    expect(tally.headerFieldCrc.refused + tally.headerByteCrc.refused).toBeGreaterThan(100);
    // Positions within the model's context decode; past it they are refused.
    expect(tally.startPositionNearBoundCrc.same + tally.startPositionNearBoundCrc.other).toBeGreaterThan(0);
  });
});

describe("positions past the model's context (issue 22: a CRC-valid start_position of 4.29e9 decoded)", () => {
  it("the committed profile records the model's 512 positions", () => {
    expect(codec.spec.maxPositions).toBe(STORIES_POSITIONS);
  });

  it('decode refuses start_position + tokens past model.max_positions with BLOB_INVALID naming the position and the bound; up to it, decodes', async () => {
    const base = bases[0];
    const T = base.ref.tokens;
    for (const start of [STORIES_POSITIONS - T + 1, STORIES_POSITIONS, 2 ** 24, 2 ** 32 - T, 4.29e9]) {
      const blob = setField(base.blob, 20, 4, start);
      await expect(base.codec.decode(blob, 'far.kvtc')).rejects.toMatchObject({
        code: 'BLOB_INVALID',
        message: expect.stringContaining(
          `far.kvtc: header start_position ${start} + ${T} tokens puts its last token at position ${start + T - 1}, but the model has 512 positions (0–511, the profile's model.max_positions)`,
        ),
        fix: expect.stringContaining('re-encode'),
        context: expect.objectContaining({ start_position: start, tokens: T, max_positions: STORIES_POSITIONS }),
      });
    }
    // Past 2^32 no profile matters: the header check (positions are u32) refuses it first.
    await expect(base.codec.decode(setField(base.blob, 20, 4, 2 ** 32 - 1), 'far.kvtc')).rejects.toMatchObject({
      code: 'BLOB_INVALID',
      message: expect.stringContaining(`start_position 4294967295 + ${T} tokens runs past position 2^32 − 1`),
    });
    const { cache } = await base.codec.decode(setField(base.blob, 20, 4, STORIES_POSITIONS - T), 'edge.kvtc');
    expect(cache.startPosition).toBe(STORIES_POSITIONS - T);
    expect(allFinite(cache)).toBe(true);
  });

  it('encode refuses a cache reaching past model.max_positions (KV_INVALID); a profile without the field bounds at 2^24', async () => {
    const cache = prefix(bases[0].ref, 40);
    await expect(codec.encode({ ...cache, startPosition: STORIES_POSITIONS - 39 })).rejects.toMatchObject({
      code: 'KV_INVALID',
      message: expect.stringContaining(
        'starts at position 473 with 40 tokens, so its last token is at position 512, but the model has 512 positions',
      ),
    });
    const atEdge = await codec.encode({ ...cache, startPosition: STORIES_POSITIONS - 40 });
    expect((await codec.decode(atEdge.blob)).cache.startPosition).toBe(STORIES_POSITIONS - 40);
    // Without a recorded bound (profiles before model.max_positions): DEFAULT_MAX_POSITIONS.
    const { maxPositions: _, ...spec } = codec.spec;
    const old = await KvtcCodec.create(spec, codec.plans);
    try {
      const far = await old.encode({ ...cache, startPosition: DEFAULT_MAX_POSITIONS - 40 });
      expect((await old.decode(far.blob)).cache.startPosition).toBe(DEFAULT_MAX_POSITIONS - 40);
      await expect(old.encode({ ...cache, startPosition: DEFAULT_MAX_POSITIONS - 39 })).rejects.toMatchObject({
        code: 'KV_INVALID',
        message: expect.stringContaining('does not record model.max_positions'),
      });
      await expect(old.decode(setField(far.blob, 20, 4, DEFAULT_MAX_POSITIONS - 39))).rejects.toMatchObject({
        code: 'BLOB_INVALID',
        message: expect.stringContaining(`the model has ${DEFAULT_MAX_POSITIONS} positions`),
      });
    } finally {
      await old.release();
    }
  });
});
