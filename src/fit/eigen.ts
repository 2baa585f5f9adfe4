/**
 * Symmetric eigendecomposition: Householder tridiagonalization + implicit QL
 * (tred2/tql2 of EISPACK via JAMA), on flat Float64Arrays.
 *
 * JAMA walks V by columns (V[k][j], k varying), which is strided in row-major storage.
 * Here the whole algorithm runs on W = Vᵀ, so every inner loop (Householder updates,
 * accumulation, and the QL Givens rotations on pairs of eigenvectors) is a contiguous row.
 * Eigenvectors come out as rows of W and are transposed once at the end.
 *
 * Timings (against ml-matrix's EVD too): docs/benchmarks.md, "Calibration kernels".
 * The DP never keeps more than k = budget/2 = 8p/ratio components (static int2 costs 2 bits):
 * at ratios ≤ 8 that is all p, and the full spectrum is needed; at high ratios and large p
 * calibrate fits only the top k with the truncated randomized solver (eigen-randomized.ts,
 * FitJob.maxRank in src/calibrate/fit-pool.ts).
 *
 * The algorithms live one per file: householder.ts (reduction to tridiagonal form, plain and
 * blocked), tridiagonal-ql.ts (implicit QL), divide-conquer.ts (Cuppen's divide and conquer)
 * and eigen-steps.ts (the large-p driver with its blocked back-transform).
 *
 * For p ≥ LARGE_EIGEN_MIN_P the calibration path (eigen-ort.ts symmetricEigenAsync) runs
 * eigenSteps instead: blocked Householder reduction without accumulation (panel updates as
 * dense products), divide and conquer on the tridiagonal (deflation + Gu–Eisenstat ẑ), and a
 * compact-WY blocked back-transform, with the dense products on ONNX Runtime float64 MatMul
 * (eigen-steps.ts). The sync symmetricEigen keeps tred2/tql2 at every p.
 */
import { invariant } from '../errors.js';
import { transpose } from '../math/gemm.js';
import { tred2 } from './householder.js';
import { tql2 } from './tridiagonal-ql.js';
import type { EigenResult } from './eigen-types.js';

export type { EigenResult, EigenSteps, MatMulRequest } from './eigen-types.js';

/** Eigendecomposition of the symmetric A [p, p] (only read, never modified). */
export function symmetricEigen(A: Float64Array, p: number): EigenResult {
  invariant(A.length === p * p, `Error in symmetricEigen: A length (${A.length}) must be p*p (${p}*${p})`);
  const W = Float64Array.from(A); // symmetric, so W = Aᵀ = A
  const d = new Float64Array(p);
  const e = new Float64Array(p);
  if (p === 1) {
    return { values: Float64Array.of(A[0]), vectors: Float64Array.of(1), vectorsT: Float64Array.of(1) };
  }
  tred2(W, d, e, p);
  tql2(W, d, e, p);
  // tql2 leaves ascending order with eigenvectors as rows of W.
  return descendingResult(d, W, p);
}

/** EigenResult from ascending eigenvalues and their eigenvectors as rows: descending order, sign rule. */
export function descendingResult(ascValues: Float64Array, ascRows: Float64Array, p: number): EigenResult {
  const values = new Float64Array(p);
  const vectorsT = new Float64Array(p * p);
  for (let j = 0; j < p; j++) {
    const src = p - 1 - j;
    values[j] = ascValues[src];
    vectorsT.set(ascRows.subarray(src * p, src * p + p), j * p);
  }
  fixSigns(vectorsT, p);
  return { values, vectors: transpose(vectorsT, p, p), vectorsT };
}

/** Fix signs deterministically: the largest-magnitude entry of each vector (row) is positive. */
function fixSigns(vectorsT: Float64Array, p: number): void {
  for (let j = 0; j < p; j++) {
    const o = j * p;
    let best = 0;
    for (let k = 1; k < p; k++) if (Math.abs(vectorsT[o + k]) > Math.abs(vectorsT[o + best])) best = k;
    if (vectorsT[o + best] < 0) for (let k = 0; k < p; k++) vectorsT[o + k] = -vectorsT[o + k];
  }
}
