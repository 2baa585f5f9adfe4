import { describe, expect, it } from 'vitest';
import { floatArrayToHalf, floatToHalf, halfArrayToFloat, halfToFloat } from '../../src/io/fp16.js';

/** Reference: the nearest half by exhaustive search over the finite halves (ties to even). */
function nearestHalf(v: number): number {
  if (Number.isNaN(v)) return 0x7e00;
  const sign = v < 0 || Object.is(v, -0) ? 0x8000 : 0;
  const a = Math.abs(v);
  if (a >= 65520) return sign | 0x7c00; // half-way between 65504 and the next step rounds to ∞
  let best = 0;
  for (let h = 1; h < 0x7c00; h++) {
    const d = Math.abs(halfToFloat(h) - a);
    const db = Math.abs(halfToFloat(best) - a);
    if (d < db || (d === db && (h & 1) === 0)) best = h;
  }
  return sign | best;
}

describe('floatToHalf', () => {
  it('rounds float64 inputs between representable halves once (no double rounding through float32)', () => {
    // 1 + 2⁻¹¹ is half-way between 1 and 1 + 2⁻¹⁰; 2⁻⁴⁰ past it the nearest half is 1 + 2⁻¹⁰.
    expect(halfToFloat(floatToHalf(1 + 2 ** -11 + 2 ** -40))).toBe(1 + 2 ** -10);
    expect(halfToFloat(floatToHalf(1 + 2 ** -11 - 2 ** -40))).toBe(1);
    expect(halfToFloat(floatToHalf(-(1 + 2 ** -11 + 2 ** -40)))).toBe(-(1 + 2 ** -10));
    // exact ties still go to even
    expect(halfToFloat(floatToHalf(1 + 2 ** -11))).toBe(1);
    expect(halfToFloat(floatToHalf(1 + 3 * 2 ** -11))).toBe(1 + 2 ** -9);
    // just below the overflow tie stays finite; a subnormal tie nudged up rounds up
    expect(halfToFloat(floatToHalf(65520 - 2 ** -30))).toBe(65504);
    expect(floatToHalf(65520)).toBe(0x7c00);
    expect(floatToHalf(2 ** -25 + 2 ** -60)).toBe(1);
    expect(floatToHalf(2 ** -25)).toBe(0);
  });

  it('equals the exhaustive nearest-even reference on ties, near-ties and random values', () => {
    let seed = 12345;
    const rand = () => (seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) / 2 ** 32;
    const cases: number[] = [0, -0, 1, -1, 65504, -65504, 6.1e-5, 5.96e-8, 2 ** -24, 3 * 2 ** -26];
    for (let i = 0; i < 300; i++) {
      const h = 1 + Math.floor(rand() * 0x7bfe);
      const mid = (halfToFloat(h) + halfToFloat(h + 1)) / 2;
      for (const d of [0, 2 ** -45, -(2 ** -45)]) cases.push(mid * (1 + d), -mid * (1 + d));
      cases.push((rand() - 0.5) * 2 ** (Math.floor(rand() * 40) - 24));
    }
    for (const v of cases) expect(floatToHalf(v), `floatToHalf(${v})`).toBe(nearestHalf(v));
  });

  it('keeps infinities, NaN and signed zero', () => {
    expect(floatToHalf(Infinity)).toBe(0x7c00);
    expect(floatToHalf(-Infinity)).toBe(0xfc00);
    expect(Number.isNaN(halfToFloat(floatToHalf(NaN)))).toBe(true);
    expect(floatToHalf(-0)).toBe(0x8000);
  });
});

describe('half arrays', () => {
  it('round-trip every finite half exactly', () => {
    const all = Uint16Array.from({ length: 0x7c00 }, (_, i) => i);
    expect(floatArrayToHalf(halfArrayToFloat(all))).toEqual(all);
  });
});
