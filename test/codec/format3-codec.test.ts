// The codec with format-3 profiles (docs/profile-format.md §2.4): value heads wider than key heads
// (an MLA latent: 1 head, keys 8 wide with RoPE, values 24 wide) and a shard of a hybrid model's
// attention layers (cache_layers [1, 3, 4] of 6, TP rank 1 of 2). Profiles are fitted from
// synthetic caches of known structure (format3-fixture.ts); a fresh cache of the same model must
// come back within twice the profile's measured error, its raw tokens within fp16 rounding.
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { fp16BytesPerToken, rawSectionBytes } from '../../src/codec/blob.js';
import { baselineBytes, runBaseline } from '../../src/codec/baselines.js';
import { halfToFloat, floatToHalf } from '../../src/io/fp16.js';
import { codecFromProfile } from '../../src/profile/codec-from-profile.js';
import type { Profile } from '../../src/profile/read.js';
import { tempDir } from '../profile/helpers.js';
import { MLA, SETTINGS, SHARD, relErrors, syntheticCache, writeFormat3Profile, type Geometry } from './format3-fixture.js';

const fp16 = (x: number) => halfToFloat(floatToHalf(x));

describe.each([
  ['MLA latent (values 24 wide, keys 8)', MLA],
  ['TP shard of cache layers [1, 3, 4] of 6', SHARD],
] as [string, Geometry][])('format 3 codec: %s', (_name, g) => {
  let profile: Profile;
  beforeAll(async () => {
    profile = await writeFormat3Profile(g, join(tempDir(), 'p'));
  }, 60_000);

  it('the profile is format 3 and carries its geometry into the codec', async () => {
    const m = profile.manifest;
    expect(m.format_version).toBe(3);
    expect(m.model.cache_layers).toEqual([1, 3, 4]);
    expect(m.model.model_layers).toBe(6);
    const codec = await codecFromProfile(profile);
    try {
      expect(codec.spec.valueDim).toBe(g.valueDim);
      expect(codec.spec.cacheLayers).toEqual([1, 3, 4]);
      expect(codec.spec.shard).toEqual(g.shard);
      for (const p of profile.plans)
        expect(p.dim).toBe(p.layers.length * g.kvHeads * (p.kind === 'key' ? g.headDim : (g.valueDim ?? g.headDim)));
    } finally {
      await codec.release();
    }
  });

  it("encode → decode: compressed tokens within 2× the profile's measured error, raw tokens within fp16 rounding", async () => {
    const codec = await codecFromProfile(profile);
    try {
      for (const [tokens, start] of [
        [400, 5],
        [300, 300],
      ]) {
        const cache = syntheticCache(g, tokens, 40 + tokens, start);
        const { blob, stats } = await codec.encode(cache);
        const { cache: out } = await codec.decode(blob);
        expect(out.valueDim).toBe(g.valueDim);
        expect(out.values[0].length).toBe(g.kvHeads * tokens * (g.valueDim ?? g.headDim));
        expect(out.keys[0].length).toBe(g.kvHeads * tokens * g.headDim);
        // Ratios count values at their own width.
        expect(stats.fp16Bytes).toBe(tokens * g.layers * g.kvHeads * (g.headDim + (g.valueDim ?? g.headDim)) * 2);
        expect(stats.fp16Bytes).toBe(fp16BytesPerToken(cache) * tokens);
        const t1 = tokens - SETTINGS.window;
        const r = profile.manifest.measured.rel_error;
        for (const kind of ['key', 'value'] as const) {
          const e = relErrors(cache, out, kind, SETTINGS.sink, t1);
          // The structure is rank 3 (keys) / 5 (values) plus 2% noise, so a wrong layout, width or
          // layer reconstructs noise: an error near 1. Static ranges clip a sequence's outlying
          // tokens, which moves one layer's error of one sequence by up to ~5× (measured): the
          // bound is on the mean over layers, each layer kept far below 1.
          for (const [l, x] of e.entries()) expect(x, `${kind} layer ${l}`).toBeLessThan(0.25);
          const mean = e.reduce((a, b) => a + b, 0) / e.length;
          expect(mean, `${kind} mean`).toBeLessThan(2 * r[`${kind}_mean`]);
          expect(r[`${kind}_mean`]).toBeLessThan(0.1);
        }
        // Sink and window tokens: fp16 copies of the input, keys 8 wide and values at their width.
        for (let l = 0; l < g.layers; l++) {
          for (const [arr, back, D] of [
            [cache.keys[l], out.keys[l], g.headDim],
            [cache.values[l], out.values[l], g.valueDim ?? g.headDim],
          ] as const) {
            for (let h = 0; h < g.kvHeads; h++) {
              for (const t of [0, SETTINGS.sink - 1, t1, tokens - 1]) {
                for (let d = 0; d < D; d++) {
                  const i = (h * tokens + t) * D + d;
                  expect(back[i]).toBe(fp16(arr[i]));
                }
              }
            }
          }
        }
      }
    } finally {
      await codec.release();
    }
  });

  it('the graphs on a worker thread give the same blob and the same decode as inline', async () => {
    const cache = syntheticCache(g, 120, 21);
    const inline = await codecFromProfile(profile);
    const threaded = await codecFromProfile(profile, { transformThread: true });
    try {
      const a = (await inline.encode(cache)).blob;
      const b = (await threaded.encode(cache)).blob;
      expect(Buffer.from(b).equals(Buffer.from(a))).toBe(true);
      const x = (await inline.decode(a)).cache;
      const y = (await threaded.decode(a)).cache;
      expect(y.values).toEqual(x.values);
      expect(y.keys).toEqual(x.keys);
    } finally {
      await inline.release();
      await threaded.release();
    }
  });

  it('a float16 cache decodes as float16 at both widths, values within fp16 range', async () => {
    const c = syntheticCache(g, 80, 31);
    const cache = { ...c, dtype: 'float16' as const, keys: c.keys.map((a) => a.map(fp16)), values: c.values.map((a) => a.map(fp16)) };
    const codec = await codecFromProfile(profile);
    try {
      const { cache: out } = await codec.decode((await codec.encode(cache)).blob);
      expect(out.dtype).toBe('float16');
      expect(out.values.map((a) => a.length)).toEqual(cache.values.map((a) => a.length));
      for (const a of [...out.keys, ...out.values]) expect(a.every((v) => Math.abs(v) <= 65504)).toBe(true);
      const e = relErrors(cache, out, 'value', SETTINGS.sink, 80 - SETTINGS.window);
      for (const x of e) expect(x).toBeLessThan(0.25);
    } finally {
      await codec.release();
    }
  });

  it('a cache whose values have another width is refused, naming both widths', async () => {
    const codec = await codecFromProfile(profile);
    try {
      const cache = syntheticCache(g, 40, 7);
      const wrong = {
        ...cache,
        valueDim: (g.valueDim ?? g.headDim) + 8,
        values: cache.values.map((v) => new Float32Array((v.length / (g.valueDim ?? g.headDim)) * ((g.valueDim ?? g.headDim) + 8))),
      };
      await expect(codec.encode(wrong)).rejects.toMatchObject({
        code: 'PROFILE_MISMATCH',
        message: expect.stringMatching(/value head dim/),
      });
    } finally {
      await codec.release();
    }
  });

  it('baselines quantize values at their own width', () => {
    const cache = syntheticCache(g, 64, 9);
    for (const name of ['fp16', 'int8', 'int4', 'kivi2'] as const) {
      const r = runBaseline(name, cache, { sinkTokens: 4, recentTokens: 8, groupSize: 8 });
      expect(r.cache.values[0].length).toBe(cache.values[0].length);
      const e = relErrors(cache, r.cache, 'value', 0, 64);
      for (const x of e) expect(x).toBeLessThan(name === 'kivi2' ? 0.5 : 0.2);
      expect(r.bytes).toBe(baselineBytes(name, cache, { sinkTokens: 4, recentTokens: 8, groupSize: 8 }));
    }
    const fp = baselineBytes('fp16', cache);
    expect(fp).toBe(fp16BytesPerToken(cache) * 64);
    expect(
      rawSectionBytes({ layers: g.layers, kvHeads: g.kvHeads, headDim: g.headDim, sink: 4, window: 8, rawFloat32: false }, g.valueDim),
    ).toBe(g.layers * g.kvHeads * 12 * (g.headDim + (g.valueDim ?? g.headDim)) * 2);
  });
});
