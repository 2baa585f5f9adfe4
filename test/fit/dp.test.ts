import { describe, expect, it } from 'vitest';
import { allocateBits, solveBits } from '../../src/fit/dp.js';
import { type ErrorTables, buildErrorTables, dynamicIndex } from '../../src/fit/error-tables.js';
import { STORED_TYPES } from '../../src/codec/quant.js';
import { DYNAMIC_OVERHEAD_BITS, TYPE_BITS, planBitsPerToken } from '../../src/codec/types.js';
import { rng } from '../codec/rng.js';

/** Random tables shaped like real ones: dropping costs the most, more bits cost less error. */
function randomTables(p: number, seed: number): ErrorTables {
  const { uniform } = rng(seed);
  const none = Float64Array.from({ length: p }, (_, j) => (10 + 10 * uniform()) / (1 + j));
  const staticErr = new Float64Array(4 * p);
  const bitsFactor = [0.3, 0.05, 0.002, 0.004];
  for (let ti = 0; ti < 4; ti++) for (let j = 0; j < p; j++) staticErr[ti * p + j] = none[j] * bitsFactor[ti] * (0.5 + uniform());
  const t: ErrorTables = {
    dim: p,
    tokens: 1,
    granule: 1,
    maxGranules: p,
    none,
    staticErr,
    staticLo: new Float32Array(4 * p),
    staticHi: new Float32Array(4 * p),
    staticTuned: new Uint8Array(4 * p),
    dynamicErr: new Float64Array(p * p * 4).fill(Infinity),
  };
  for (let s = 0; s < p; s++)
    for (let e = s + 1; e <= p; e++)
      for (let ti = 0; ti < 4; ti++) {
        let sum = 0;
        for (let j = s; j < e; j++) sum += none[j];
        t.dynamicErr[dynamicIndex(t, s, e - s, ti)] = sum * bitsFactor[ti] * 0.4 * (0.5 + uniform()) * (1 + 0.2 * (e - s));
      }
  return t;
}

/** Enumerates every partition of [0, p) and every type/mode choice per group. */
function bruteForce(t: ErrorTables, budget: number): number {
  const p = t.dim;
  let best = Infinity;
  const rec = (i: number, bits: number, err: number): void => {
    if (bits > budget) return;
    if (i === p) {
      best = Math.min(best, err);
      return;
    }
    for (let e = i + 1; e <= p; e++) {
      let none = 0;
      for (let j = i; j < e; j++) none += t.none[j];
      rec(e, bits, err + none);
      for (let ti = 0; ti < 4; ti++) {
        let st = 0;
        for (let j = i; j < e; j++) st += t.staticErr[ti * p + j];
        const w = (e - i) * TYPE_BITS[STORED_TYPES[ti]];
        rec(e, bits + w, err + st);
        rec(e, bits + w + DYNAMIC_OVERHEAD_BITS, err + t.dynamicErr[dynamicIndex(t, i, e - i, ti)]);
      }
    }
  };
  rec(0, 0, 0);
  return best;
}

function planError(t: ErrorTables, groups: ReturnType<typeof allocateBits>['groups']): number {
  let err = 0;
  let end = 0;
  for (const g of groups) {
    if (g.type === 'none') for (let j = g.start; j < g.end; j++) err += t.none[j];
    else if (g.mode === 'static') for (let j = g.start; j < g.end; j++) err += t.staticErr[STORED_TYPES.indexOf(g.type) * t.dim + j];
    else err += t.dynamicErr[dynamicIndex(t, g.start / t.granule, Math.ceil((g.end - g.start) / t.granule), STORED_TYPES.indexOf(g.type))];
    end = g.end;
  }
  for (let j = end; j < t.dim; j++) err += t.none[j];
  return err;
}

describe('allocateBits', () => {
  it('equals brute force on small random instances', () => {
    for (let seed = 1; seed <= 6; seed++) {
      const p = 3 + (seed % 4); // 3..6
      const t = randomTables(p, seed);
      for (const budget of [0, 1, 2, 7, 16, 33, 40, 48, 64]) {
        const a = allocateBits(t, budget);
        expect(a.error).toBeCloseTo(bruteForce(t, budget), 10);
        expect(a.bits).toBeLessThanOrEqual(budget);
        expect(planBitsPerToken(a)).toBe(a.bits);
        expect(planError(t, a.groups)).toBeCloseTo(a.error, 10);
      }
    }
  });

  it('groups are contiguous, start at 0, end at rank, no trailing none', () => {
    const t = randomTables(6, 11);
    for (let budget = 0; budget <= 60; budget += 3) {
      const a = allocateBits(t, budget);
      let pos = 0;
      for (const g of a.groups) {
        expect(g.start).toBe(pos);
        expect(g.end).toBeGreaterThan(g.start);
        pos = g.end;
      }
      expect(pos).toBe(a.rank);
      if (a.groups.length) expect(a.groups[a.groups.length - 1].type).not.toBe('none');
    }
  });

  it('error never increases as the budget rises; tiny budgets drop everything', () => {
    const t = randomTables(16, 5);
    let prev = Infinity;
    for (let budget = 0; budget <= 200; budget += 2) {
      const a = allocateBits(t, budget);
      expect(a.error).toBeLessThanOrEqual(prev + 1e-12);
      prev = a.error;
    }
    const tiny = allocateBits(t, 1);
    expect(tiny.rank).toBe(0);
    expect(tiny.groups).toEqual([]);
    let all = 0;
    for (const v of t.none) all += v;
    expect(tiny.error).toBeCloseTo(all, 10);
  });

  it('respects the granule grid for dynamic groups on measured tables', () => {
    const { normal } = rng(3);
    const H = 300,
      p = 40;
    const C = new Float32Array(H * p);
    for (let i = 0; i < C.length; i++) C[i] = (normal() * 5) / (1 + (i % p));
    const t = buildErrorTables(C, H, p, { granule: 4, maxGranules: 3 });
    for (const budget of [40, 120, 300]) {
      const a = allocateBits(t, budget);
      expect(a.bits).toBeLessThanOrEqual(budget);
      for (const g of a.groups)
        if (g.mode === 'dynamic' && g.type !== 'none') {
          expect(g.start % 4).toBe(0);
          expect(g.end % 4 === 0 || g.end === p).toBe(true);
          expect(g.end - g.start).toBeLessThanOrEqual(12);
        }
    }
  });

  // Its speed is a benchmark (scripts/test-timings-bench.ts, docs/benchmarks.md), not a test bound.
  it('p=1024 at ratio 4: returns a valid allocation whose reported error and bits are those of its groups', () => {
    const t = randomTables(64, 9);
    // widen to 1024 components with the default granule layout
    const p = 1024,
      g = 16,
      M = 16;
    const big: ErrorTables = {
      dim: p,
      tokens: 1,
      granule: g,
      maxGranules: M,
      none: new Float64Array(p),
      staticErr: new Float64Array(4 * p),
      staticLo: new Float32Array(4 * p),
      staticHi: new Float32Array(4 * p),
      staticTuned: new Uint8Array(4 * p),
      dynamicErr: new Float64Array(64 * M * 4),
    };
    for (let j = 0; j < p; j++) {
      big.none[j] = t.none[j % 64] / (1 + j / 64);
      for (let ti = 0; ti < 4; ti++) big.staticErr[ti * p + j] = t.staticErr[ti * 64 + (j % 64)] / (1 + j / 64);
    }
    for (let k = 0; k < 64; k++)
      for (let m = 1; m <= M; m++)
        for (let ti = 0; ti < 4; ti++) {
          let s = 0;
          for (let j = k * g; j < Math.min(p, (k + m) * g); j++) s += big.staticErr[ti * p + j];
          big.dynamicErr[dynamicIndex(big, k, m, ti)] = k + m > 64 ? Infinity : s * 0.7;
        }
    const a = allocateBits(big, Math.floor((16 * p) / 4));
    expect(a.bits).toBeLessThanOrEqual(4096);
    expect(a.bits).toBe(planBitsPerToken(a));
    expect(a.rank).toBeGreaterThan(0);
    expect(a.groups.at(-1)!.end).toBe(a.rank);
    for (const [i, g] of a.groups.entries()) {
      expect(g.start).toBe(i === 0 ? 0 : a.groups[i - 1].end);
      if (g.mode === 'dynamic') expect(g.start % 16).toBe(0);
    }
    expect(a.error).toBeCloseTo(planError(big, a.groups), 6);
    // Dropping everything is one of the choices it beat.
    expect(a.error).toBeLessThan(big.none.reduce((x, y) => x + y, 0));
  });
});

describe('solveBits: one DP read at every budget up to its cap', () => {
  it('gives allocateBits exactly at every budget below the cap, and brute force', () => {
    for (let seed = 1; seed <= 4; seed++) {
      const p = 3 + (seed % 3);
      const t = randomTables(p, seed);
      const solved = solveBits(t, 64);
      expect(solved.capBits).toBe(64);
      for (let budget = 0; budget <= 64; budget += 3) {
        const a = solved.allocate(budget);
        expect(a).toEqual(allocateBits(t, budget));
        expect(a.error).toBeCloseTo(bruteForce(t, budget), 10);
      }
    }
  });

  it('on a larger table, plans read off a cap of 2x equal fresh solves at each budget', () => {
    const t = randomTables(40, 9);
    const solved = solveBits(t, 2 * 120);
    for (const budget of [0, 2, 37, 80, 119, 120, 161, 240]) expect(solved.allocate(budget)).toEqual(allocateBits(t, budget));
    expect(() => solved.allocate(242)).toThrow(/solved cap \(240 bits\)/);
  });

  it('stops at the dearest plan: a cap above it answers every budget, as a fresh solve does', () => {
    const p = 4;
    const t = randomTables(p, 3);
    // granule 1: every component at 8 bits plus one 32-bit range each = 160 bits.
    const solved = solveBits(t, 10_000);
    expect(solved.capBits).toBe(Infinity);
    for (const budget of [150, 160, 161, 1_000, 1e6]) {
      const a = solved.allocate(budget);
      expect(a).toEqual(allocateBits(t, budget));
      expect(a.error).toBeCloseTo(bruteForce(t, budget), 10);
      expect(a.bits).toBeLessThanOrEqual(160);
    }
  });
});
