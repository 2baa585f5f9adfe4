/**
 * The target-independent halves of the allocation: buildTables (the measurement, given a
 * target's quantizers) and allocateRuns (the DP, given a target's cost model), each checked
 * against a direct, independent computation with a menu that is neither kvtc's nor Dynamo's.
 */
import { describe, expect, it } from 'vitest';
import { allocateRuns, runBits, type AllocationInput, type CostModel } from '../../src/fit/dp.js';
import { buildTables, tableIndex, type TableQuantizers } from '../../src/fit/error-tables.js';
import { mulberry32 } from '../../src/random.js';

/** A toy target: static = round to a step (two steps), dynamic = `levels` uniform levels over [mn, mx]. */
function toyQuantizers(granule: number, maxGranules: number, sampleRows: number): TableQuantizers {
  const steps = [0.5, 0.125];
  const levels = [3, 15];
  return {
    staticTypes: steps.length,
    staticColumn(_j, col, out) {
      steps.forEach((q, s) => {
        let e = 0;
        for (const v of col) e += (v - Math.round(v / q) * q) ** 2;
        out[s] = e;
      });
    },
    dynamicTypes: levels.length,
    // Levels 15 need a width divisible by 2 (a packing rule, like the kernels' IntX).
    dynamicValid: (width, d) => d === 0 || width % 2 === 0,
    dynamicError(C, from, to, mn, mx, d, acc) {
      const sc = (mx - mn) / levels[d];
      let e = acc;
      for (let i = from; i < to; i++) {
        const x = sc > 0 ? mn + Math.round((C[i] - mn) / sc) * sc : mn;
        e += (C[i] - x) ** 2;
      }
      return e;
    },
    granule,
    maxGranules,
    sampleRows,
  };
}

describe('buildTables', () => {
  it('equals a direct measurement of every candidate (fresh sums, no running continuation), Infinity where the target cannot pack', () => {
    const rand = mulberry32(5);
    const H = 40;
    const p = 11;
    const C = Float32Array.from({ length: H * p }, (_, i) => (rand() - 0.5) * 6 * 0.8 ** (i % p));
    const q = toyQuantizers(3, 3, 16);
    const t = buildTables(C, H, p, q);
    expect([t.dim, t.tokens, t.granule, t.maxGranules]).toEqual([p, H, 3, 3]);
    for (let j = 0; j < p; j++) {
      const col = Float64Array.from({ length: H }, (_, r) => C[r * p + j]);
      expect(t.none[j]).toBe(col.reduce((a, v) => a + v * v, 0));
      const out = new Float64Array(2);
      q.staticColumn(j, col, out);
      expect([t.staticErr[j], t.staticErr[p + j]]).toEqual([out[0], out[1]]);
    }
    const stride = H / 16;
    for (let k = 0; k < Math.ceil(p / 3); k++) {
      for (let m = 1; m <= 3; m++) {
        const s = 3 * k;
        if (s + (m - 1) * 3 >= p) continue;
        const e = Math.min(p, s + 3 * m);
        for (let d = 0; d < 2; d++) {
          const got = t.dynamicErr[tableIndex(3, 2, k, m, d)];
          if (d === 1 && (e - s) % 2 !== 0) {
            expect(got).toBe(Infinity);
            continue;
          }
          let want = 0;
          for (let r = 0; r < 16; r++) {
            const row = Math.floor(r * stride) * p;
            const vals = C.subarray(row + s, row + e);
            want += q.dynamicError(C, row + s, row + e, Math.min(...vals), Math.max(...vals), d, 0) * stride;
          }
          expect(got).toBe(want);
        }
      }
    }
  });
});

describe('allocateRuns', () => {
  /** Random tables on a granule grid for a menu of `S` static and `D` dynamic types. */
  function randomInput(p: number, g: number, S: number, D: number, seed: number): AllocationInput {
    const rand = mulberry32(seed);
    const starts = Math.ceil(p / g);
    const none = Float64Array.from({ length: p }, (_, j) => (5 + rand() * 5) * 0.75 ** j);
    const staticErr = Float64Array.from({ length: S * p }, (_, i) => (none[i % p] * (0.05 + 0.3 * rand())) / (1 + Math.floor(i / p)));
    const dynamicErr = new Float64Array(starts * starts * D).fill(Infinity);
    for (let k = 0; k < starts; k++) {
      for (let m = 1; m <= starts && k * g + (m - 1) * g < p; m++) {
        let energy = 0;
        for (let j = k * g; j < Math.min(p, (k + m) * g); j++) energy += none[j];
        for (let d = 0; d < D; d++) dynamicErr[tableIndex(starts, D, k, m, d)] = (energy * (0.02 + 0.2 * rand())) / (1 + d);
      }
    }
    return { dim: p, granule: g, maxGranules: starts, none, staticErr, dynamicErr };
  }

  /** Least error within the budget, by exhaustive recursion over the same menu. */
  function bruteForce(t: AllocationInput, cost: CostModel, budgetBits: number): number {
    const p = t.dim;
    const S = cost.staticBits.length;
    const D = cost.dynamicBits.length;
    const go = (j: number, left: number): number => {
      if (j === p) return 0;
      let best = t.none[j] + go(j + 1, left);
      for (let s = 0; s < S; s++)
        if (cost.staticBits[s] <= left) best = Math.min(best, t.staticErr[s * p + j] + go(j + 1, left - cost.staticBits[s]));
      if (j % t.granule === 0) {
        for (let m = 1; m <= t.maxGranules && j + (m - 1) * t.granule < p; m++) {
          const e = Math.min(p, j + m * t.granule);
          for (let d = 0; d < D; d++) {
            const c = (e - j) * cost.dynamicBits[d] + cost.dynamicOverheadBits;
            const err = t.dynamicErr[tableIndex(t.maxGranules, D, j / t.granule, m, d)];
            if (c <= left && err < Infinity) best = Math.min(best, err + go(e, left - c));
          }
        }
      }
      return best;
    };
    return go(0, budgetBits);
  }

  // A menu of neither target: three static types, one dynamic type, 4-bit units.
  const cost: CostModel = { unitBits: 4, staticBits: [4, 8, 12], dynamicBits: [4], dynamicOverheadBits: 16 };

  it('finds the least-error plan within the budget for a menu of neither target (brute force)', () => {
    for (let seed = 1; seed <= 6; seed++) {
      const t = randomInput(7, seed % 2 ? 2 : 3, 3, 1, seed);
      for (const budget of [0, 4, 13, 24, 40, 64]) {
        const a = allocateRuns(t, cost, budget);
        expect(a.bits).toBeLessThanOrEqual(budget);
        expect(a.bits).toBe(a.runs.reduce((s, r) => s + runBits(cost, r), 0));
        expect(a.error).toBeCloseTo(bruteForce(t, cost, budget), 9);
        let at = 0;
        for (const r of a.runs) {
          expect(r.start).toBe(at);
          at = r.end;
        }
        expect(at).toBe(7);
      }
    }
  });

  it('refuses a cost model whose costs are not whole units (a target bug, not user input)', () => {
    const t = randomInput(4, 2, 1, 1, 3);
    expect(() => allocateRuns(t, { unitBits: 8, staticBits: [4], dynamicBits: [8], dynamicOverheadBits: 64 }, 64)).toThrow(
      /not a whole number of 8-bit units/,
    );
  });
});
