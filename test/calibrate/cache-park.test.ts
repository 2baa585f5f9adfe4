// Held-out caches parked on disk (src/calibrate/cache-park.ts): read back bit for bit, whole or
// only the arrays a basis needs, one at a time; the folder is kvtc's own and goes on dispose.
import { readdirSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { HeldCaches, ParkedCaches, cacheSet } from '../../src/calibrate/cache-park.js';
import type { KvCache } from '../../src/model/types.js';
import { mulberry32 } from '../../src/random.js';
import { tempDir } from '../model/helpers.js';

function cache(seed: number, tokens: number, valueDim?: number): KvCache {
  const r = mulberry32(seed);
  const layers = 3;
  const kvHeads = 2;
  const headDim = 4;
  const vd = valueDim ?? headDim;
  const arr = (n: number) => Float32Array.from({ length: n }, () => r() * 2 - 1);
  return {
    layers,
    kvHeads,
    headDim,
    ...(valueDim !== undefined ? { valueDim } : {}),
    tokens,
    dtype: 'float32',
    startPosition: seed,
    keys: Array.from({ length: layers }, () => arr(kvHeads * tokens * headDim)),
    values: Array.from({ length: layers }, () => arr(kvHeads * tokens * vd)),
  };
}

describe('ParkedCaches', () => {
  it('gives back each cache exactly as it was added, whole or only the picked arrays', async () => {
    const root = tempDir('kvtc-park-test-');
    const caches = [cache(1, 5), cache(2, 7, 6), cache(3, 1)];
    const park = await ParkedCaches.create(root);
    try {
      for (const c of caches) await park.add(c);
      expect(park.count).toBe(3);
      expect(park.meta.map((m) => m.tokens)).toEqual([5, 7, 1]);
      expect(park.bytes).toBe(caches.reduce((a, c) => a + 4 * [...c.keys, ...c.values].reduce((b, x) => b + x.length, 0), 0));
      expect(readdirSync(root)).toHaveLength(1);
      for (const [i, c] of caches.entries()) expect(await park.get(i)).toEqual(c);
      expect(await park.restore()).toEqual(caches);
      // Only the value arrays of layers 0 and 2 of cache 1: the others are empty, the shape kept.
      const picked = await park.get(1, { kind: 'value', layers: [2, 0] });
      expect(picked.values[0]).toEqual(caches[1].values[0]);
      expect(picked.values[2]).toEqual(caches[1].values[2]);
      expect(picked.values[1].length).toBe(0);
      expect(picked.keys.every((k) => k.length === 0)).toBe(true);
      expect({ ...picked, keys: [], values: [] }).toEqual({ ...caches[1], keys: [], values: [] });
      await expect(park.get(3)).rejects.toThrow(/no cache 3/);
    } finally {
      await park.dispose();
    }
    expect(readdirSync(root)).toEqual([]);
    await park.dispose(); // idempotent
    await expect(park.get(0)).rejects.toThrow(/already removed/);
  });
});

describe('cacheSet', () => {
  it('wraps caches in memory with the same interface, and drop lets them go', async () => {
    const caches = [cache(4, 3), cache(5, 2)];
    const set = cacheSet(caches);
    expect(set).toBeInstanceOf(HeldCaches);
    expect(set.meta.map((m) => m.tokens)).toEqual([3, 2]);
    expect(await set.get(1, { kind: 'key', layers: [0] })).toBe(caches[1]);
    set.drop();
    expect(set.meta).toEqual([]);
    const park = await ParkedCaches.create(tempDir('kvtc-park-test-'));
    expect(cacheSet(park)).toBe(park);
    await park.dispose();
  });
});
