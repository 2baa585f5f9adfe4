import { EigenvalueDecomposition, Matrix } from 'ml-matrix';
import { describe, expect, it } from 'vitest';
import { symmetricEigen } from '../../src/codec/eigen.js';
import { rng } from './rng.js';

function randomSymmetric(p: number, seed: number, rankDeficient = 0): Float64Array {
  const { normal } = rng(seed);
  const k = p - rankDeficient;
  const B = Float64Array.from({ length: p * k }, normal);
  const A = new Float64Array(p * p);
  for (let i = 0; i < p; i++) for (let j = 0; j < p; j++) {
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

  it('p=256 in well under a second', () => {
    const A = randomSymmetric(256, 9);
    const t0 = performance.now();
    const { values, vectorsT } = symmetricEigen(A, 256);
    expect(performance.now() - t0).toBeLessThan(3000);
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
