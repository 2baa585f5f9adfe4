/**
 * Untrusted blobs (issue 10): every header and table field is bounded by the file and the profile
 * before anything is allocated, and decoding a blob that passes gives finite values. One case per
 * rule of docs/profile-format.md §6; each blob passes the checksum (it is recomputed), so the rule
 * itself is what refuses it.
 */
import { deflateRawSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KvtcCodec } from '../../src/codec/codec.js';
import { packedLength } from '../../src/codec/pack.js';
import { TYPE_BITS } from '../../src/codec/types.js';
import type { KvCache } from '../../src/model/types.js';
import { fileURLToPath } from 'node:url';
import { codecFromProfile } from '../../src/profile/codec-from-profile.js';
import { readProfile, type Profile } from '../../src/profile/read.js';
import {
  allFinite,
  captureCache,
  explode,
  expectKvtcError,
  field,
  implode,
  mixedGroups,
  prefix,
  sameCache,
  setField,
  storeAll,
  withCrc,
  type Exploded,
} from './blob-tools.js';

let profile: Profile;
let codec: KvtcCodec;
let mixed: KvtcCodec;
let cache: KvCache; // 300 tokens: 4 sink, 168 compressed, 128 window
let blob: Uint8Array;
let short: Uint8Array; // 100 tokens, all raw (n = 0)
let mixedBlob: Uint8Array;
let ref: KvCache;

beforeAll(async () => {
  // The per-layer profile (10 plans) whose sections and layers the expected messages name.
  profile = await readProfile(fileURLToPath(new URL('../fixtures/profile-v1', import.meta.url)));
  codec = await codecFromProfile(profile);
  mixed = await KvtcCodec.create(codec.spec, profile.plans.map(mixedGroups));
  cache = await captureCache(300);
  blob = (await codec.encode(cache)).blob;
  short = (await codec.encode(prefix(cache, 100))).blob;
  mixedBlob = (await mixed.encode(cache)).blob;
  ref = (await codec.decode(blob)).cache;
});

afterAll(async () => {
  await codec?.release();
  await mixed?.release();
});

const edit = (b: Uint8Array, f: (e: Exploded) => void, count?: number): Uint8Array => {
  const e = explode(b);
  f(e);
  return implode(e, count);
};

/** Incompressible bytes (a fixed LCG). */
function noise(n: number): Uint8Array {
  const out = new Uint8Array(n);
  for (let i = 0, x = 12345; i < n; i++) out[i] = (x = (Math.imul(x, 1103515245) + 12345) >>> 0) >>> 24;
  return out;
}

/** Where, in the mixed plans' payload (mixedGroups), each part starts, for n compressed tokens and rank r. */
function mixedOffsets(n: number, r: number) {
  const fp8Static = packedLength(2 * n, TYPE_BITS.int8); // after the dynamic int8 group's codes
  const codes = 2 * n + 2 * n + 2 * n + packedLength(n * (r - 7), TYPE_BITS.int4);
  return { fp8Static, dynOffsets: codes, dynScales: codes + 2 * n };
}

describe('untrusted blobs: each rule refuses a checksum-valid blob that breaks it', () => {
  type Case = [name: string, make: () => Uint8Array, code: 'BLOB_INVALID' | 'BLOB_MISMATCH', message: RegExp];
  const cases: Case[] = [
    ['fewer bytes than a header and checksum', () => blob.slice(0, 20), 'BLOB_INVALID', /only 20 bytes/],
    ['another format version', () => setField(blob, 4, 2, 2), 'BLOB_INVALID', /version 2/],
    ['an unknown flag bit', () => setField(blob, 6, 2, 4), 'BLOB_INVALID', /flags 0x0004 set unknown bits/],
    ['flags float16 and float32 raw tokens together', () => setField(blob, 6, 2, 3), 'BLOB_INVALID', /both/],
    ['a reserved byte that is not 0', () => setField(blob, 44, 1, 1), 'BLOB_INVALID', /reserved header byte 44 is 1/],
    ['another profile id', () => setField(blob, 8, 4, 0xdeadbeef), 'BLOB_MISMATCH', /encoded with profile/],
    [
      'tokens = 1e7 (the sections hold 168 compressed tokens)',
      () => setField(blob, 16, 4, 1e7),
      'BLOB_INVALID',
      /plan 0's section\) declares \d+ decoded bytes; the plan needs \d+ for 9999868 compressed tokens/,
    ],
    ['tokens = 1.26e9', () => setField(blob, 16, 4, 1.26e9), 'BLOB_INVALID', /1260000000 tokens; a kvtc blob holds at most 16777216/],
    ['tokens = 2^24 + 1', () => setField(blob, 16, 4, 2 ** 24 + 1), 'BLOB_INVALID', /16777217 tokens; a kvtc blob holds at most 16777216/],
    [
      'tokens = 301',
      () => setField(blob, 16, 4, 301),
      'BLOB_INVALID',
      /declares \d+ decoded bytes; the plan needs \d+ for 169 compressed tokens/,
    ],
    [
      'tokens = 0',
      () => setField(setField(setField(blob, 16, 4, 0), 32, 4, 0), 36, 4, 0),
      'BLOB_INVALID',
      /header says 11 sections; with 0 compressed tokens this profile's blob has 1/,
    ],
    [
      'start_position + tokens past 2^32',
      () => setField(blob, 20, 4, 2 ** 32 - 100),
      'BLOB_INVALID',
      /start_position 4294967196 \+ 300 tokens runs past position 2\^32/,
    ],
    ['layers differ from the profile', () => setField(blob, 24, 2, 6), 'BLOB_INVALID', /header layers is 6, but the profile's model has 5/],
    [
      'kv_heads differ from the profile',
      () => setField(blob, 26, 2, 2),
      'BLOB_INVALID',
      /header kv_heads is 2, but the profile's model has 4/,
    ],
    [
      'head_dim differs from the profile',
      () => setField(blob, 28, 2, 16),
      'BLOB_INVALID',
      /header head_dim is 16, but the profile's model has 8/,
    ],
    [
      'sink inconsistent with the profile',
      () => setField(blob, 32, 4, 3),
      'BLOB_INVALID',
      /sink 3 and window 128 for 300 tokens; the profile \(sink 4, window 128\) gives 4 and 128/,
    ],
    ['window inconsistent with the profile', () => setField(blob, 36, 4, 0), 'BLOB_INVALID', /sink 4 and window 0 for 300 tokens/],
    [
      'sink + window more than the tokens',
      () => setField(blob, 32, 4, 200),
      'BLOB_INVALID',
      /sink 200 \+ window 128 raw tokens, more than its 300 tokens/,
    ],
    [
      'section count 0',
      () => setField(blob, 30, 2, 0),
      'BLOB_INVALID',
      /header says 0 sections; with 168 compressed tokens this profile's blob has 11/,
    ],
    [
      'a second raw section',
      () => edit(blob, (e) => e.entries.splice(1, 0, { ...e.entries[0] })),
      'BLOB_INVALID',
      /12 sections; .* has 11/,
    ],
    ['an extra plan section', () => edit(blob, (e) => e.entries.push({ ...e.entries[10] })), 'BLOB_INVALID', /12 sections; .* has 11/],
    ['a missing plan section', () => edit(blob, (e) => e.entries.pop()), 'BLOB_INVALID', /10 sections; .* has 11/],
    [
      'plan sections when no token is compressed',
      () => edit(short, (e) => e.entries.push(explode(blob).entries[1])),
      'BLOB_INVALID',
      /2 sections; with 0 compressed tokens this profile's blob has 1 .*no plan sections/,
    ],
    [
      'no raw section (a plan section first)',
      () => edit(blob, (e) => (e.entries[0] = { ...e.entries[1] })),
      'BLOB_INVALID',
      /section 0 is a plan section for plan 0; section 0 must be the raw section/,
    ],
    [
      "a raw section in a plan section's place",
      () => edit(blob, (e) => (e.entries[10] = { ...e.entries[0] })),
      'BLOB_INVALID',
      /section 10 is a raw section .*must be plan 9's section/,
    ],
    [
      'plan sections out of order',
      () => edit(blob, (e) => ([e.entries[1], e.entries[2]] = [e.entries[2], e.entries[1]])),
      'BLOB_INVALID',
      /section 1 is a plan section for plan 1; section 1 must be plan 0's section/,
    ],
    [
      "a plan index past the profile's plans",
      () => edit(blob, (e) => (e.entries[10].plan = 10)),
      'BLOB_INVALID',
      /section 10 is a plan section for plan 10/,
    ],
    [
      'a raw section with a plan index',
      () => edit(blob, (e) => (e.entries[0].plan = 5)),
      'BLOB_INVALID',
      /raw section \(plan index 5\).*with plan index 0/,
    ],
    ['an unknown section kind', () => edit(blob, (e) => (e.entries[1].kind = 2)), 'BLOB_INVALID', /section 1 has unknown kind 2/],
    ['an unknown codec', () => edit(blob, (e) => (e.entries[1].codec = 7)), 'BLOB_INVALID', /section 1 has unknown codec 7/],
    [
      'a raw section declaring the wrong decoded size',
      () => edit(blob, (e) => (e.entries[0].decoded += 2)),
      'BLOB_INVALID',
      /section 0 \(the raw section\) declares 84482 decoded bytes; 132 raw tokens of this shape are 84480/,
    ],
    [
      'a stored raw section shorter than it declares',
      () => edit(blob, (e) => (e.entries[0].stored = e.entries[0].stored.slice(2))),
      'BLOB_INVALID',
      /stored uncompressed in 84478 bytes but declares 84480/,
    ],
    [
      'a plan section declaring the wrong decoded size',
      () => edit(blob, (e) => (e.entries[3].decoded += 1)),
      'BLOB_INVALID',
      /section 3 \(plan 2's section\) declares \d+ decoded bytes; the plan needs/,
    ],
    [
      'a DEFLATE section declaring more than 1032:1',
      () =>
        edit(blob, (e) => (e.entries[0] = { ...e.entries[0], codec: 1, stored: deflateRawSync(new Uint8Array(84480)).subarray(0, 60) })),
      'BLOB_INVALID',
      /declares 84480 decoded bytes from 60 DEFLATE bytes; DEFLATE expands at most 1032:1/,
    ],
    [
      'a DEFLATE bomb: the stream inflates past its declared size',
      () => edit(blob, (e) => (e.entries[0] = { ...e.entries[0], codec: 1, stored: deflateRawSync(new Uint8Array(16 << 20)) })),
      'BLOB_INVALID',
      /section 0 does not inflate to its declared 84480 bytes/,
    ],
    [
      'a DEFLATE stream that inflates short',
      () => edit(blob, (e) => (e.entries[0] = { ...e.entries[0], codec: 1, stored: deflateRawSync(noise(1000)) })),
      'BLOB_INVALID',
      /inflates to 1000 bytes, the table says 84480/,
    ],
    [
      'a DEFLATE section that is not DEFLATE',
      () =>
        edit(blob, (e) => (e.entries[1] = { ...e.entries[1], codec: 1, stored: new Uint8Array(e.entries[1].stored.length).fill(0xff) })),
      'BLOB_INVALID',
      /section 1 does not inflate/,
    ],
    [
      'bytes between the last section and the checksum',
      () => withCrc(new Uint8Array([...blob.subarray(0, blob.length - 4), 1, 2, 3, 0, 0, 0, 0])),
      'BLOB_INVALID',
      /declares \d+ stored bytes, but \d+ lie between/,
    ],
    [
      'a truncated blob with its checksum recomputed',
      () => withCrc(blob.slice(0, 2000)),
      'BLOB_INVALID',
      /declares \d+ stored bytes, but \d+ lie between/,
    ],
    [
      'a table running past the end of the file',
      () => withCrc(setField(blob, 30, 2, 11).slice(0, 100)),
      'BLOB_INVALID',
      /section table \(11 entries\) runs past the end/,
    ],
    [
      'a flipped byte (checksum not recomputed)',
      () => Object.assign(blob.slice(), { [300]: blob[300] ^ 0x10 }),
      'BLOB_INVALID',
      /checksum mismatch/,
    ],
    [
      'an infinite raw value (fp16 0x7c00)',
      () => edit(blob, (e) => e.entries[0].stored.set([0x00, 0x7c], 0)),
      'BLOB_INVALID',
      /raw section stores a non-finite key for layer 0, head 0, token 0, dim 0/,
    ],
    [
      'a NaN raw value in a window token',
      () => edit(blob, (e) => e.entries[0].stored.set([0x00, 0x7e], 2 * 8 * (4 + 5))),
      'BLOB_INVALID',
      /non-finite key for layer 0, head 0, token 177, dim 0/,
    ],
  ];
  it.each(cases)('%s', async (_name, make, code, message) => {
    const before = process.memoryUsage().arrayBuffers;
    await expectKvtcError(codec.decode(make(), 'x.kvtc'), code, message);
    // Refused before the cache is allocated (1e7 tokens would be 12.8 GB).
    expect(process.memoryUsage().arrayBuffers - before).toBeLessThan(256 << 20);
  });

  it('the error names the field and value in its context too', async () => {
    await expect(codec.decode(setField(blob, 24, 2, 6), 'x.kvtc')).rejects.toMatchObject({
      code: 'BLOB_INVALID',
      context: { blob: 'x.kvtc', field: 'layers', value: 6, profile: 5 },
    });
  });
});

describe('untrusted blobs: dynamic and fp8 groups decode to finite values only', () => {
  const n = 300 - 4 - 128;
  const planPayload = (f: (p: Uint8Array, o: ReturnType<typeof mixedOffsets>) => void) => () =>
    edit(mixedBlob, (e) => {
      const s = storeAll(e);
      e.entries = s.entries;
      f(e.entries[1].stored, mixedOffsets(n, profile.plans[0].rank));
    });
  type Case = [name: string, make: () => Uint8Array, message: RegExp];
  const cases: Case[] = [
    [
      'an infinite dynamic scale',
      planPayload((p, o) => p.set([0x00, 0x7c], o.dynScales + 2 * 7)),
      /plan 0 \(keys of layer 0\), dynamic group 0–1: the fp16 scale of token 11 is Infinity \(0x7c00\)/,
    ],
    ['a NaN dynamic scale', planPayload((p, o) => p.set([0x01, 0xfe], o.dynScales)), /the fp16 scale of token 4 is NaN/],
    [
      'an infinite dynamic offset',
      planPayload((p, o) => p.set([0x00, 0xfc], o.dynOffsets + 2 * 3)),
      /the fp16 offset of token 7 is -Infinity/,
    ],
    [
      'an fp8 code 0x7f (NaN)',
      planPayload((p, o) => (p[o.fp8Static + 5] = 0x7f)),
      /stores fp8 code 0x7f \(NaN, never written\) for component 2 of token 9/,
    ],
    ['an fp8 code 0xff (NaN)', planPayload((p, o) => (p[o.fp8Static + n + 1] = 0xff)), /fp8 code 0xff .* component 3 of token 5/],
  ];
  it.each(cases)('%s → BLOB_INVALID', async (_name, make, message) => {
    await expectKvtcError(mixed.decode(make(), 'x.kvtc'), 'BLOB_INVALID', message);
  });

  it('the largest finite fp16 scales decode to finite values; a float16 blob saturates at ±65504', async () => {
    const big = (fp16: boolean) =>
      edit(mixedBlob, (e) => {
        e.entries = storeAll(e).entries;
        if (fp16) new DataView(e.header.buffer).setUint16(6, 1, true);
        const o = mixedOffsets(n, profile.plans[0].rank);
        const p = e.entries[1].stored;
        for (let t = 0; t < n; t++) p.set([0xff, 0x7b], o.dynScales + 2 * t); // 65504
      });
    const f32 = (await mixed.decode(big(false))).cache;
    expect(allFinite(f32)).toBe(true);
    expect(Math.max(...f32.keys[0].map(Math.abs))).toBeGreaterThan(65504);
    const f16 = (await mixed.decode(big(true))).cache;
    expect(f16.dtype).toBe('float16');
    expect(allFinite(f16)).toBe(true);
    expect(Math.max(...f16.keys[0].map(Math.abs))).toBe(65504);
  });
});

describe('untrusted blobs: what a reader must accept', () => {
  it('every section stored uncompressed decodes to the same cache', async () => {
    const all = implode(storeAll(explode(mixedBlob)));
    expect(all.length).toBeGreaterThan(mixedBlob.length);
    expect(sameCache((await mixed.decode(all)).cache, (await mixed.decode(mixedBlob)).cache)).toBe(true);
  });

  it('every section as DEFLATE (either codec is valid for any section) decodes to the same cache', async () => {
    const z = edit(
      blob,
      (e) => (e.entries = e.entries.map((s) => (s.codec === 0 ? { ...s, codec: 1, stored: deflateRawSync(s.stored) } : s))),
    );
    expect(explode(z).entries.every((s) => s.codec === 1)).toBe(true);
    expect(sameCache((await codec.decode(z)).cache, ref)).toBe(true);
  });

  it('a DEFLATE raw section decodes to the same cache', async () => {
    const z = edit(blob, (e) => (e.entries[0] = { ...e.entries[0], codec: 1, stored: deflateRawSync(e.entries[0].stored) }));
    expect(sameCache((await codec.decode(z)).cache, ref)).toBe(true);
  });

  it('a blob of only raw tokens has exactly one section', () => {
    expect(field(short, 'section_count')).toBe(1);
    expect(field(blob, 'section_count')).toBe(11);
  });
});
