import { describe, expect, it } from 'vitest';
import { halfToFloat } from '../../src/io/fp16.js';
import { type StoredType, intLevels, staticCode } from '../../src/codec/quant.js';
import { dequantizeGroup, quantizeGroup } from './quant-reference.js';
import type { QuantGroup } from '../../src/codec/types.js';
import { rng } from './rng.js';

const tokens = 200,
  r = 12;
function coeffs(seed: number): Float32Array {
  const { normal } = rng(seed);
  const C = new Float32Array(tokens * r);
  for (let t = 0; t < tokens; t++) for (let j = 0; j < r; j++) C[t * r + j] = (normal() * 10) / (1 + j) + (j === 3 ? 40 : 0);
  return C;
}

function roundTrip(C: Float32Array, g: QuantGroup, lo = new Float32Array(r), hi = new Float32Array(r)) {
  const w = g.end - g.start;
  const codes = new Uint8Array(tokens * w);
  const scales = new Uint16Array(tokens);
  const offsets = new Uint16Array(tokens);
  quantizeGroup(C, tokens, r, g, lo, hi, codes, scales, offsets);
  const out = new Float32Array(tokens * r);
  dequantizeGroup(codes, tokens, r, g, lo, hi, scales, offsets, out);
  return { codes, scales, offsets, out };
}

function mse(C: Float32Array, out: Float32Array, g: QuantGroup): number {
  let e = 0;
  for (let t = 0; t < tokens; t++) for (let j = g.start; j < g.end; j++) e += (C[t * r + j] - out[t * r + j]) ** 2;
  return e / (tokens * (g.end - g.start));
}

describe('dynamic quantization', () => {
  for (const type of ['int2', 'int4', 'int8'] as StoredType[]) {
    it(`${type}: codes in range, error <= scale/2 per element with the stored fp16 scale`, () => {
      const C = coeffs(1);
      const g: QuantGroup = { start: 2, end: 9, type, mode: 'dynamic' };
      const { codes, scales, out } = roundTrip(C, g);
      for (const c of codes) expect(c).toBeLessThanOrEqual(intLevels(type));
      for (let t = 0; t < tokens; t++) {
        const sc = halfToFloat(scales[t]);
        expect(sc).toBeGreaterThan(0);
        for (let j = g.start; j < g.end; j++) expect(Math.abs(C[t * r + j] - out[t * r + j])).toBeLessThanOrEqual(sc / 2 + 1e-6 * sc);
      }
      // columns outside the group untouched
      expect(out[0]).toBe(0);
      expect(out[r - 1]).toBe(0);
    });
  }

  it('fp8: error within half an e4m3 step of (x - offset) / scale', () => {
    const C = coeffs(2);
    const g: QuantGroup = { start: 0, end: 12, type: 'fp8', mode: 'dynamic' };
    const { out, scales, offsets } = roundTrip(C, g);
    for (let t = 0; t < tokens; t++) {
      const sc = halfToFloat(scales[t]);
      const off = halfToFloat(offsets[t]);
      for (let j = 0; j < r; j++) {
        const u = (C[t * r + j] - off) / sc;
        expect(Math.abs(u)).toBeLessThanOrEqual(448);
        // 3 mantissa bits: half step 2^-4 relative; subnormal half step 2^-10
        const bound = Math.max(Math.abs(u) * 2 ** -4, 2 ** -10) * sc;
        expect(Math.abs(C[t * r + j] - out[t * r + j])).toBeLessThanOrEqual(bound * (1 + 1e-6) + 1e-6);
      }
    }
  });

  it('error falls as bits rise', () => {
    const C = coeffs(3);
    const errs = (['int2', 'int4', 'int8'] as StoredType[]).map((type) =>
      mse(C, roundTrip(C, { start: 0, end: r, type, mode: 'dynamic' }).out, { start: 0, end: r, type, mode: 'dynamic' }),
    );
    expect(errs[1]).toBeLessThan(errs[0] / 10);
    expect(errs[2]).toBeLessThan(errs[1] / 100);
  });

  it('a constant group (scale 0) decodes to the fp16 offset', () => {
    const C = new Float32Array(tokens * r).fill(3.25);
    const g: QuantGroup = { start: 0, end: 4, type: 'int4', mode: 'dynamic' };
    const { out, scales } = roundTrip(C, g);
    expect(scales[0]).toBe(0);
    expect(out[0]).toBe(3.25);
  });
});

describe('static quantization', () => {
  it('uses per-component lo/hi and clips outside the range', () => {
    const C = coeffs(4);
    const lo = new Float32Array(r).fill(-5);
    const hi = new Float32Array(r).fill(5);
    const g: QuantGroup = { start: 0, end: r, type: 'int4', mode: 'static' };
    const { out } = roundTrip(C, g, lo, hi);
    const step = 10 / 15;
    for (let i = 0; i < C.length; i++) {
      const clipped = Math.min(5, Math.max(-5, C[i]));
      expect(Math.abs(clipped - out[i])).toBeLessThanOrEqual(step / 2 + 1e-5);
    }
  });
});

describe('staticCode (branch-free static int quantizer)', () => {
  const reference = (x: number, off: number, sc: number, levels: number) => {
    const u = (x - off) / sc;
    if (Number.isNaN(u)) return 0;
    const c = Math.round(u);
    return c <= 0 ? 0 : c > levels ? levels : c;
  };
  it('equals clamp(Math.round((x − off) / sc), 0, levels) on edge cases and random values', () => {
    const { normal } = rng(5);
    const edges = [
      0,
      0.49999999999999994,
      0.5,
      1.5,
      2.5,
      -0.5,
      -0.49999999999999994,
      -1e-300,
      3,
      3.4999,
      3.5,
      1e12,
      -1e12,
      2 ** 31,
      -(2 ** 31),
      Infinity,
      -Infinity,
      NaN,
    ];
    for (const levels of [3, 15, 255]) {
      for (const x of edges) expect(staticCode(x, 0, 1, levels)).toBe(reference(x, 0, 1, levels));
      for (let i = 0; i < 20000; i++) {
        const x = normal() * levels;
        expect(staticCode(x, -levels / 3, 0.7, levels)).toBe(reference(x, -levels / 3, 0.7, levels));
      }
      // a zero scale is passed as ∞ and stores code 0
      for (const x of [1, -1, 0, 1e30, Infinity, -Infinity]) expect(staticCode(x, 0, Infinity, levels)).toBe(0);
    }
  });
});
