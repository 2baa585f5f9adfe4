import { describe, expect, it } from 'vitest';
import { symmetricEigen } from '../../src/fit/eigen.js';
import { randomizedEigen, randomizedEigenAsync, type TruncatedEigen } from '../../src/fit/eigen-randomized.js';
import { LARGE_EIGEN_MIN_P } from '../../src/fit/ort-thresholds.js';
import { gemmABt } from '../../src/math/gemm.js';
import { rng } from '../codec/rng.js';

/**
 * A key-like covariance G·diag(λ)·Gᵀ (G Gaussian / √p): four outlier directions, then a slow
 * power law λ_j ∝ (j+1)^-1.2 (slower than real key spectra, so a hard case for truncation).
 */
function keyLikeCovariance(p: number, seed: number): Float64Array {
  const { normal } = rng(seed);
  const M = new Float64Array(p * p);
  for (let j = 0; j < p; j++) {
    const s = Math.sqrt(((j < 4 ? 20 : 1) * (j + 1) ** -1.2) / p);
    for (let i = 0; i < p; i++) M[i * p + j] = s * normal();
  }
  return gemmABt(M, M, new Float64Array(p * p), p, p, p);
}

/** Σ_c (V_rᵀ v)² of a unit vector v [p] on the k columns of r: 1 when v lies in their span. */
function inSpan(r: TruncatedEigen, v: Float64Array, p: number, k: number): number {
  let n2 = 0;
  for (let c = 0; c < k; c++) {
    let d = 0;
    for (let i = 0; i < p; i++) d += r.vectorsT[c * p + i] * v[i];
    n2 += d * d;
  }
  return n2;
}

function maxOffOrthonormal(r: TruncatedEigen, p: number, k: number): number {
  let worst = 0;
  for (let a = 0; a < k; a++)
    for (let b = 0; b < k; b++) {
      let d = 0;
      for (let i = 0; i < p; i++) d += r.vectors[i * k + a] * r.vectors[i * k + b];
      worst = Math.max(worst, Math.abs(d - (a === b ? 1 : 0)));
    }
  return worst;
}

describe('randomizedEigen against the dense symmetricEigen', () => {
  const p = 160;
  const A = keyLikeCovariance(p, 1);
  const dense = symmetricEigen(A, p);

  for (const k of [64, 16]) {
    // 0.4p and 0.1p
    it(`top ${k} of ${p}: values, subspace, orthonormal columns, sign rule`, () => {
      const r = randomizedEigen(A, p, k);
      expect(r.values.length).toBe(k);
      expect(r.vectors.length).toBe(p * k);
      // Outliers exact; the top half within 1e-2 relative (measured: ≤ 3.7e-4), and every
      // Ritz value a lower bound of its eigenvalue (Cauchy interlacing).
      for (let j = 0; j < 4; j++) expect(Math.abs(r.values[j] / dense.values[j] - 1)).toBeLessThan(1e-10);
      for (let j = 0; j < k / 2; j++) expect(Math.abs(r.values[j] / dense.values[j] - 1)).toBeLessThan(1e-2);
      for (let j = 0; j < k; j++) expect(r.values[j]).toBeLessThanOrEqual(dense.values[j] * (1 + 1e-12));
      for (let j = 1; j < k; j++) expect(r.values[j]).toBeLessThanOrEqual(r.values[j - 1]);
      // Captured variance within 0.1% of the best k-dimensional subspace's.
      let got = 0;
      let best = 0;
      for (let j = 0; j < k; j++) {
        got += r.values[j];
        best += dense.values[j];
      }
      expect(got / best).toBeGreaterThan(0.999);
      // Subspace angles: each of the top k/2 dense eigenvectors lies in span(V_r) (sin² ≤ 1e-2; measured ≤ 5.1e-4).
      for (let j = 0; j < k / 2; j++) expect(1 - inSpan(r, dense.vectorsT.subarray(j * p, j * p + p), p, k)).toBeLessThan(1e-2);
      for (let j = 0; j < 4; j++) expect(1 - inSpan(r, dense.vectorsT.subarray(j * p, j * p + p), p, k)).toBeLessThan(1e-10);
      expect(maxOffOrthonormal(r, p, k)).toBeLessThan(1e-12);
      // A·v = θ·v for the outliers; vectors and vectorsT agree; largest-magnitude entry positive.
      for (let j = 0; j < k; j++) {
        let best = 0;
        for (let i = 0; i < p; i++) {
          expect(r.vectors[i * k + j]).toBe(r.vectorsT[j * p + i]);
          if (Math.abs(r.vectorsT[j * p + i]) > Math.abs(r.vectorsT[j * p + best])) best = i;
        }
        expect(r.vectorsT[j * p + best]).toBeGreaterThan(0);
      }
      for (let j = 0; j < 4; j++) {
        for (let i = 0; i < p; i++) {
          let av = 0;
          for (let c = 0; c < p; c++) av += A[i * p + c] * r.vectorsT[j * p + c];
          expect(Math.abs(av - r.values[j] * r.vectorsT[j * p + i])).toBeLessThan(1e-8 * dense.values[0]); // measured ≤ 2.5e-9
        }
      }
    });
  }

  it('several Cholesky-QR blocks (p = 320, k = 128: sketch of 141 rows) match the dense top of the spectrum', () => {
    const q = 320;
    const B = keyLikeCovariance(q, 4);
    const d = symmetricEigen(B, q);
    const r = randomizedEigen(B, q, 128);
    for (let j = 0; j < 4; j++) expect(Math.abs(r.values[j] / d.values[j] - 1)).toBeLessThan(1e-10);
    for (let j = 0; j < 64; j++) expect(Math.abs(r.values[j] / d.values[j] - 1)).toBeLessThan(1e-2);
    expect(maxOffOrthonormal(r, q, 128)).toBeLessThan(1e-12);
  });

  it('more power iterations converge on the dense result', () => {
    const k = 32;
    const err = (q: number) => {
      const r = randomizedEigen(A, p, k, { powerIterations: q });
      let worst = 0;
      for (let j = 0; j < k / 2; j++) worst = Math.max(worst, Math.abs(r.values[j] / dense.values[j] - 1));
      return worst;
    };
    const e0 = err(0);
    const e2 = err(2);
    const e6 = err(6);
    expect(e2).toBeLessThan(e0);
    expect(e6).toBeLessThan(e2);
    expect(e6).toBeLessThan(1e-5);
  });

  it('is deterministic for a seed, and another seed gives the same top of the spectrum', () => {
    const a = randomizedEigen(A, p, 16);
    const b = randomizedEigen(A, p, 16);
    expect(Buffer.from(a.vectors.buffer).equals(Buffer.from(b.vectors.buffer))).toBe(true);
    const c = randomizedEigen(A, p, 16, { seed: 99 });
    expect(Buffer.from(a.vectors.buffer).equals(Buffer.from(c.vectors.buffer))).toBe(false);
    for (let j = 0; j < 4; j++) expect(c.values[j]).toBeCloseTo(a.values[j], 10);
  });

  it('k + oversample ≥ p falls back to the dense decomposition, cut to k', () => {
    const r = randomizedEigen(A, p, p - 5);
    for (let j = 0; j < p - 5; j++) expect(r.values[j]).toBe(dense.values[j]);
    expect(Array.from(r.vectorsT)).toEqual(Array.from(dense.vectorsT.subarray(0, (p - 5) * p)));
  });
});

describe('randomizedEigen on degenerate covariances', () => {
  // l = k + oversample: 40 (one Cholesky block) and 165 (two blocks, dependent rows in both).
  for (const [p, rank, k] of [
    [96, 20, 30],
    [320, 100, 150],
  ]) {
    it(`rank ${rank} below the sketch (fewer tokens than k + oversample, p=${p}, k=${k}): exact top values, zeros after, orthonormal`, () => {
      const { normal } = rng(5);
      const B = Float64Array.from({ length: p * rank }, normal); // [p, rank]
      const A = gemmABt(B, B, new Float64Array(p * p), p, p, rank);
      const dense = symmetricEigen(A, p);
      const r = randomizedEigen(A, p, k);
      for (let j = 0; j < rank; j++) expect(Math.abs(r.values[j] / dense.values[j] - 1)).toBeLessThan(1e-10);
      for (let j = rank; j < k; j++) expect(Math.abs(r.values[j])).toBeLessThan(1e-10 * dense.values[0]);
      expect(maxOffOrthonormal(r, p, k)).toBeLessThan(1e-12);
    });
  }

  it('a zero covariance (constant features) gives zero values and an orthonormal basis', () => {
    const p = 64;
    const r = randomizedEigen(new Float64Array(p * p), p, 8);
    expect(Array.from(r.values)).toEqual(new Array(8).fill(0));
    expect(maxOffOrthonormal(r, p, 8)).toBeLessThan(1e-12);
  });

  it('rejects a k outside [1, p] and a wrongly sized A', () => {
    const A = keyLikeCovariance(8, 2);
    expect(() => randomizedEigen(A, 8, 0)).toThrow(/k \(0\) must be an integer in \[1, p=8\]/);
    expect(() => randomizedEigen(A, 8, 9)).toThrow(/k \(9\)/);
    expect(() => randomizedEigen(A, 9, 2)).toThrow(/A length \(64\) must be p\*p \(9\*9\)/);
  });
});

describe('randomizedEigenAsync', () => {
  it('runs its products on ONNX Runtime from LARGE_EIGEN_MIN_P on, matching the plain-JS products', async () => {
    const p = LARGE_EIGEN_MIN_P;
    const A = keyLikeCovariance(p, 3);
    const k = Math.round(0.1 * p);
    const js = randomizedEigen(A, p, k);
    const ort = await randomizedEigenAsync(A, p, k, { threads: 1 });
    for (let j = 0; j < k; j++) expect(Math.abs(ort.values[j] / js.values[j] - 1)).toBeLessThan(1e-9);
    // Same vectors up to rounding (eigenvalues are distinct at this spectrum's top).
    for (let j = 0; j < 8; j++)
      for (let i = 0; i < p; i++) expect(Math.abs(ort.vectorsT[j * p + i] - js.vectorsT[j * p + i])).toBeLessThan(1e-8);
    expect(maxOffOrthonormal(ort, p, k)).toBeLessThan(1e-12);
  });
});
// Sizes, tolerances and timings against the dense solver: docs/benchmarks.md, "Calibration kernels".
