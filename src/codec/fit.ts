/**
 * Fits one BasisPlan: eigendecomposition of the calibration covariance, projection of the
 * held-out features, measured error tables, DP bit allocation, and truncation of the basis
 * to the rank the allocation actually stores.
 */
import { invariant } from '../errors.js';
import { type Allocation, allocateBits } from './dp.js';
import { type EigenResult, symmetricEigen } from './eigen.js';
import { buildErrorTables, type ErrorTableOptions, type ErrorTables } from './error-tables.js';
import { gemmABt } from './gemm.js';
import { STORED_TYPES } from './quant.js';
import type { BasisPlan, KvKind } from './types.js';

export interface FitBasisOptions extends ErrorTableOptions {
  kind: KvKind;
  layers: number[];
  /** p */
  dim: number;
  /** [p] calibration mean. */
  mean: Float64Array | Float32Array;
  /** [p, p] calibration covariance (or pass `eigen`). */
  cov?: Float64Array;
  eigen?: EigenResult;
  /** Float32Array // [H, p] held-out features (keys un-rotated), not used for the covariance. */
  heldout: Float32Array;
  /** Bits per token for this basis (= floor(16·p / ratio)). */
  budgetBits: number;
}

export interface FitDetails {
  plan: BasisPlan;
  allocation: Allocation;
  /** Σ over held-out tokens of ‖x - mean‖² (the error of dropping everything). */
  heldoutEnergy: number;
  heldoutTokens: number;
  /** [p] all eigenvalues, descending. */
  eigenvalues: Float64Array;
}

export function fitBasisPlan(opts: FitBasisOptions): BasisPlan {
  return fitBasisPlanDetailed(opts).plan;
}

export function fitBasisPlanDetailed(opts: FitBasisOptions): FitDetails {
  const p = opts.dim;
  invariant(opts.mean.length === p, `Error in fitBasisPlan: mean length (${opts.mean.length}) must be dim (${p})`);
  invariant(opts.heldout.length % p === 0 && opts.heldout.length > 0,
    `Error in fitBasisPlan: held-out length (${opts.heldout.length}) must be a positive multiple of dim (${p})`);
  let eig = opts.eigen;
  if (!eig) {
    invariant(opts.cov !== undefined, 'Error in fitBasisPlan: pass cov or eigen');
    eig = symmetricEigen(opts.cov, p);
  }
  const tables = prepareAllocation({ ...opts, mean: Float64Array.from(opts.mean), vectors: eig.vectors, values: eig.values, heldoutTokens: opts.heldout.length / p });
  const { plan, allocation } = allocateDetailed(tables, opts.budgetBits);
  let energy = 0;
  for (let i = 0; i < tables.none.length; i++) energy += tables.none[i];
  return { plan, allocation, heldoutEnergy: energy, heldoutTokens: tables.tokens, eigenvalues: eig.values };
}

/**
 * What every target ratio shares: the held-out features projected on the full eigenbasis and
 * the measured error tables. Calibration computes it once and runs the DP per budget.
 */
export interface AllocationTables extends ErrorTables {
  kind: KvKind;
  layers: number[];
  mean: Float64Array;
  /** [p, p] row-major, column j = j-th eigenvector (descending eigenvalue). */
  vectors: Float64Array;
  values: Float64Array;
  /** Float32Array // [H, p] held-out coefficients on the full basis (rows in held-out order). */
  coeffs: Float32Array;
}

export function prepareAllocation(o: {
  kind: KvKind;
  layers: number[];
  dim: number;
  mean: Float64Array;
  vectors: Float64Array;
  values: Float64Array;
  /** Float32Array // [H, p] held-out features (keys un-rotated). */
  heldout: Float32Array;
  heldoutTokens: number;
} & ErrorTableOptions): AllocationTables {
  const p = o.dim;
  const H = o.heldoutTokens;
  // C = (X − mean) · V over all p components, float64 then float32 (as the encoder sees it).
  const Y = new Float64Array(H * p);
  for (let t = 0; t < H; t++) for (let i = 0; i < p; i++) Y[t * p + i] = o.heldout[t * p + i] - o.mean[i];
  const vT = new Float64Array(p * p);
  for (let i = 0; i < p; i++) for (let j = 0; j < p; j++) vT[j * p + i] = o.vectors[i * p + j];
  const C = Float32Array.from(gemmABt(Y, vT, new Float64Array(H * p), H, p, p));
  const tables = buildErrorTables(C, H, p, o);
  return { ...tables, kind: o.kind, layers: o.layers, mean: o.mean, vectors: o.vectors, values: o.values, coeffs: C };
}

/** The plan for one budget (bits per token of this basis): DP, then truncation to the stored rank. */
export function allocate(t: AllocationTables, budgetBits: number): BasisPlan {
  return allocateDetailed(t, budgetBits).plan;
}

function allocateDetailed(t: AllocationTables, budgetBits: number): { plan: BasisPlan; allocation: Allocation } {
  const p = t.dim;
  const allocation = allocateBits(t, budgetBits);
  const r = allocation.rank;
  const basis = new Float32Array(p * r);
  for (let i = 0; i < p; i++) for (let j = 0; j < r; j++) basis[i * r + j] = t.vectors[i * p + j];
  const variances = new Float32Array(r);
  for (let j = 0; j < r; j++) variances[j] = Math.max(0, t.values[j]);
  const lo = new Float32Array(r);
  const hi = new Float32Array(r);
  for (const g of allocation.groups) {
    if (g.type === 'none' || g.mode !== 'static') continue;
    const ti = STORED_TYPES.indexOf(g.type);
    for (let j = g.start; j < g.end; j++) {
      lo[j] = t.staticLo[ti * p + j];
      hi[j] = t.staticHi[ti * p + j];
    }
  }
  const plan: BasisPlan = { kind: t.kind, layers: [...t.layers], dim: p, rank: r, mean: Float32Array.from(t.mean), basis, variances, groups: allocation.groups, lo, hi, budgetBits };
  return { plan, allocation };
}

/** Rows [r0, r0+n) of the held-out coefficients, first `rank` columns: Float32Array // [n, rank]. */
export function heldoutCoefficients(t: AllocationTables, r0: number, n: number, rank: number): Float32Array {
  const p = t.dim;
  const out = new Float32Array(n * rank);
  for (let i = 0; i < n; i++) out.set(t.coeffs.subarray((r0 + i) * p, (r0 + i) * p + rank), i * rank);
  return out;
}

/**
 * Reference projection: C[t, j] = Σ_i (X[t, i] - mean[i]) · basis[i, j], float64 sums.
 * X: Float32Array // [T, p], mean // [p], basis: Float32Array // [p, r] -> C: Float32Array // [T, r].
 * (NumPy: (X - mean) @ basis)
 */
export function projectCoefficients(X: Float32Array, mean: ArrayLike<number>, basis: Float32Array, r: number): Float32Array {
  const p = mean.length;
  invariant(basis.length === p * r, `Error in projectCoefficients: basis length (${basis.length}) must be p*r (${p}*${r})`);
  invariant(X.length % p === 0, `Error in projectCoefficients: X length (${X.length}) must be a multiple of p (${p})`);
  const T = X.length / p;
  const C = new Float32Array(T * r);
  const acc = new Float64Array(r);
  for (let t = 0; t < T; t++) {
    acc.fill(0);
    for (let i = 0; i < p; i++) {
      const y = X[t * p + i] - mean[i];
      const o = i * r;
      for (let j = 0; j < r; j++) acc[j] += y * basis[o + j];
    }
    C.set(acc, t * r);
  }
  return C;
}

/**
 * Reference reconstruction: X̂[t, i] = mean[i] + Σ_j C[t, j] · basis[i, j].
 * C: Float32Array // [T, r] -> X̂: Float32Array // [T, p]. (NumPy: C @ basis.T + mean)
 * `tokens` is needed only when r = 0 (everything dropped: X̂ = mean).
 */
export function reconstruct(
  C: Float32Array, mean: ArrayLike<number>, basis: Float32Array, r: number, tokens = r > 0 ? C.length / r : 0,
): Float32Array {
  const p = mean.length;
  invariant(basis.length === p * r, `Error in reconstruct: basis length (${basis.length}) must be p*r (${p}*${r})`);
  invariant(Number.isInteger(tokens) && C.length === tokens * r, `Error in reconstruct: C length (${C.length}) must be tokens*r (${tokens}*${r})`);
  const T = tokens;
  const X = new Float32Array(T * p);
  for (let t = 0; t < T; t++) {
    for (let i = 0; i < p; i++) {
      let s = mean[i];
      const o = i * r;
      for (let j = 0; j < r; j++) s += C[t * r + j] * basis[o + j];
      X[t * p + i] = s;
    }
  }
  return X;
}
