import { describe, expect, it } from 'vitest';
import { BUDGET_SCALE_STEPS, BUDGET_SCALE_TOLERANCE, searchBudgetScale } from '../../src/calibrate/budget-scale.js';

/** A counting measureAt. */
function counted(f: (scale: number) => number) {
  const calls: number[] = [];
  return { calls, measureAt: (s: number) => (calls.push(s), f(s)) };
}

describe('searchBudgetScale', () => {
  it('stops at scale 1 when the first measurement is within tolerance', () => {
    const m = counted(() => 20 * (1 + BUDGET_SCALE_TOLERANCE / 2));
    expect(searchBudgetScale(m.measureAt, 20)).toEqual({ scale: 1, ratio: 20 * (1 + BUDGET_SCALE_TOLERANCE / 2) });
    expect(m.calls).toEqual([1]);
  });

  it('lands within tolerance on a smooth ratio ≈ k / budget map, from either side', () => {
    for (const [k, target] of [
      [25, 20],
      [14, 20],
      [20, 8],
    ]) {
      const m = counted((s) => k / s ** 0.9); // DEFLATE makes the ratio a little less than inversely proportional
      const best = searchBudgetScale(m.measureAt, target);
      expect(Math.abs(best.ratio / target - 1)).toBeLessThanOrEqual(BUDGET_SCALE_TOLERANCE);
      expect(best.ratio).toBe(k / best.scale ** 0.9);
      expect(m.calls.length).toBeLessThanOrEqual(1 + BUDGET_SCALE_STEPS);
    }
  });

  it('on a staircase it cannot hit, returns the closest ratio it measured, within the step limit and the scale bounds', () => {
    // Integer bits: the ratio only takes the values 160 / floor(8·scale).
    const m = counted((s) => 160 / Math.max(1, Math.floor(8 * s)));
    const target = 17.5; // between 160/9 ≈ 17.8 and 160/10 = 16
    const best = searchBudgetScale(m.measureAt, target);
    expect(m.calls.length).toBe(1 + BUDGET_SCALE_STEPS);
    const closest = Math.min(...m.calls.map((s) => Math.abs(160 / Math.max(1, Math.floor(8 * s)) / target - 1)));
    expect(Math.abs(best.ratio / target - 1)).toBe(closest);
    expect(best.ratio).toBeCloseTo(160 / 9, 12);
    for (const s of m.calls) {
      expect(s).toBeGreaterThanOrEqual(0.05);
      expect(s).toBeLessThanOrEqual(8);
    }
  });

  it('keeps the scale within [0.05, 8] when the target is out of reach', () => {
    expect(searchBudgetScale((s) => 1000 / s, 1).scale).toBe(8);
    expect(searchBudgetScale((s) => 0.001 / s, 1000).scale).toBe(0.05);
  });

  it('reports each step before measuring it, with the best so far', () => {
    const steps: [number, number][] = [];
    searchBudgetScale(
      (s) => 30 / s,
      20,
      (it, b) => steps.push([it, b.ratio]),
    );
    expect(steps[0]).toEqual([0, 30]);
    expect(steps.map(([i]) => i)).toEqual(steps.map((_, i) => i));
  });
});
