/**
 * Fits BasisPlans from an eigenbasis: projection of the held-out features, measured error
 * tables (prepareAllocation, shared by every target ratio), DP bit allocation, and truncation
 * of the basis to the rank the allocation actually stores (allocate).
 */
import { type Allocation, allocateBits } from './dp.js';
import { buildErrorTables, type ErrorTableOptions, type ErrorTables } from './error-tables.js';
import { gemmABt } from '../math/gemm.js';
import { STORED_TYPES } from '../codec/quant.js';
import type { BasisPlan, KvKind } from '../codec/types.js';

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

export function allocateDetailed(t: AllocationTables, budgetBits: number): { plan: BasisPlan; allocation: Allocation } {
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

