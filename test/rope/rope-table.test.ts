import { describe, expect, it } from 'vitest';
import { applyRope, undoRope } from './rope-reference.js';
import { layerTables, RopeTable } from '../../src/rope/rope-table.js';
import { ropeInvFreq } from '../../src/rope/freqs.js';
import type { RopeSpec } from '../../src/model/types.js';
import { rng } from '../codec/rng.js';

const specs: [string, RopeSpec][] = [
  ['half', { theta: 10000, rotaryDim: 16, layout: 'half' }],
  ['interleaved', { theta: 10000, rotaryDim: 16, layout: 'interleaved' }],
  ['half partial', { theta: 500000, rotaryDim: 8, layout: 'half' }],
  ['interleaved partial', { theta: 10000, rotaryDim: 4, layout: 'interleaved' }],
  [
    'llama3',
    {
      theta: 500000,
      rotaryDim: 16,
      layout: 'half',
      scaling: { type: 'llama3', factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 64 },
    },
  ],
  ['linear', { theta: 10000, rotaryDim: 16, layout: 'interleaved', scaling: { type: 'linear', factor: 4 } }],
];

function randomKeys(n: number, seed: number): Float32Array {
  const { normal } = rng(seed);
  return Float32Array.from({ length: n }, normal);
}

describe('RoPE', () => {
  const kvHeads = 3,
    tokens = 40,
    headDim = 16;
  for (const [name, rope] of specs) {
    it(`undo ∘ apply is the identity (${name})`, () => {
      const x = randomKeys(kvHeads * tokens * headDim, 1);
      const y = applyRope(x, kvHeads, tokens, headDim, rope, 1000, new Float32Array(x.length));
      const z = undoRope(y, kvHeads, tokens, headDim, rope, 1000, new Float32Array(x.length));
      for (let i = 0; i < x.length; i++) expect(Math.abs(z[i] - x[i])).toBeLessThan(1e-5);
      // in place
      applyRope(y, kvHeads, tokens, headDim, rope, 1000);
      undoRope(y, kvHeads, tokens, headDim, rope, 1000);
      undoRope(y, kvHeads, tokens, headDim, rope, 1000);
      for (let i = 0; i < x.length; i++) expect(Math.abs(y[i] - x[i])).toBeLessThan(1e-5);
    });

    it(`one content vector at two positions un-rotates to itself (${name})`, () => {
      const v = randomKeys(headDim, 2);
      // 1 head, 2 tokens: the same vector rotated at positions 7 and 4093
      const a = new Float32Array(headDim * 1);
      const b = new Float32Array(headDim * 1);
      applyRope(v, 1, 1, headDim, rope, 7, a);
      applyRope(v, 1, 1, headDim, rope, 4093, b);
      expect(Math.max(...a.map((x, i) => Math.abs(x - b[i])))).toBeGreaterThan(1e-3);
      undoRope(a, 1, 1, headDim, rope, 7);
      undoRope(b, 1, 1, headDim, rope, 4093);
      for (let i = 0; i < headDim; i++) {
        expect(a[i]).toBeCloseTo(v[i], 5);
        expect(b[i]).toBeCloseTo(v[i], 5);
      }
    });

    it(`matches complex multiplication (${name})`, () => {
      const x = randomKeys(kvHeads * tokens * headDim, 3);
      const start = 123;
      const y = applyRope(x, kvHeads, tokens, headDim, rope, start, new Float32Array(x.length));
      const inv = ropeInvFreq(rope);
      const half = rope.rotaryDim / 2;
      for (let h = 0; h < kvHeads; h++) {
        for (let t = 0; t < tokens; t++) {
          const o = (h * tokens + t) * headDim;
          for (let i = 0; i < half; i++) {
            const [ia, ib] = rope.layout === 'interleaved' ? [2 * i, 2 * i + 1] : [i, i + half];
            // (a + ib)·e^{iθ}
            const th = (start + t) * inv[i];
            const re = x[o + ia] * Math.cos(th) - x[o + ib] * Math.sin(th);
            const im = x[o + ia] * Math.sin(th) + x[o + ib] * Math.cos(th);
            expect(y[o + ia]).toBeCloseTo(re, 5);
            expect(y[o + ib]).toBeCloseTo(im, 5);
          }
          for (let d = rope.rotaryDim; d < headDim; d++) expect(y[o + d]).toBe(x[o + d]);
        }
      }
    });
  }

  it('rejects a rotaryDim that does not fit the head', () => {
    expect(() => applyRope(new Float32Array(8), 1, 1, 8, { theta: 1e4, rotaryDim: 10, layout: 'half' }, 0)).toThrow(/rotaryDim/);
  });
});

describe('RopeTable with an attention factor, and one table per distinct layer RoPE', () => {
  it('apply multiplies cos and sin by the factor, undo divides (transformers attention_scaling)', () => {
    const rope: RopeSpec = { theta: 10000, rotaryDim: 4, layout: 'half', attentionFactor: 1.5 };
    const x = Float32Array.from([1, 2, 3, 4, 5, 6]);
    const t = new RopeTable(rope, 6).at(3);
    const y = new Float32Array(6);
    t.rotate(x, 0, y, 0, 1);
    const inv = ropeInvFreq(rope);
    // pairs (0, 2), (1, 3); dims 4, 5 pass through unscaled
    for (const i of [0, 1]) {
      const c = Math.cos(3 * inv[i]) * 1.5;
      const s = Math.sin(3 * inv[i]) * 1.5;
      expect(y[i]).toBeCloseTo(x[i] * c - x[i + 2] * s, 5);
      expect(y[i + 2]).toBeCloseTo(x[i + 2] * c + x[i] * s, 5);
    }
    expect([y[4], y[5]]).toEqual([5, 6]);
    const z = new Float32Array(6);
    t.rotate(y, 0, z, 0, -1);
    for (let i = 0; i < 6; i++) expect(z[i]).toBeCloseTo(x[i], 5);
  });

  it('layerTables shares a table between layers with the same RoPE and gives null to layers without', () => {
    const a: RopeSpec = { theta: 10000, rotaryDim: 8, layout: 'half' };
    const b: RopeSpec = { theta: 500000, rotaryDim: 8, layout: 'interleaved' };
    const t = layerTables([a, null, b, a], 8, 100);
    expect(t[1]).toBeNull();
    expect(t[0]).toBe(t[3]);
    expect(t[0]).not.toBe(t[2]);
    expect(t[2]!.rope).toBe(b);
  });
});
