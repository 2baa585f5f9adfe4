import { describe, expect, it } from 'vitest';
import { STORED_TYPES } from '../../src/codec/quant.js';
import { crossValidatedRange, fitStaticRange, minMaxRange, rangeCandidates, staticSquaredError } from '../../src/fit/static-range.js';
import { mulberry32 } from '../../src/random.js';
import { rng } from '../codec/rng.js';

describe('static-range search', () => {
  it('fitStaticRange beats the full min/max range and orders the types', () => {
    const { normal } = rng(7);
    // heavy-ish tails: Student-t-like mixture
    const v = Float64Array.from({ length: 1000 }, () => normal() * (Math.abs(normal()) > 2.5 ? 6 : 1)); // <= 1024: fitted on all values
    let mn = Infinity,
      mx = -Infinity;
    for (const x of v) {
      mn = Math.min(mn, x);
      mx = Math.max(mx, x);
    }
    const errs: Record<string, number> = {};
    for (const type of STORED_TYPES) {
      const { lo, hi } = fitStaticRange(v, type);
      expect(lo).toBeLessThan(hi);
      errs[type] = staticSquaredError(v, v.length, lo, hi, type);
      expect(errs[type]).toBeLessThanOrEqual(staticSquaredError(v, v.length, mn, mx, type) * (1 + 1e-12));
    }
    expect(errs.int4).toBeLessThan(errs.int2);
    expect(errs.int8).toBeLessThan(errs.int4);
    expect(errs.fp8).toBeLessThan(errs.int4);
  });

  it('keeps the true extremes when fitting on a subsample', () => {
    const { normal } = rng(8);
    const v = Float64Array.from({ length: 5000 }, normal);
    v[4999] = 40; // one outlier the strided subsample would miss
    // clipping the outlier to ~4 would cost ~36² ≈ 1300; a range to 40 costs ~12 in rounding
    const { lo, hi } = fitStaticRange(v, 'int8');
    expect(hi).toBeGreaterThan(30);
    expect(staticSquaredError(v, v.length, lo, hi, 'int8')).toBeLessThan(50);
  });
});

describe('crossValidatedRange and minMaxRange', () => {
  const sample = (n: number, seed: number, tail: number) => {
    const r = mulberry32(seed);
    // Gaussian body (Box–Muller) with rare large outliers.
    return Float64Array.from({ length: n }, () => {
      const g = Math.sqrt(-2 * Math.log(1 - r())) * Math.cos(2 * Math.PI * r());
      return r() < tail ? g * 20 : g;
    });
  };
  const choose = (v: Float64Array, type: 'int2' | 'int4' | 'int8' | 'fp8') => {
    const h = v.length / 2;
    const a = v.subarray(0, h);
    const b = v.subarray(h);
    return crossValidatedRange(
      rangeCandidates(v),
      v,
      { cands: rangeCandidates(a), values: a },
      { cands: rangeCandidates(b), values: b },
      type,
    );
  };

  it('minMaxRange covers every value after float32 rounding', () => {
    const v = Float64Array.from([0.1, -0.30000000000000004, 1 / 3, 7.1]);
    const { lo, hi } = minMaxRange(v);
    expect(lo).toBe(Math.fround(lo));
    expect(hi).toBe(Math.fround(hi));
    expect(lo).toBeLessThanOrEqual(-0.30000000000000004);
    expect(hi).toBeGreaterThanOrEqual(7.1);
    expect(minMaxRange(new Float64Array(0))).toEqual({ lo: 0, hi: 0 });
  });

  it('keeps the tuned clip where it wins out of fold (int2 on heavy tails) and min/max where it does not', () => {
    const v = sample(4000, 1, 0.01);
    const int2 = choose(v, 'int2');
    expect(int2.source).toBe('tuned');
    // The tuned int2 clip is much narrower than the data's range.
    expect(int2.hi - int2.lo).toBeLessThan(0.5 * (Math.max(...v) - Math.min(...v)));
    // A min/max choice is exactly the values' min/max range.
    for (const type of ['int2', 'int4', 'int8', 'fp8'] as const) {
      const c = choose(v, type);
      const mm = minMaxRange(v);
      if (c.source === 'minmax') expect([c.lo, c.hi]).toEqual([mm.lo, mm.hi]);
    }
    // Uniform data with no tails: min/max is the right clip for int8, and cross-validation keeps it.
    const r = mulberry32(5);
    const u = Float64Array.from({ length: 4000 }, () => r() * 2 - 1);
    expect(choose(u, 'int8').source).toBe('minmax');
  });
});
