// Test-only references for fitting (issue 14: used by tests, not by calibrate): the one-shot
// fit of a basis from a covariance, and float64 reference projection/reconstruction.
import { invariant } from '../../src/errors.js';
import type { BasisPlan, KvKind } from '../../src/codec/types.js';
import type { Allocation } from '../../src/fit/dp.js';
import { type EigenResult, symmetricEigen } from '../../src/fit/eigen.js';
import type { ErrorTableOptions } from '../../src/fit/error-tables.js';
import { allocateDetailed, prepareAllocation } from '../../src/fit/fit.js';

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
  invariant(
    opts.heldout.length % p === 0 && opts.heldout.length > 0,
    `Error in fitBasisPlan: held-out length (${opts.heldout.length}) must be a positive multiple of dim (${p})`,
  );
  let eig = opts.eigen;
  if (!eig) {
    invariant(opts.cov !== undefined, 'Error in fitBasisPlan: pass cov or eigen');
    eig = symmetricEigen(opts.cov, p);
  }
  const tables = prepareAllocation({
    ...opts,
    mean: Float64Array.from(opts.mean),
    vectors: eig.vectors,
    values: eig.values,
    heldoutTokens: opts.heldout.length / p,
  });
  const { plan, allocation } = allocateDetailed(tables, opts.budgetBits);
  let energy = 0;
  for (let i = 0; i < tables.none.length; i++) energy += tables.none[i];
  return { plan, allocation, heldoutEnergy: energy, heldoutTokens: tables.tokens, eigenvalues: eig.values };
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
  C: Float32Array,
  mean: ArrayLike<number>,
  basis: Float32Array,
  r: number,
  tokens = r > 0 ? C.length / r : 0,
): Float32Array {
  const p = mean.length;
  invariant(basis.length === p * r, `Error in reconstruct: basis length (${basis.length}) must be p*r (${p}*${r})`);
  invariant(
    Number.isInteger(tokens) && C.length === tokens * r,
    `Error in reconstruct: C length (${C.length}) must be tokens*r (${tokens}*${r})`,
  );
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
