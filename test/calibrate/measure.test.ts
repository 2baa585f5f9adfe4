import { describe, expect, it } from 'vitest';
import { BOOTSTRAP_MIN_SEQUENCES, bootstrapRelError } from '../../src/calibrate/measure.js';
import { mulberry32 } from '../../src/random.js';

/** Per-sequence sums of L layers whose relative error is about `rel`, with sequence-to-sequence spread `spread`. */
function sequences(n: number, L: number, rel: number, spread: number, seed: number): { num: Float64Array[]; den: Float64Array[] } {
  const r = mulberry32(seed);
  const num: Float64Array[] = [];
  const den: Float64Array[] = [];
  for (let q = 0; q < n; q++) {
    const d = Float64Array.from({ length: L }, () => 1000 * (0.5 + r()));
    const e = (rel * (1 + spread * (r() - 0.5))) ** 2;
    num.push(Float64Array.from(d, (x) => x * e));
    den.push(d);
  }
  return { num, den };
}

const pooled = (num: Float64Array[], den: Float64Array[], L: number) => {
  let s = 0;
  for (let l = 0; l < L; l++) s += Math.sqrt(num.reduce((a, x) => a + x[l], 0) / den.reduce((a, x) => a + x[l], 0));
  return s / L;
};

describe('bootstrapRelError', () => {
  it('brackets the pooled error, narrows as sequences are added, and is reproducible', () => {
    const small = sequences(8, 5, 0.1, 0.4, 1);
    const large = sequences(128, 5, 0.1, 0.4, 1);
    const a = bootstrapRelError(small.num, small.den, 5)!;
    const b = bootstrapRelError(large.num, large.den, 5)!;
    for (const [ci, s] of [
      [a, small],
      [b, large],
    ] as const) {
      const x = pooled(s.num, s.den, 5);
      expect(ci[0]).toBeLessThanOrEqual(x);
      expect(ci[1]).toBeGreaterThanOrEqual(x);
    }
    // Width falls about as 1/sqrt(n): 16x the sequences, about a quarter of the width.
    const wa = a[1] - a[0];
    const wb = b[1] - b[0];
    expect(wb).toBeLessThan(wa / 2.5);
    expect(wb).toBeGreaterThan(wa / 6);
    expect(bootstrapRelError(small.num, small.den, 5)).toEqual(a);
  });

  it('is zero-width when every sequence has the same error, and absent below the minimum number of sequences', () => {
    const same = sequences(10, 3, 0.2, 0, 2);
    const ci = bootstrapRelError(same.num, same.den, 3)!;
    expect(ci[1] - ci[0]).toBeLessThan(1e-12);
    expect(ci[0]).toBeCloseTo(0.2, 12);
    const few = sequences(BOOTSTRAP_MIN_SEQUENCES - 1, 3, 0.2, 0.5, 3);
    expect(bootstrapRelError(few.num, few.den, 3)).toBeUndefined();
  });
});
