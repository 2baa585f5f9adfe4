// --grouping auto's choice among fitted candidates (calibrate.ts groupingBeats): the smallest
// tuning score wins, except that a candidate storing more basis floats must win by more than
// AUTO_GROUPING_MIN_GAIN, the case measured on SmolLM2-135M (docs/real-models.md).
import { describe, expect, it } from 'vitest';
import { AUTO_GROUPING_MIN_GAIN, groupingBeats, storedBasisFloats } from '../../src/calibrate/calibrate.js';

describe('grouping auto: score against profile size', () => {
  it("SmolLM2's measured 16x case: all layers 0.6% better than 16 per basis at twice the floats is not kept", () => {
    // Tuning errors (key, value %) and profile sizes (MB, which grow with the stored floats) from docs/real-models.md.
    const sixteen = { score: (7.59 + 23.7) / 2, floats: 54 };
    const all = { score: (7.24 + 23.87) / 2, floats: 104 };
    expect(groupingBeats(all, sixteen)).toBe(false);
    // At 64x the all-layer basis was 4.1% better: kept despite its size.
    expect(groupingBeats({ score: (14.53 + 42.31) / 2, floats: 2 }, { score: (15.79 + 44.64) / 2, floats: 1 })).toBe(true);
  });

  it('a better score with no larger bases always wins; a worse or equal one never does', () => {
    const best = { score: 0.1, floats: 1000 };
    expect(groupingBeats({ score: 0.0999, floats: 1000 }, best)).toBe(true);
    expect(groupingBeats({ score: 0.0999, floats: 10 }, best)).toBe(true);
    expect(groupingBeats({ score: 0.1, floats: 10 }, best)).toBe(false);
    expect(groupingBeats({ score: 0.2, floats: 10 }, best)).toBe(false);
    // Larger bases: the gain must exceed the margin.
    expect(groupingBeats({ score: 0.1 * (1 - AUTO_GROUPING_MIN_GAIN / 2), floats: 2000 }, best)).toBe(false);
    expect(groupingBeats({ score: 0.1 * (1 - 2 * AUTO_GROUPING_MIN_GAIN), floats: 2000 }, best)).toBe(true);
    expect(groupingBeats({ score: Number.NaN, floats: 10 }, best)).toBe(false);
  });

  it('storedBasisFloats sums p × kept rank over the plans', () => {
    expect(storedBasisFloats([])).toBe(0);
    expect(
      storedBasisFloats([
        { dim: 64, rank: 10 },
        { dim: 128, rank: 3 },
      ]),
    ).toBe(64 * 10 + 128 * 3);
  });
});
