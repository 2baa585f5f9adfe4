/**
 * Fits one BasisPlan: eigendecomposition of the calibration covariance, projection of the
 * held-out features, measured error tables, DP bit allocation, and truncation of the basis
 * to the rank the allocation actually stores.
 */
import { invariant } from '../errors.js';
import { type Allocation, allocateBits } from './dp.js';
import { type EigenResult, symmetricEigen } from './eigen.js';
import { buildErrorTables, type ErrorTableOptions } from './error-tables.js';
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
  const H = opts.heldout.length / p;
  let eig = opts.eigen;
  if (!eig) {
    invariant(opts.cov !== undefined, 'Error in fitBasisPlan: pass cov or eigen');
    eig = symmetricEigen(opts.cov, p);
  }

  // C = (X - mean) · V over all p components, float64 then float32 (as the encoder sees it).
  const Y = new Float64Array(H * p);
  let energy = 0;
  for (let t = 0; t < H; t++) {
    for (let i = 0; i < p; i++) {
      const v = opts.heldout[t * p + i] - opts.mean[i];
      Y[t * p + i] = v;
      energy += v * v;
    }
  }
  const C64 = gemmABt(Y, eig.vectorsT, new Float64Array(H * p), H, p, p);
  const C = Float32Array.from(C64);

  const tables = buildErrorTables(C, H, p, opts);
  const allocation = allocateBits(tables, opts.budgetBits);
  const r = allocation.rank;

  const basis = new Float32Array(p * r);
  for (let i = 0; i < p; i++) for (let j = 0; j < r; j++) basis[i * r + j] = eig.vectors[i * p + j];
  const variances = new Float32Array(r);
  for (let j = 0; j < r; j++) variances[j] = Math.max(0, eig.values[j]);
  const lo = new Float32Array(r);
  const hi = new Float32Array(r);
  for (const g of allocation.groups) {
    if (g.type === 'none' || g.mode !== 'static') continue;
    const ti = STORED_TYPES.indexOf(g.type);
    for (let j = g.start; j < g.end; j++) {
      lo[j] = tables.staticLo[ti * p + j];
      hi[j] = tables.staticHi[ti * p + j];
    }
  }
  const plan: BasisPlan = {
    kind: opts.kind,
    layers: [...opts.layers],
    dim: p,
    rank: r,
    mean: Float32Array.from(opts.mean),
    basis,
    variances,
    groups: allocation.groups,
    lo,
    hi,
  };
  return { plan, allocation, heldoutEnergy: energy, heldoutTokens: H, eigenvalues: eig.values };
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
