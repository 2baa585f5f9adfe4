import { describe, expect, it } from 'vitest';
import { FP8_TO_FLOAT, floatToFp8, fp8MagnitudeCode, fp8MagnitudeCodeTable, fp8ToFloat } from '../../src/codec/fp8.js';

describe('fp8 e4m3fn', () => {
  it('decodes known codes', () => {
    expect(fp8ToFloat(0x00)).toBe(0);
    expect(fp8ToFloat(0x38)).toBe(1); // exponent 7 = bias
    expect(fp8ToFloat(0x7e)).toBe(448);
    expect(fp8ToFloat(0xfe)).toBe(-448);
    expect(fp8ToFloat(0x01)).toBe(2 ** -9); // smallest subnormal
    expect(fp8ToFloat(0x08)).toBe(2 ** -6); // smallest normal
    expect(Number.isNaN(fp8ToFloat(0x7f))).toBe(true);
    expect(Number.isNaN(fp8ToFloat(0xff))).toBe(true);
  });

  it('round-trips all 256 codes through the table', () => {
    for (let c = 0; c < 256; c++) {
      const v = FP8_TO_FLOAT[c];
      if (Number.isNaN(v)) expect(floatToFp8(v)).toBe(0x7f);
      else expect(floatToFp8(v)).toBe(c);
    }
  });

  it('bit-pattern encoder agrees with the table search (midpoints, neighbours, random)', () => {
    const probes: number[] = [0, 1e-30, 447.99, 448, 449, 1e9, Infinity];
    for (let c = 0; c < 126; c++) {
      const m = (FP8_TO_FLOAT[c] + FP8_TO_FLOAT[c + 1]) / 2;
      probes.push(m, m * (1 + 2 ** -50), m * (1 - 2 ** -50), FP8_TO_FLOAT[c]);
    }
    for (let i = 0; i < 20000; i++) probes.push(Math.exp(Math.random() * 20 - 14));
    for (const a of probes) expect(fp8MagnitudeCode(a)).toBe(fp8MagnitudeCodeTable(a));
  });

  it('rounds to nearest, ties to even, and saturates', () => {
    expect(fp8ToFloat(floatToFp8(1.0625))).toBe(1); // tie between 1 (m=0) and 1.125 (m=1)
    expect(fp8ToFloat(floatToFp8(1.1875))).toBe(1.25); // tie between 1.125 (m=1) and 1.25 (m=2)
    expect(fp8ToFloat(floatToFp8(1.07))).toBe(1.125);
    expect(fp8ToFloat(floatToFp8(1e6))).toBe(448);
    expect(fp8ToFloat(floatToFp8(-500))).toBe(-448);
    expect(fp8ToFloat(floatToFp8(2 ** -11))).toBe(0); // below half the smallest subnormal
    // exhaustive: encode picks the nearest representable value
    const finite = Array.from(FP8_TO_FLOAT).filter((v) => !Number.isNaN(v));
    for (let x = -460; x <= 460; x += 0.37) {
      const got = fp8ToFloat(floatToFp8(x));
      const best = Math.min(...finite.map((v) => Math.abs(v - Math.max(-448, Math.min(448, x)))));
      expect(Math.abs(got - Math.max(-448, Math.min(448, x)))).toBeCloseTo(best, 9);
    }
  });
});
