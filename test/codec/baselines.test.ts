import { describe, expect, it } from 'vitest';
import { BASELINE_NAMES, baselineBytes, quantizedRange, runBaseline, type BaselineName } from '../../src/codec/baselines.js';
import { floatToHalf, halfToFloat } from '../../src/io/fp16.js';
import type { KvCache } from '../../src/model/types.js';
import { mulberry32 } from '../../src/evaluate/stats.js';

function gaussian(rng: () => number): number {
  return Math.sqrt(-2 * Math.log(1 - rng())) * Math.cos(2 * Math.PI * rng());
}

/** Random cache; `fp16` rounds every value to an fp16-representable float. */
function randomCache(layers: number, kvHeads: number, tokens: number, headDim: number, seed = 1, fp16 = false): KvCache {
  const rng = mulberry32(seed);
  const make = () =>
    Float32Array.from({ length: kvHeads * tokens * headDim }, () => {
      const v = gaussian(rng) * 2;
      return fp16 ? halfToFloat(floatToHalf(v)) : v;
    });
  return {
    layers,
    kvHeads,
    headDim,
    tokens,
    dtype: fp16 ? 'float16' : 'float32',
    keys: Array.from({ length: layers }, make),
    values: Array.from({ length: layers }, make),
    startPosition: 0,
  };
}

function mse(a: KvCache, b: KvCache): number {
  let s = 0;
  let n = 0;
  for (const kind of ['keys', 'values'] as const) {
    for (let l = 0; l < a.layers; l++) {
      for (let i = 0; i < a[kind][l].length; i++) s += (a[kind][l][i] - b[kind][l][i]) ** 2;
      n += a[kind][l].length;
    }
  }
  return s / n;
}

describe('baseline codecs', () => {
  it('fp16 is bit-exact on fp16-representable data, at 2 bytes per value', () => {
    const cache = randomCache(2, 4, 50, 8, 3, true);
    const r = runBaseline('fp16', cache);
    for (let l = 0; l < 2; l++) {
      expect(r.cache.keys[l]).toEqual(cache.keys[l]);
      expect(r.cache.values[l]).toEqual(cache.values[l]);
    }
    expect(r.bytes).toBe(2 * 2 * 4 * 50 * 8 * 2);
    expect(r.name).toBe('fp16');
  });

  it('fp16 rounds float32 data to the nearest half', () => {
    const cache = randomCache(1, 2, 10, 8, 4);
    const r = runBaseline('fp16', cache);
    expect(Array.from(r.cache.keys[0])).toEqual(Array.from(cache.keys[0], (v) => halfToFloat(floatToHalf(v))));
  });

  it('error grows int8 < int4 < kivi2 on random data', () => {
    const cache = randomCache(2, 4, 256, 32, 5);
    const opts = { sinkTokens: 0, recentTokens: 0 };
    const err = Object.fromEntries((['int8', 'int4', 'kivi2'] as const).map((n) => [n, mse(cache, runBaseline(n, cache, opts).cache)]));
    expect(err.int8).toBeGreaterThan(0);
    expect(err.int8).toBeLessThan(err.int4);
    expect(err.int4).toBeLessThan(err.kivi2);
    // Uniform quantization noise is step²/12: int8 steps are ~17x finer than int4's.
    expect(err.int4 / err.int8).toBeGreaterThan(100);
  });

  it('int8 reconstruction error is within half a step per token', () => {
    const cache = randomCache(1, 2, 20, 16, 6);
    const out = runBaseline('int8', cache).cache;
    for (let row = 0; row < 2 * 20; row++) {
      const x = cache.keys[0].subarray(row * 16, row * 16 + 16);
      const y = out.keys[0].subarray(row * 16, row * 16 + 16);
      const step = (Math.max(...x) - Math.min(...x)) / 255;
      for (let d = 0; d < 16; d++) expect(Math.abs(x[d] - y[d])).toBeLessThan(step * 0.5 + 2e-3 * Math.abs(x[d]) + 1e-3);
    }
  });

  it('keeps sink and recent tokens in exact fp16', () => {
    const cache = randomCache(1, 2, 40, 8, 7, true);
    for (const name of ['int4', 'kivi2'] as const) {
      const out = runBaseline(name, cache, { sinkTokens: 4, recentTokens: 8, groupSize: 8 }).cache;
      for (let h = 0; h < 2; h++) {
        for (const t of [0, 3, 32, 39]) {
          const i = (h * 40 + t) * 8;
          expect(Array.from(out.values[0].subarray(i, i + 8))).toEqual(Array.from(cache.values[0].subarray(i, i + 8)));
        }
        const q = (h * 40 + 10) * 8;
        expect(Array.from(out.keys[0].subarray(q, q + 8))).not.toEqual(Array.from(cache.keys[0].subarray(q, q + 8)));
      }
    }
  });

  it('kivi2 quantizes keys per channel, so an outlier channel does not spoil the others', () => {
    const base = randomCache(1, 1, 64, 8, 8);
    const outlier: KvCache = { ...base, keys: [base.keys[0].map((v, i) => (i % 8 === 0 ? v * 100 + 500 : v))] };
    const opts = { recentTokens: 0 };
    const channelErr = (c: KvCache, name: BaselineName) => {
      const out = runBaseline(name, c, opts).cache.keys[0];
      let s = 0;
      for (let i = 0; i < out.length; i++) if (i % 8 !== 0) s += (out[i] - c.keys[0][i]) ** 2;
      return s;
    };
    expect(channelErr(outlier, 'kivi2')).toBeCloseTo(channelErr(base, 'kivi2'), 6);
    // Per-token int4 shares one range with the outlier and loses the small channels.
    expect(channelErr(outlier, 'int4')).toBeGreaterThan(channelErr(outlier, 'kivi2'));
  });

  it('does not modify its input', () => {
    const cache = randomCache(1, 2, 40, 8, 9);
    const copy = cache.keys[0].slice();
    for (const n of BASELINE_NAMES) runBaseline(n, cache);
    expect(cache.keys[0]).toEqual(copy);
  });
});

describe('baseline byte counts', () => {
  const shape = { layers: 2, kvHeads: 4, headDim: 8, tokens: 200 };

  it.each([
    // codes + fp16 scale/offset per (token, head) + fp16 tokens, for keys and values of 2 layers
    ['int8', { sinkTokens: 4, recentTokens: 16 }, 2 * 2 * (180 * 4 * 8 + 180 * 4 * 4 + 20 * 4 * 8 * 2)],
    ['int4', { sinkTokens: 4, recentTokens: 16 }, 2 * 2 * ((180 * 4 * 8 * 4) / 8 + 180 * 4 * 4 + 20 * 4 * 8 * 2)],
    ['int8', {}, 2 * 2 * (200 * 4 * 8 + 200 * 4 * 4)],
    ['fp16', { sinkTokens: 4 }, 2 * 2 * 200 * 4 * 8 * 2],
    // kivi2 defaults: 128 recent in fp16, 72 left → 64 quantized (2 key groups of 32), 8 residual in fp16.
    // keys: 2-bit codes + scale/zero per (group, head, channel); values: per (token, head, channel group of min(32, 8)).
    ['kivi2', {}, 2 * ((64 * 32 * 2) / 8 + 2 * 4 * 8 * 4 + 136 * 32 * 2) + 2 * ((64 * 32 * 2) / 8 + 64 * 4 * 1 * 4 + 136 * 32 * 2)],
  ] as const)('%s %j', (name, opts, expected) => {
    expect(baselineBytes(name, shape, opts)).toBe(expected);
    expect(runBaseline(name, randomCache(2, 4, 200, 8), opts).bytes).toBe(expected);
  });

  it('kivi2 with wide heads pays one scale/zero per 32 channels of values', () => {
    const s = { layers: 1, kvHeads: 1, headDim: 64, tokens: 64 };
    const opts = { recentTokens: 0 };
    const codes = (64 * 64 * 2) / 8;
    expect(baselineBytes('kivi2', s, opts)).toBe(codes + 2 * 64 * 4 + codes + 64 * 2 * 4);
  });

  it('quantized ranges respect sinks, the window and whole key groups', () => {
    expect(quantizedRange('int4', 100, { sinkTokens: 4, recentTokens: 10 })).toEqual({ start: 4, end: 90 });
    expect(quantizedRange('kivi2', 300, { sinkTokens: 4 })).toEqual({ start: 4, end: 164 });
    expect(quantizedRange('kivi2', 100)).toEqual({ start: 0, end: 0 });
    expect(quantizedRange('int8', 10, { sinkTokens: 8, recentTokens: 8 })).toEqual({ start: 8, end: 8 });
  });

  it('stores fewer bytes as bits go down', () => {
    const big = { layers: 4, kvHeads: 8, headDim: 128, tokens: 4096 };
    const b = Object.fromEntries(BASELINE_NAMES.map((n) => [n, baselineBytes(n, big)]));
    expect(b.fp16 / b.int8).toBeCloseTo(16 / (8 + 32 / 128), 10);
    expect(b.int8).toBeGreaterThan(b.int4);
    expect(b.int4).toBeGreaterThan(b.kivi2);
  });
});
