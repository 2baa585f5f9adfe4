import { describe, expect, it } from 'vitest';
import { STORED_TYPES } from '../../src/codec/quant.js';
import { fitStaticRange, staticSquaredError } from '../../src/fit/static-range.js';
import { rng } from '../codec/rng.js';

describe('static-range search', () => {
  it('fitStaticRange beats the full min/max range and orders the types', () => {
    const { normal } = rng(7);
    // heavy-ish tails: Student-t-like mixture
    const v = Float64Array.from({ length: 1000 }, () => normal() * (Math.abs(normal()) > 2.5 ? 6 : 1)); // <= 1024: fitted on all values
    let mn = Infinity, mx = -Infinity;
    for (const x of v) { mn = Math.min(mn, x); mx = Math.max(mx, x); }
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
