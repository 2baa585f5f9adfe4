/**
 * The Dynamo bit allocation: the DP against brute force on small instances, its budget, and
 * the error tables against a direct run of the emulated quantizers on the chosen ranges.
 */
import { describe, expect, it } from 'vitest';
import {
  allocateDynamo,
  buildDynamoTables,
  groupBytes,
  intxIndex,
  planFromAllocation,
  type DynamoBasisTables,
  type DynamoGroup,
  type DynamoTables,
} from '../../src/dynamo/fit.js';
import { dequantizeRanges, quantizeRanges } from '../../src/dynamo/kernels.js';
import { mulberry32 } from '../../src/random.js';

/** Random tables on a granule grid (invalid widths Infinity, as the real builder marks them). */
function randomTables(p: number, granule: number, seed: number, intBits = [2, 4, 8]): DynamoTables {
  const rand = mulberry32(seed);
  const starts = Math.ceil(p / granule);
  const maxGranules = starts;
  const none = Float64Array.from({ length: p }, (_, j) => (10 + rand() * 5) * 0.7 ** j);
  const fp8 = Float64Array.from(none, (v) => v * (0.01 + 0.05 * rand()));
  const t: DynamoTables = {
    dim: p,
    tokens: 1,
    granule,
    maxGranules,
    intBits,
    none,
    staticErr: fp8,
    dynamicErr: new Float64Array(starts * maxGranules * intBits.length).fill(Infinity),
  };
  for (let k = 0; k < starts; k++) {
    for (let m = 1; m <= maxGranules; m++) {
      const s = k * granule;
      if (s + (m - 1) * granule >= p) break;
      const e = Math.min(p, s + m * granule);
      let energy = 0;
      for (let j = s; j < e; j++) energy += none[j];
      intBits.forEach((b, bi) => {
        if ((e - s) % (8 / b) !== 0) return;
        t.dynamicErr[intxIndex(t, k, m, bi)] = energy * (0.3 + 0.4 * rand()) * 4 ** -b * (1 + (e - s) / 8);
      });
    }
  }
  return t;
}

/** Least error over every plan within the budget, by exhaustive recursion. */
function bruteForce(t: DynamoTables, budget: number): number {
  const p = t.dim;
  const g = t.granule;
  const go = (j: number, left: number): number => {
    if (j === p) return 0;
    let best = t.none[j] + go(j + 1, left);
    if (left >= 1) best = Math.min(best, t.staticErr[j] + go(j + 1, left - 1));
    if (j % g === 0) {
      for (let m = 1; m <= t.maxGranules && j + (m - 1) * g < p; m++) {
        const e = Math.min(p, j + m * g);
        t.intBits.forEach((b, bi) => {
          const err = t.dynamicErr[intxIndex(t, j / g, m, bi)];
          const cost = ((e - j) * b) / 8 + 8;
          if (err < Infinity && cost <= left) best = Math.min(best, err + go(e, left - cost));
        });
      }
    }
    return best;
  };
  return go(0, budget);
}

function planError(t: DynamoTables, groups: DynamoGroup[]): number {
  let e = 0;
  for (const g of groups) {
    if (g.type === 'none') for (let j = g.start; j < g.end; j++) e += t.none[j];
    else if (g.type === 'fp8') for (let j = g.start; j < g.end; j++) e += t.staticErr[j];
    else e += t.dynamicErr[intxIndex(t, g.start / t.granule, Math.ceil((g.end - g.start) / t.granule), t.intBits.indexOf(g.bits))];
  }
  return e;
}

describe('allocateDynamo', () => {
  it('finds the least-error plan within the budget (brute force on small instances)', () => {
    for (let seed = 1; seed <= 12; seed++) {
      const p = 8 + (seed % 3) * 4;
      const t = randomTables(p, seed % 2 ? 4 : 8, seed);
      for (const budget of [0, 1, 3, 9, 12, 17, 26, 40]) {
        const a = allocateDynamo(t, budget);
        expect(a.bytesPerRow).toBeLessThanOrEqual(budget);
        expect(a.bytesPerRow).toBe(groupBytes(a.groups));
        expect(a.error).toBeCloseTo(planError(t, a.groups), 9);
        expect(a.error).toBeCloseTo(bruteForce(t, budget), 9);
        // groups tile [0, p) in order
        let at = 0;
        for (const g of a.groups) {
          expect(g.start).toBe(at);
          at = g.end;
        }
        expect(at).toBe(p);
      }
    }
  });

  it('never uses an IntX width the kernels cannot pack', () => {
    const t = randomTables(20, 2, 7);
    for (const budget of [5, 10, 20, 30]) {
      for (const g of allocateDynamo(t, budget).groups) if (g.type === 'intx') expect((g.end - g.start) % (8 / g.bits)).toBe(0);
    }
  });
});

describe('error tables and the plan they produce', () => {
  it('the DP error of a plan equals the emulated kernels run on its ranges (held-out coefficients)', () => {
    const rand = mulberry32(11);
    const p = 32;
    const H = 64;
    // coefficients with falling variance, as a PCA hands them over
    const C = Float32Array.from({ length: H * p }, (_, i) => (rand() - 0.5) * 8 * 0.85 ** (i % p));
    const tables = buildDynamoTables(C, H, p, { sampleRows: H });
    const eye = new Float32Array(p * p);
    for (let i = 0; i < p; i++) eye[i * p + i] = 1;
    const basis: DynamoBasisTables = {
      kind: 'value',
      layer: 0,
      features: p,
      mean: new Float32Array(p),
      vectors: eye,
      values: new Float64Array(p).fill(1),
      tables,
      residual: 0,
    };
    for (const budget of [6, 12, 20, 32]) {
      const a = allocateDynamo(tables, budget);
      const plan = planFromAllocation(basis, a, budget);
      expect(plan.bytes_per_block).toBe(a.bytesPerRow);
      // permute the coefficients into the plan's column order, run the kernels' quantizers
      const k = plan.pca_components;
      const Y = new Float32Array(H * k);
      for (let r = 0; r < H; r++)
        for (let c = 0; c < k; c++) Y[r * k + c] = C.subarray(r * p, r * p + p).reduce((s, v, f) => s + v * plan.projection[f * k + c], 0);
      const back = dequantizeRanges(quantizeRanges(Y, plan.ranges, H, k), plan.ranges, H, k);
      let err = 0;
      for (let r = 0; r < H; r++) {
        const kept = new Set<number>();
        for (let c = 0; c < k; c++) {
          const j = plan.projection.findIndex((v, idx) => idx % k === c && v === 1) / k;
          kept.add(Math.floor(j));
          const d = Y[r * k + c] - back[r * k + c];
          err += d * d;
        }
        for (let j = 0; j < p; j++) if (!kept.has(j)) err += C[r * p + j] ** 2;
      }
      expect(err).toBeCloseTo(a.error, 6);
    }
  });
});
