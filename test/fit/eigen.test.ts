import { EigenvalueDecomposition, Matrix } from 'ml-matrix';
import { describe, expect, it } from 'vitest';
import { type EigenResult, symmetricEigen } from '../../src/fit/eigen.js';
import { eigenSteps, LARGE_EIGEN_MIN_P } from '../../src/fit/eigen-steps.js';
import { runEigenSteps } from './eigen-reference.js';
import { symmetricUpperProduct } from '../../src/fit/householder.js';
import { symmetricEigenAsync } from '../../src/fit/eigen-ort.js';
import { gemmABt } from '../../src/math/gemm.js';
import { rng } from '../codec/rng.js';

function randomSymmetric(p: number, seed: number, rankDeficient = 0): Float64Array {
  const { normal } = rng(seed);
  const k = p - rankDeficient;
  const B = Float64Array.from({ length: p * k }, normal);
  const A = new Float64Array(p * p);
  for (let i = 0; i < p; i++)
    for (let j = 0; j < p; j++) {
      let s = 0;
      for (let q = 0; q < k; q++) s += B[i * k + q] * B[j * k + q];
      A[i * p + j] = s;
    }
  return A;
}

function checkInvariants(A: Float64Array, p: number, tol: number): void {
  const { values, vectors } = symmetricEigen(A, p);
  for (let j = 1; j < p; j++) expect(values[j]).toBeLessThanOrEqual(values[j - 1]);
  let scale = 0;
  for (const v of values) scale = Math.max(scale, Math.abs(v));
  for (let j = 0; j < p; j++) {
    for (let i = 0; i < p; i++) {
      let av = 0;
      for (let k = 0; k < p; k++) av += A[i * p + k] * vectors[k * p + j];
      expect(Math.abs(av - values[j] * vectors[i * p + j])).toBeLessThan(tol * scale);
    }
    for (let k = 0; k < p; k++) {
      let d = 0;
      for (let i = 0; i < p; i++) d += vectors[i * p + j] * vectors[i * p + k];
      expect(Math.abs(d - (j === k ? 1 : 0))).toBeLessThan(tol);
    }
  }
}

describe('symmetricEigen', () => {
  for (const p of [1, 2, 3, 7, 32]) {
    it(`A·V = V·diag(λ) and VᵀV = I (p=${p})`, () => checkInvariants(randomSymmetric(p, p), p, 1e-10));
  }

  it('handles rank-deficient and diagonal input', () => {
    checkInvariants(randomSymmetric(20, 3, 12), 20, 1e-10);
    const D = new Float64Array(16);
    [3, -1, 2, 0].forEach((v, i) => (D[i * 4 + i] = v));
    const { values } = symmetricEigen(D, 4);
    expect(Array.from(values)).toEqual([3, 2, 0, -1]);
  });

  it('agrees with ml-matrix on small random matrices', () => {
    for (const p of [5, 12]) {
      const A = randomSymmetric(p, 100 + p);
      const ours = symmetricEigen(A, p);
      const M = new Matrix(Array.from({ length: p }, (_, i) => Array.from(A.subarray(i * p, i * p + p))));
      const evd = new EigenvalueDecomposition(M, { assumeSymmetric: true });
      const theirs = [...evd.realEigenvalues].map((v, j) => ({ v, j })).sort((a, b) => b.v - a.v);
      const V = evd.eigenvectorMatrix;
      for (let j = 0; j < p; j++) {
        expect(ours.values[j]).toBeCloseTo(theirs[j].v, 9);
        // same direction up to sign
        let dot = 0;
        for (let i = 0; i < p; i++) dot += ours.vectors[i * p + j] * V.get(i, theirs[j].j);
        expect(Math.abs(Math.abs(dot) - 1)).toBeLessThan(1e-8);
      }
    }
  });

  // Its speed is a benchmark (scripts/test-timings-bench.ts, docs/benchmarks.md "Calibration kernels"), not a test bound.
  it('p=256: returns the top eigenpair to a residual of 1e-9', () => {
    const A = randomSymmetric(256, 9);
    const { values, vectorsT } = symmetricEigen(A, 256);
    // spot check the top pair
    let res = 0;
    for (let i = 0; i < 256; i++) {
      let s = 0;
      for (let k = 0; k < 256; k++) s += A[i * 256 + k] * vectorsT[k];
      res = Math.max(res, Math.abs(s - values[0] * vectorsT[i]));
    }
    expect(res).toBeLessThan(1e-9 * values[0]);
  });
});

/**
 * SPD A = Q Λ Qᵀ with Q a product of 8 random Householder reflectors (dense), a decaying
 * spectrum and clusters: 10 exactly equal eigenvalues and 5 equal to 1e-13 relative.
 */
function spdWithClusters(p: number, seed: number): { A: Float64Array; lambda: Float64Array } {
  const { normal } = rng(seed);
  const lambda = Float64Array.from({ length: p }, (_, i) => 10 * Math.exp(-i / 40) + 1e-6 * (1 + i / p));
  for (let i = 50; i < 60; i++) lambda[i] = 0.5;
  for (let i = 60; i < 65; i++) lambda[i] = 0.3 * (1 + 1e-13 * i);
  const A = new Float64Array(p * p);
  for (let i = 0; i < p; i++) A[i * p + i] = lambda[i];
  const u = new Float64Array(p);
  const w = new Float64Array(p);
  for (let r = 0; r < 8; r++) {
    let n2 = 0;
    for (let i = 0; i < p; i++) {
      u[i] = normal();
      n2 += u[i] * u[i];
    }
    const inv = 1 / Math.sqrt(n2);
    for (let i = 0; i < p; i++) u[i] *= inv;
    // A ← H A H, H = I - 2uuᵀ: A - 2u(Aᵀu)ᵀ... via w = A u, c = uᵀw: A - 2uwᵀ - 2wuᵀ + 4c uuᵀ.
    let c = 0;
    for (let i = 0; i < p; i++) {
      let s = 0;
      for (let k = 0; k < p; k++) s += A[i * p + k] * u[k];
      w[i] = s;
      c += u[i] * s;
    }
    for (let i = 0; i < p; i++) for (let k = 0; k < p; k++) A[i * p + k] += -2 * u[i] * w[k] - 2 * w[i] * u[k] + 4 * c * u[i] * u[k];
  }
  for (let i = 0; i < p; i++) for (let k = 0; k < i; k++) A[i * p + k] = A[k * p + i] = (A[i * p + k] + A[k * p + i]) / 2;
  return { A, lambda };
}

function maxDiff(a: Float64Array, b: Float64Array): number {
  let m = 0;
  for (let j = 0; j < a.length; j++) m = Math.max(m, Math.abs(a[j] - b[j]));
  return m;
}

/** max|AV − VΛ| / ‖A‖ and max|VᵀV − I|, via the tiled GEMM; also checks order, layout and signs. */
function largeChecks(A: Float64Array, p: number, r: EigenResult): { res: number; orth: number } {
  const { values, vectors, vectorsT } = r;
  for (let j = 1; j < p; j++) expect(values[j]).toBeLessThanOrEqual(values[j - 1]);
  let layout = 0;
  for (let i = 0; i < p; i++) for (let j = 0; j < p; j++) if (vectors[i * p + j] !== vectorsT[j * p + i]) layout++;
  expect(layout).toBe(0);
  let badSigns = 0;
  for (let j = 0; j < p; j++) {
    let best = 0;
    for (let k = 1; k < p; k++) if (Math.abs(vectorsT[j * p + k]) > Math.abs(vectorsT[j * p + best])) best = k;
    if (!(vectorsT[j * p + best] > 0)) badSigns++;
  }
  expect(badSigns).toBe(0);
  const norm = Math.max(Math.abs(values[0]), Math.abs(values[p - 1]));
  const AV = gemmABt(A, vectorsT, new Float64Array(p * p), p, p, p); // (A V)[i, j]
  let res = 0;
  for (let i = 0; i < p; i++) for (let j = 0; j < p; j++) res = Math.max(res, Math.abs(AV[i * p + j] - values[j] * vectors[i * p + j]));
  const G = gemmABt(vectorsT, vectorsT, new Float64Array(p * p), p, p, p);
  let orth = 0;
  for (let i = 0; i < p; i++) for (let j = 0; j < p; j++) orth = Math.max(orth, Math.abs(G[i * p + j] - (i === j ? 1 : 0)));
  return { res: res / norm, orth };
}

describe('symmetricUpperProduct (the symmetric product of the reduction)', () => {
  it('adds B·x of the leading i×i block from its upper triangle, for every i mod 4, with a row stride', () => {
    const n = 23;
    const { normal } = rng(41);
    const W = new Float64Array(n * n);
    for (let r = 0; r < n; r++) for (let c = 0; c <= r; c++) W[r * n + c] = W[c * n + r] = normal();
    // The lower triangle is never read: poison it.
    const Wu = Float64Array.from(W);
    for (let r = 0; r < n; r++) for (let c = 0; c < r; c++) Wu[r * n + c] = Number.NaN;
    for (let i = 0; i <= 19; i++) {
      const x = Float64Array.from({ length: n }, () => normal());
      const pv = Float64Array.from({ length: n }, (_, j) => j * 0.5);
      const ref = Float64Array.from(pv);
      for (let r = 0; r < i; r++) for (let c = 0; c < i; c++) ref[r] += W[r * n + c] * x[c];
      symmetricUpperProduct(Wu, n, x, pv, i);
      for (let r = 0; r < n; r++) expect(Math.abs(pv[r] - ref[r])).toBeLessThanOrEqual(1e-13 * (1 + Math.abs(ref[r])));
    }
  });
});

describe('symmetricEigen, large p (reduction + divide and conquer + blocked back-transform)', () => {
  it('p=512 SPD with clusters: residual, orthogonality, signs, values = the tred2/tql2 path', async () => {
    const p = 512;
    const { A, lambda } = spdWithClusters(p, 512);
    const ref = symmetricEigen(A, p); // p ≥ threshold still runs tred2/tql2 on the sync path
    const sorted = Float64Array.from(lambda).sort().reverse();
    for (const r of [await symmetricEigenAsync(A, p), runEigenSteps(eigenSteps(A, p))]) {
      const { res, orth } = largeChecks(A, p, r);
      expect(res).toBeLessThan(1e-9);
      expect(orth).toBeLessThan(1e-10);
      expect(maxDiff(r.values, ref.values)).toBeLessThanOrEqual(1e-10 * ref.values[0]);
      expect(maxDiff(r.values, sorted)).toBeLessThanOrEqual(1e-10 * sorted[0]);
      // exactly-equal cluster: the 10 vectors span the same space as the reference's
      let proj = 0;
      for (let a = 0; a < 10; a++) {
        const ja = sorted.indexOf(0.5) + a;
        let s = 0;
        for (let b = 0; b < 10; b++) {
          const jb = sorted.indexOf(0.5) + b;
          let d = 0;
          for (let i = 0; i < p; i++) d += r.vectorsT[ja * p + i] * ref.vectorsT[jb * p + i];
          s += d * d;
        }
        proj = Math.max(proj, Math.abs(s - 1));
      }
      expect(proj).toBeLessThan(1e-9);
    }
  });

  it("reports its phases' work in order, each phase's count rising to its total, and the same bits with or without it", () => {
    const p = 400; // ten blocked panels (PANEL = 32), the unblocked tail, seven back-transform blocks
    const { A } = spdWithClusters(p, 401);
    const events: [string, number, number][] = [];
    const heard = runEigenSteps(eigenSteps(A, p, (phase, done, total) => events.push([phase, done, total])));
    const plain = runEigenSteps(eigenSteps(A, p));
    expect(Buffer.from(heard.vectorsT.buffer).equals(Buffer.from(plain.vectorsT.buffer))).toBe(true);
    expect(Buffer.from(heard.values.buffer).equals(Buffer.from(plain.values.buffer))).toBe(true);
    const phases = [...new Set(events.map((e) => e[0]))];
    expect(phases).toEqual(['Householder reduction', 'divide and conquer', 'back-transform']);
    for (const phase of ['Householder reduction', 'back-transform']) {
      const mine = events.filter((e) => e[0] === phase);
      expect(mine.length).toBeGreaterThan(2);
      for (let i = 1; i < mine.length; i++) expect(mine[i][1]).toBeGreaterThan(mine[i - 1][1]);
      const [, done, total] = mine[mine.length - 1];
      expect(done).toBe(total);
    }
    // The reduction's count is (4/3)·p³; the back-transform's two products per block, ≈ 2·p³.
    expect(events.find((e) => e[0] === 'Householder reduction')![2]).toBeCloseTo((4 / 3) * p ** 3, -3);
    const back = events.find((e) => e[0] === 'back-transform')![2];
    expect(back / (2 * p ** 3)).toBeGreaterThan(0.95);
    expect(back / (2 * p ** 3)).toBeLessThan(1.2);
    expect(events.filter((e) => e[0] === 'divide and conquer')).toEqual([['divide and conquer', 0, 0]]);
  });

  it('p=1024 SPD with clusters on ONNX Runtime', async () => {
    const p = 1024;
    const { A, lambda } = spdWithClusters(p, 1024);
    const r = await symmetricEigenAsync(A, p);
    const { res, orth } = largeChecks(A, p, r);
    expect(res).toBeLessThan(1e-9);
    expect(orth).toBeLessThan(1e-10);
    const sorted = Float64Array.from(lambda).sort().reverse();
    expect(maxDiff(r.values, sorted)).toBeLessThanOrEqual(1e-10 * sorted[0]);
  }, 30_000);

  it('indefinite, reducible and diagonal input (zero reflectors, negative rank-one ties)', async () => {
    const p = LARGE_EIGEN_MIN_P + 16;
    const { normal } = rng(77);
    const A = new Float64Array(p * p);
    for (let i = 0; i < p; i++) for (let k = 0; k <= i; k++) A[i * p + k] = A[k * p + i] = normal();
    // two decoupled blocks
    for (let i = 0; i < 100; i++) for (let k = 100; k < p; k++) A[i * p + k] = A[k * p + i] = 0;
    const D = new Float64Array(p * p);
    for (let i = 0; i < p; i++) D[i * p + i] = [3, -1, 2, 0][i % 4];
    for (const M of [A, D]) {
      const r = await symmetricEigenAsync(M, p);
      const ref = symmetricEigen(M, p);
      const { res, orth } = largeChecks(M, p, r);
      expect(res).toBeLessThan(1e-9);
      expect(orth).toBeLessThan(1e-10);
      expect(maxDiff(r.values, ref.values)).toBeLessThanOrEqual(1e-10 * Math.abs(ref.values[0]));
    }
  });

  it('below the threshold symmetricEigenAsync is symmetricEigen, bit for bit', async () => {
    const A = randomSymmetric(64, 5);
    const a = await symmetricEigenAsync(A, 64);
    const b = symmetricEigen(A, 64);
    expect(a.values).toEqual(b.values);
    expect(a.vectors).toEqual(b.vectors);
  });
});
