import { describe, expect, it } from 'vitest';
import { featureDim, gatherFeatures } from '../../src/fit/features.js';
import { applyRope } from '../rope/rope-reference.js';
import { scatterFeatures } from './features-reference.js';
import type { KvCache, RopeSpec } from '../../src/model/types.js';
import { rng } from '../codec/rng.js';

const rope: RopeSpec = { theta: 10000, rotaryDim: 8, layout: 'half' };

function makeCache(): { cache: KvCache; rawKeys: Float32Array[] } {
  const layers = 3,
    kvHeads = 2,
    headDim = 8,
    tokens = 10;
  const { normal } = rng(5);
  const rawKeys: Float32Array[] = [];
  const keys: Float32Array[] = [];
  const values: Float32Array[] = [];
  for (let l = 0; l < layers; l++) {
    const k = Float32Array.from({ length: kvHeads * tokens * headDim }, normal);
    rawKeys.push(k);
    keys.push(applyRope(k, kvHeads, tokens, headDim, rope, 20, new Float32Array(k.length)));
    values.push(Float32Array.from({ length: kvHeads * tokens * headDim }, normal));
  }
  return { cache: { layers, kvHeads, headDim, tokens, dtype: 'float32', keys, values, startPosition: 20 }, rawKeys };
}

describe('features', () => {
  it('gathers values token-major with feature index (li*kvHeads + h)*headDim + d', () => {
    const { cache } = makeCache();
    const sel = { kind: 'value' as const, layers: [2, 0] };
    const X = gatherFeatures(cache, sel, undefined, 3, 7);
    const p = featureDim(cache, sel.layers);
    expect(p).toBe(32);
    expect(X.length).toBe(4 * p);
    for (let t = 3; t < 7; t++)
      for (let li = 0; li < 2; li++)
        for (let h = 0; h < 2; h++)
          for (let d = 0; d < 8; d++) {
            expect(X[(t - 3) * p + (li * 2 + h) * 8 + d]).toBe(cache.values[sel.layers[li]][(h * 10 + t) * 8 + d]);
          }
  });

  it('un-rotates keys while gathering and re-rotates them while scattering', () => {
    const { cache, rawKeys } = makeCache();
    const sel = { kind: 'key' as const, layers: [1] };
    const X = gatherFeatures(cache, sel, rope, 0, 10);
    for (let t = 0; t < 10; t++)
      for (let h = 0; h < 2; h++)
        for (let d = 0; d < 8; d++) {
          expect(X[t * 16 + h * 8 + d]).toBeCloseTo(rawKeys[1][(h * 10 + t) * 8 + d], 5);
        }
    const before = Float32Array.from(cache.keys[1]);
    cache.keys[1].fill(0);
    scatterFeatures(X, cache, sel, rope, 0, 10);
    for (let i = 0; i < before.length; i++) expect(cache.keys[1][i]).toBeCloseTo(before[i], 5);
  });

  it('scatters a sub-range only', () => {
    const { cache } = makeCache();
    const sel = { kind: 'value' as const, layers: [0, 1, 2] };
    const X = gatherFeatures(cache, sel, undefined, 2, 5).fill(9);
    scatterFeatures(X, cache, sel, undefined, 2, 5);
    expect(cache.values[0][(0 * 10 + 1) * 8]).not.toBe(9);
    expect(cache.values[2][(1 * 10 + 4) * 8 + 7]).toBe(9);
    expect(cache.values[2][(1 * 10 + 5) * 8]).not.toBe(9);
  });

  it('requires a RopeSpec for keys', () => {
    const { cache } = makeCache();
    expect(() => gatherFeatures(cache, { kind: 'key', layers: [0] }, undefined)).toThrow(/RopeSpec/);
  });
});
