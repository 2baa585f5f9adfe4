import { describe, expect, it } from 'vitest';
import { CovarianceAccumulator } from '../../src/fit/covariance.js';
import { fitBasisPlanDetailed, projectCoefficients, reconstruct } from './fit-reference.js';
import { planBitsPerToken } from '../../src/codec/types.js';
import { symmetricEigen } from '../../src/fit/eigen.js';
import { randomizedEigen } from '../../src/fit/eigen-randomized.js';
import {
  BasisAllocator,
  allocate,
  allocateDetailed,
  heldoutCoefficients,
  maxRankForRatios,
  prepareAllocation,
  rankForBudget,
} from '../../src/fit/fit.js';
import { gemmABt } from '../../src/math/gemm.js';
import { randomOrthogonal, rng } from '../codec/rng.js';

const p = 32,
  trueRank = 6;
const sigma = [10, 8, 6, 5, 4, 3];

function synth(tokens: number, Q: Float64Array, seed: number, noise = 1e-3): Float32Array {
  const { normal } = rng(seed);
  const X = new Float32Array(tokens * p);
  const z = new Float64Array(trueRank);
  for (let t = 0; t < tokens; t++) {
    for (let k = 0; k < trueRank; k++) z[k] = sigma[k] * normal();
    for (let i = 0; i < p; i++) {
      let s = 2 + 0.1 * i; // non-zero mean
      for (let k = 0; k < trueRank; k++) s += Q[i * p + k] * z[k];
      X[t * p + i] = s + noise * normal();
    }
  }
  return X;
}

async function fitSynthetic(budgetBits: number) {
  const Q = randomOrthogonal(p, 42);
  const calib = synth(4000, Q, 1);
  const heldout = synth(1000, Q, 2);
  const acc = new CovarianceAccumulator(p);
  await acc.add(calib, 4000);
  const { mean, cov } = acc.finish();
  const fit = fitBasisPlanDetailed({ kind: 'value', layers: [0], dim: p, mean, cov, heldout, budgetBits });
  return { Q, heldout, ...fit };
}

describe('fitBasisPlan on a random rotation of a rank-6 source', () => {
  it('recovers the principal subspace and gives no bits to null components', async () => {
    const budget = Math.floor((16 * p) / 16); // ratio 16: 32 bits per token
    const { plan, Q, allocation, eigenvalues } = await fitSynthetic(budget);
    expect(plan.rank).toBeGreaterThan(0);
    expect(plan.rank).toBeLessThanOrEqual(trueRank);
    expect(planBitsPerToken(plan)).toBeLessThanOrEqual(budget);
    expect(allocation.bits).toBe(planBitsPerToken(plan));
    // eigenvalues: 6 large, the rest at the noise floor
    for (let k = 0; k < trueRank; k++) expect(eigenvalues[k]).toBeGreaterThan(4);
    expect(eigenvalues[trueRank]).toBeLessThan(1e-4);

    // principal angles between span(V[:, :6]) and span(Q[:, :6]) ≈ 0:
    // every true direction lies in the fitted span (‖V6ᵀ q‖ = 1).
    const fullFit = await fitSynthetic(16 * p); // ratio 1: enough bits to keep 6+ components
    expect(fullFit.plan.rank).toBeGreaterThanOrEqual(trueRank);
    const V = fullFit.plan.basis;
    const r = fullFit.plan.rank;
    for (let k = 0; k < trueRank; k++) {
      let norm2 = 0;
      for (let j = 0; j < trueRank; j++) {
        let d = 0;
        for (let i = 0; i < p; i++) d += V[i * r + j] * Q[i * p + k];
        norm2 += d * d;
      }
      expect(norm2).toBeGreaterThan(1 - 1e-6);
    }
  });

  it('plan arrays are consistent: orthonormal basis columns, variances, static ranges', async () => {
    const { plan } = await fitSynthetic(96);
    const r = plan.rank;
    expect(plan.basis.length).toBe(p * r);
    expect(plan.variances.length).toBe(r);
    expect(plan.mean.length).toBe(p);
    expect(plan.mean[5]).toBeCloseTo(2.5, 0);
    for (let a = 0; a < r; a++)
      for (let b = 0; b < r; b++) {
        let d = 0;
        for (let i = 0; i < p; i++) d += plan.basis[i * r + a] * plan.basis[i * r + b];
        expect(d).toBeCloseTo(a === b ? 1 : 0, 5);
      }
    for (let j = 1; j < r; j++) expect(plan.variances[j]).toBeLessThanOrEqual(plan.variances[j - 1]);
    for (const g of plan.groups) {
      if (g.type === 'none' || g.mode !== 'static') continue;
      for (let j = g.start; j < g.end; j++) expect(plan.hi[j]).toBeGreaterThan(plan.lo[j]);
    }
  });

  it('error falls as the budget rises', async () => {
    let prev = Infinity;
    for (const b of [0, 16, 48, 96, 200]) {
      const { allocation, heldoutEnergy } = await fitSynthetic(b);
      expect(allocation.error).toBeLessThanOrEqual(prev * (1 + 1e-9));
      if (b === 0) expect(allocation.error).toBeCloseTo(heldoutEnergy, -1);
      prev = allocation.error;
    }
  });
});

describe('a truncated eigenbasis (top-k components, eigen-randomized.ts)', () => {
  const p = 128;
  const H = 512;
  // Key-like samples: four outlier directions, then a slow power law, randomly mixed, with a mean.
  const { normal } = rng(11);
  const M = new Float64Array(p * p);
  for (let j = 0; j < p; j++) {
    const s = Math.sqrt(((j < 4 ? 20 : 1) * (j + 1) ** -1.2) / p);
    for (let i = 0; i < p; i++) M[i * p + j] = s * normal();
  }
  const samples = (T: number) => {
    const X = gemmABt(Float64Array.from({ length: T * p }, normal), M, new Float64Array(T * p), T, p, p);
    return Float32Array.from(X, (v, i) => v + 0.05 * (i % p));
  };
  const calib = samples(2048);
  const heldout = samples(H);
  const ratio = 20;
  const budget = Math.floor((16 * p) / ratio);
  const k = rankForBudget(p, Math.floor(1.5 * budget)); // room for a budget scale up to 1.5

  async function tables() {
    const acc = new CovarianceAccumulator(p);
    await acc.add(calib, 2048);
    const { mean, cov } = acc.finish();
    const o = { kind: 'key' as const, layers: [0], dim: p, mean, heldout, heldoutTokens: H };
    const d = symmetricEigen(cov, p);
    const r = randomizedEigen(cov, p, k);
    return {
      dense: prepareAllocation({ ...o, vectors: d.vectors, values: d.values }),
      truncated: prepareAllocation({ ...o, vectors: r.vectors, values: r.values }),
    };
  }

  it('separates features (p) from components (k) and accounts for the energy outside the k', async () => {
    const { dense, truncated } = await tables();
    expect(k).toBe(76);
    expect([dense.features, dense.dim, dense.residual]).toEqual([p, p, 0]);
    expect([truncated.features, truncated.dim]).toEqual([p, k]);
    expect(truncated.vectors.length).toBe(p * k);
    expect(truncated.coeffs.length).toBe(H * k);
    expect(truncated.none.length).toBe(k);
    expect(truncated.staticErr.length).toBe(4 * k);
    expect(truncated.mean.length).toBe(p);
    // The residual is the held-out energy past the k components: the dense tail's, to 1%.
    let tail = 0;
    for (let j = k; j < p; j++) tail += dense.none[j];
    expect(truncated.residual).toBeGreaterThan(0);
    expect(Math.abs(truncated.residual / tail - 1)).toBeLessThan(0.01);
  });

  it(`at ratio ${ratio} the plan stores ≤ k components and its DP error is the dense fit's within 0.1%`, async () => {
    const { dense, truncated } = await tables();
    const a = allocateDetailed(dense, budget);
    const b = allocateDetailed(truncated, budget);
    expect(b.plan.rank).toBeGreaterThan(0);
    expect(b.plan.rank).toBeLessThanOrEqual(k);
    expect(b.plan.dim).toBe(p);
    expect(b.plan.basis.length).toBe(p * b.plan.rank);
    expect(planBitsPerToken(b.plan)).toBeLessThanOrEqual(budget);
    expect(Math.abs(b.allocation.error / a.allocation.error - 1)).toBeLessThan(1e-3);
    // allocation.error = DP error over the k components + the residual past them.
    let stored = 0;
    for (let j = 0; j < truncated.dim; j++) stored += truncated.none[j];
    expect(b.allocation.error).toBeLessThan(stored + truncated.residual);
    // heldoutCoefficients reads the [H, k] coefficients: the held-out features on the plan's basis.
    const r = b.plan.rank;
    const want = projectCoefficients(heldout, truncated.mean, b.plan.basis, r);
    const got = heldoutCoefficients(truncated, 0, H, r);
    let worst = 0;
    for (let i = 0; i < got.length; i++) worst = Math.max(worst, Math.abs(got[i] - want[i]));
    expect(worst).toBeLessThan(1e-4);
    expect(() => heldoutCoefficients(truncated, 0, 1, k + 1)).toThrow(/rank \(77\) exceeds the tables' components \(76\)/);
  });

  it("BasisAllocator: a budget search's plans, layouts and errors are allocate()'s at every budget", async () => {
    const { dense, truncated } = await tables();
    for (const t of [dense, truncated]) {
      const a = new BasisAllocator(t);
      // The order a budget-scale search asks in: scale 1, up past the first cap, down, saturated.
      for (const scale of [1, 1.7, 2.4, 0.6, 1.2, 8, 0.05]) {
        const b = Math.floor(budget * scale);
        const want = allocateDetailed(t, b);
        expect(a.plan(b)).toEqual(want.plan);
        expect(a.allocation(b)).toEqual(want.allocation);
        const { basis: _b, mean: _m, variances: _v, ...layout } = allocate(t, b);
        expect(a.layout(b)).toEqual(layout);
      }
      a.release();
      expect(a.plan(budget)).toEqual(allocate(t, budget));
    }
  });

  it('rankForBudget: int2 (2 bits) is the cheapest stored component, capped at p', () => {
    expect(rankForBudget(1024, Math.floor((16 * 1024) / 20))).toBe(409);
    expect(rankForBudget(64, 16 * 64)).toBe(64);
    expect(rankForBudget(64, 0)).toBe(1);
    // The smallest ratio's budget at 1.5 times the scale-1 bits: 16·1024/20·1.5 = 1228 bits → 614 components.
    expect(maxRankForRatios(1024, [64, 20, 40])).toBe(614);
    expect(maxRankForRatios(1024, [80], 1)).toBe(102);
    expect(maxRankForRatios(1024, [8, 20])).toBe(1024);
  });
});

describe('projectCoefficients / reconstruct', () => {
  it('round-trip exactly with a full orthonormal basis and drop energy with a truncated one', () => {
    const n = 8,
      T = 20;
    const Q = randomOrthogonal(n, 3);
    const basis = Float32Array.from(Q);
    const { normal } = rng(4);
    const X = Float32Array.from({ length: T * n }, normal);
    const mean = Float64Array.from({ length: n }, (_, i) => i * 0.5);
    const C = projectCoefficients(X, mean, basis, n);
    const Xh = reconstruct(C, mean, basis, n);
    for (let i = 0; i < X.length; i++) expect(Xh[i]).toBeCloseTo(X[i], 5);
    // truncated: keep 3 columns
    const b3 = new Float32Array(n * 3);
    for (let i = 0; i < n; i++) for (let j = 0; j < 3; j++) b3[i * 3 + j] = Q[i * n + j];
    const C3 = projectCoefficients(X, mean, b3, 3);
    for (let t = 0; t < T; t++) for (let j = 0; j < 3; j++) expect(C3[t * 3 + j]).toBeCloseTo(C[t * n + j], 5);
    const empty = reconstruct(new Float32Array(0), mean, new Float32Array(0), 0, 2);
    expect(Array.from(empty.subarray(0, n))).toEqual(Array.from(mean, Math.fround));
  });
});
