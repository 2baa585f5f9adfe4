/**
 * Range (issue 10, docs/profile-format.md §6 "Values and range"): what encode does with values
 * fp16 cannot hold, non-finite values, and values far outside the profile's calibrated range.
 *   raw tokens: a float32 cache's value beyond fp16 → raw section stored as float32 (flag bit 1),
 *     lossless; a "float16" cache holding one → KV_OUT_OF_RANGE.
 *   any token: NaN/±∞ → KV_INVALID naming it.
 *   compressed tokens: ‖x‖ > ‖μ‖ + 16·RMS of the plan → KV_OUT_OF_RANGE; within that, static
 *     groups clip to their calibrated range (documented), dynamic groups must fit fp16.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { KvtcCodec } from '../../src/codec/codec.js';
import { encodePlanCodes, payloadLength } from '../../src/codec/payload.js';
import type { BasisPlan } from '../../src/codec/types.js';
import { floatToHalf, halfToFloat } from '../../src/io/fp16.js';
import type { KvCache } from '../../src/model/types.js';
import { fileURLToPath } from 'node:url';
import { codecFromProfile } from '../../src/profile/codec-from-profile.js';
import { readProfile, type Profile } from '../../src/profile/read.js';
import { allFinite, at, captureCache, cloneCache, expectKvtcError, explode, field } from './blob-tools.js';

let profile: Profile;
let codec: KvtcCodec;
let cache: KvCache; // float32, 300 tokens: raw [0, 4) and [172, 300), compressed [4, 172)
let ref: KvCache; // decode of the unmodified cache

beforeAll(async () => {
  // The per-layer profile (10 plans) whose sections and layers the expected messages name.
  profile = await readProfile(fileURLToPath(new URL('../fixtures/profile-v1', import.meta.url)));
  codec = await codecFromProfile(profile);
  cache = await captureCache(300);
  ref = (await codec.decode((await codec.encode(cache)).blob)).cache;
});

afterAll(async () => {
  await codec?.release();
});

type Kind = 'key' | 'value';
/** A copy of the cache with one value set. */
function withValue(c: KvCache, kind: Kind, layer: number, head: number, token: number, dim: number, v: number, dtype = c.dtype): KvCache {
  const out = { ...cloneCache(c), dtype };
  (kind === 'key' ? out.keys : out.values)[layer][at(c, head, token, dim)] = v;
  return out;
}

const fp16 = (v: number) => halfToFloat(floatToHalf(v));

describe('raw (sink and window) tokens', () => {
  it('an ordinary cache keeps its fp16 raw section (flag bit 1 clear)', async () => {
    const { blob } = await codec.encode(cache);
    expect(field(blob, 'flags')).toBe(0);
    expect(explode(blob).entries[0].decoded).toBe(5 * 2 * 4 * 132 * 8 * 2);
  });

  type Case = [where: string, kind: Kind, layer: number, head: number, token: number, dim: number, value: number];
  const overflow: Case[] = [
    ['a sink key of 1e5', 'key', 2, 1, 0, 3, 1e5],
    ['a window value of −7e4', 'value', 4, 3, 299, 7, -7e4],
    ['a window key of 65520 (rounds to fp16 ∞)', 'key', 0, 0, 200, 0, 65520],
    ['a sink value of 3e38', 'value', 1, 2, 3, 5, 3e38],
  ];
  it.each(overflow)(
    'float32 cache, %s: raw tokens stored as float32 (flag bit 1), restored exactly',
    async (_w, kind, layer, head, token, dim, value) => {
      const c = withValue(cache, kind, layer, head, token, dim, value);
      const { blob } = await codec.encode(c);
      expect(field(blob, 'flags')).toBe(2);
      expect(explode(blob).entries[0].decoded).toBe(5 * 2 * 4 * 132 * 8 * 4);
      const back = (await codec.decode(blob)).cache;
      expect(back.dtype).toBe('float32');
      for (let l = 0; l < 5; l++) {
        for (const k of ['keys', 'values'] as const) {
          for (let h = 0; h < 4; h++) {
            for (let t = 0; t < 300; t++) {
              const i = at(c, h, t, 0);
              const got = back[k][l].subarray(i, i + 8);
              // raw tokens: the float32 values themselves; compressed tokens: as without the outlier
              const want = t < 4 || t >= 172 ? c[k][l].subarray(i, i + 8) : ref[k][l].subarray(i, i + 8);
              expect(Array.from(got)).toEqual(Array.from(want));
            }
          }
        }
      }
    },
  );

  it.each([
    ["65504, fp16's largest value", 65504, 65504],
    ['65519.99 (rounds to 65504)', 65519.99, 65504],
    ["1e-9 (an fp16 zero; relative error 1 below fp16's normal range, absolute ≤ 2^-25)", 1e-9, 0],
  ])('a raw value of %s stays in the fp16 raw section', async (_n, v, want) => {
    const { blob } = await codec.encode(withValue(cache, 'key', 1, 1, 2, 2, v));
    expect(field(blob, 'flags')).toBe(0);
    expect((await codec.decode(blob)).cache.keys[1][at(cache, 1, 2, 2)]).toBe(want);
  });

  it('a float16 cache holding a value beyond fp16 → KV_OUT_OF_RANGE naming layer, key/value, head and token', async () => {
    const c16: KvCache = { ...cloneCache(cache), dtype: 'float16' };
    for (const a of [...c16.keys, ...c16.values]) for (let i = 0; i < a.length; i++) a[i] = fp16(a[i]);
    expect(field((await codec.encode(c16)).blob, 'flags')).toBe(1);
    const bad = withValue(c16, 'value', 1, 2, 299, 7, 1e5);
    await expectKvtcError(
      codec.encode(bad, 'kv.safetensors'),
      'KV_OUT_OF_RANGE',
      /kv\.safetensors: the value of layer 1, head 2, token 299 \(position 299\), dim 7 is 100000, beyond fp16's ±65504, but the cache says its dtype is float16/,
    );
    await expect(codec.encode(bad)).rejects.toMatchObject({
      context: { layer: 1, kind: 'value', head: 2, token: 299, dim: 7, value: 1e5 },
    });
  });
});

describe('non-finite values anywhere → KV_INVALID naming the value', () => {
  type Case = [where: string, kind: Kind, layer: number, head: number, token: number, dim: number, value: number, message: RegExp];
  const cases: Case[] = [
    ['NaN in a sink key', 'key', 0, 0, 1, 4, NaN, /the key of layer 0, head 0, token 1 \(position 1\), dim 4 is NaN/],
    [
      '+∞ in a window value',
      'value',
      3,
      1,
      250,
      0,
      Infinity,
      /the value of layer 3, head 1, token 250 \(position 250\), dim 0 is Infinity/,
    ],
    [
      '−∞ in a compressed key',
      'key',
      4,
      3,
      100,
      6,
      -Infinity,
      /the key of layer 4, head 3, token 100 \(position 100\), dim 6 is -Infinity/,
    ],
    ['NaN in a compressed value', 'value', 2, 0, 4, 1, NaN, /the value of layer 2, head 0, token 4 \(position 4\), dim 1 is NaN/],
  ];
  it.each(cases)('%s', async (_w, kind, layer, head, token, dim, value, message) => {
    await expectKvtcError(codec.encode(withValue(cache, kind, layer, head, token, dim, value)), 'KV_INVALID', message);
  });
});

describe('compressed tokens far outside the calibrated range → KV_OUT_OF_RANGE', () => {
  type Case = [what: string, kind: Kind, layer: number, head: number, token: number, dim: number, value: number, plan: number];
  const cases: Case[] = [
    ['1e30 in a key', 'key', 2, 1, 100, 3, 1e30, 4],
    ['−1e30 in a value', 'value', 0, 0, 4, 0, -1e30, 1],
    ['1000 in a value (calibrated RMS deviation ≈ 2)', 'value', 4, 2, 171, 5, 1000, 9],
    ['1000 in a key (calibrated RMS deviation ≈ 10)', 'key', 1, 3, 50, 7, 1000, 2],
  ];
  it.each(cases)('%s', async (_w, kind, layer, head, token, dim, value, plan) => {
    const c = withValue(cache, kind, layer, head, token, dim, value);
    await expectKvtcError(
      codec.encode(c, 'kv.safetensors'),
      'KV_OUT_OF_RANGE',
      new RegExp(
        `kv\\.safetensors: token ${token} \\(position ${token}\\) is far outside the range the profile was calibrated on: .* ${kind}s in layer ${layer} \\(plan ${plan}\\).*largest value is ${String(Math.fround(value)).replace(/[.+]/g, '\\$&')} \\(layer ${layer}, head ${head}, dim ${dim}\\)`,
      ),
    );
    await expect(codec.encode(c)).rejects.toMatchObject({
      fix: expect.stringMatching(/[Rr]ecalibrate the profile on data representative/),
      context: { plan, kind, token, layer, head, dim, value: Math.fround(value) },
    });
  });

  it('the bound is ‖μ‖ + 16 × the calibration RMS deviation: just inside encodes (clipped to the static range), just outside is refused', async () => {
    const plan = profile.plans[5]; // values of layer 2
    const mu = Math.hypot(...plan.mean);
    const bound = mu + 16 * Math.sqrt(plan.variances.reduce((a, v) => a + v, 0));
    // Token 60's values of layer 2, scaled so that their norm is just under / over the bound.
    const norm = (c: KvCache) => {
      let s = 0;
      for (let h = 0; h < 4; h++) for (let d = 0; d < 8; d++) s += c.values[2][at(c, h, 60, d)] ** 2;
      return Math.sqrt(s);
    };
    const scaled = (f: number) => {
      const c = cloneCache(cache);
      const k = (f * bound) / norm(cache);
      for (let h = 0; h < 4; h++) for (let d = 0; d < 8; d++) c.values[2][at(c, h, 60, d)] *= k;
      return c;
    };
    const inside = scaled(0.99);
    expect(norm(inside)).toBeGreaterThan(5 * norm(cache));
    const back = (await codec.decode((await codec.encode(inside)).blob)).cache;
    expect(allFinite(back)).toBe(true);
    await expectKvtcError(codec.encode(scaled(1.01)), 'KV_OUT_OF_RANGE', /token 60 .* values in layer 2 \(plan 5\)/);
  });

  it("a dynamic group whose coefficients leave fp16 → KV_OUT_OF_RANGE (the codec checks; calibration's host path does not)", () => {
    const n = 3;
    const plan: BasisPlan = {
      kind: 'value',
      layers: [1],
      dim: 2,
      rank: 2,
      mean: new Float32Array(2),
      basis: new Float32Array(4),
      variances: new Float32Array(2),
      groups: [{ start: 0, end: 2, type: 'int8', mode: 'dynamic' }],
      lo: new Float32Array(2),
      hi: new Float32Array(2),
    };
    const coeffs = Float32Array.from([1, 2, 3, 4, 1e5, 6]);
    expect(encodePlanCodes({ codes: new Uint8Array(0), coeffs }, n, plan).length).toBe(payloadLength(plan, n));
    let err: unknown;
    try {
      encodePlanCodes({ codes: new Uint8Array(0), coeffs }, n, plan, { plan: 3, firstToken: 4, source: 'kv' });
    } catch (e) {
      err = e;
    }
    expect(err).toMatchObject({
      code: 'KV_OUT_OF_RANGE',
      message: expect.stringMatching(/kv: token 5 has a coefficient of 100000 in plan 3 \(values of layer 1\), dynamic group 0–1; .* fp16/),
      fix: expect.stringMatching(/recalibrate/),
    });
  });
});

describe('a range error mid-encode leaves the codec usable', () => {
  it('threaded: the graph runs already submitted finish, and the next encode gives the inline bits', async () => {
    const threaded = await codecFromProfile(profile, { transformThread: true });
    try {
      // plan 7 (values of layer 3): plans 0–6 are gathered and submitted before the check fails
      await expectKvtcError(threaded.encode(withValue(cache, 'value', 3, 0, 90, 0, 1e6)), 'KV_OUT_OF_RANGE', /plan 7/);
      await expectKvtcError(threaded.encode(withValue(cache, 'key', 4, 0, 90, 0, NaN)), 'KV_INVALID', /layer 4/);
      const a = await codec.encode(cache);
      const b = await threaded.encode(cache);
      expect(Buffer.from(b.blob).equals(Buffer.from(a.blob))).toBe(true);
    } finally {
      await threaded.release();
    }
  });
});

describe('token counts and positions', () => {
  it('more than 2^24 tokens → KV_INVALID before any work', async () => {
    const huge: KvCache = { ...cache, tokens: 2 ** 24 + 1, keys: [], values: [] };
    await expectKvtcError(codec.encode(huge), 'KV_INVALID', /16777217 tokens; a kvtc blob holds at most 16777216/);
  });

  it('start_position + tokens past 2^32 → KV_INVALID', async () => {
    await expectKvtcError(
      codec.encode({ ...cache, startPosition: 2 ** 32 - 299 }),
      'KV_INVALID',
      /starts at position 4294966997 with 300 tokens/,
    );
    // Below 2^32 the model's own bound decides (2^24 for a profile without model.max_positions).
    await expectKvtcError(codec.encode({ ...cache, startPosition: 2 ** 32 - 300 }), 'KV_INVALID', /the model has 16777216 positions/);
  });

  it('the last position the model has encodes and decodes; one past it is refused', async () => {
    await expectKvtcError(codec.encode({ ...cache, startPosition: 2 ** 24 - 299 }), 'KV_INVALID', /last token is at position 16777216/);
    const last = await codec.encode({ ...cache, startPosition: 2 ** 24 - 300 });
    expect(field(last.blob, 'start_position')).toBe(2 ** 24 - 300);
    expect(allFinite((await codec.decode(last.blob)).cache)).toBe(true);
  });
});
