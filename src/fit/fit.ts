/**
 * Fits BasisPlans from an eigenbasis (full, or its top k components): projection of the
 * held-out features, measured error tables (prepareAllocation, shared by every target ratio), DP bit allocation, and truncation
 * of the basis to the rank the allocation actually stores (allocate).
 */
import { type Allocation, allocateBits, solveBits } from './dp.js';
import { buildErrorTables, type ErrorTableOptions, type ErrorTables } from './error-tables.js';
import { invariant } from '../errors.js';
import { gemmABt } from '../math/gemm.js';
import { STORED_TYPES } from '../codec/quant.js';
import { type BasisPlan, type KvKind, type PlanCodesLayout, TYPE_BITS } from '../codec/types.js';

/**
 * What every target ratio shares: the held-out features projected on the eigenbasis and the
 * measured error tables. Calibration computes it once and runs the DP per budget.
 *
 * Two sizes: `features` p (the mean, the basis rows, the budget 16p/ratio) and `dim` k, the
 * components the tables cover (columns of coeffs, the error tables, the DP). k = p for a full
 * eigenbasis; k < p for a truncated one (eigen-randomized.ts), whose plans store at most k.
 */
export interface AllocationTables extends ErrorTables {
  kind: KvKind;
  layers: number[];
  /** Features p. */
  features: number;
  /** [p] float64 mean. */
  mean: Float64Array;
  /** [p, k] row-major, column j = j-th eigenvector (descending eigenvalue); float32 from the two-level fit. */
  vectors: Float64Array | Float32Array;
  /** [k] eigenvalues, descending. */
  values: Float64Array;
  /** Float32Array // [H, k] held-out coefficients on the k components (rows in held-out order). */
  coeffs: Float32Array;
  /**
   * Σ over the held-out tokens of the squared error outside the k components (what every plan
   * loses on top of the DP's error); 0 when k = p.
   */
  residual: number;
}

export function prepareAllocation(
  o: {
    kind: KvKind;
    layers: number[];
    /** Features p. */
    dim: number;
    mean: Float64Array;
    /** [p, k] row-major: the top-k eigenvectors as columns (k = values.length; k = p for the full basis). */
    vectors: Float64Array | Float32Array;
    /** [k] eigenvalues, descending. */
    values: Float64Array;
    /** Float32Array // [H, p] held-out features (keys un-rotated). */
    heldout: Float32Array;
    heldoutTokens: number;
    /** The coefficients C = (X − mean)·V [H, k] and the held-out energy outside span(V), computed already (the two-level fit does it through its per-layer bases). */
    coefficients?: { coeffs: Float32Array; residual: number };
  } & ErrorTableOptions,
): AllocationTables {
  const p = o.dim;
  const k = o.values.length;
  const H = o.heldoutTokens;
  invariant(
    k >= 1 && k <= p && o.vectors.length === p * k,
    `Error in prepareAllocation: vectors length (${o.vectors.length}) must be p*k (${p}*${k}, k = values length, 1 ≤ k ≤ p)`,
  );
  const { coeffs: C, residual } = o.coefficients ?? projectHeldout(o, p, k, H);
  invariant(C.length === H * k, `Error in prepareAllocation: coefficients length (${C.length}) must be H*k (${H}*${k})`);
  const tables = buildErrorTables(C, H, k, o);
  return {
    ...tables,
    kind: o.kind,
    layers: o.layers,
    features: p,
    mean: o.mean,
    vectors: o.vectors,
    values: o.values,
    coeffs: C,
    residual,
  };
}

/**
 * C = (X − mean)·V [H, k] over the k components, float64 then float32 (as the encoder sees it),
 * and the held-out energy outside span(V): ‖Y‖² − ‖C‖² (V orthonormal), clamped against rounding.
 */
function projectHeldout(
  o: { heldout: Float32Array; mean: Float64Array; vectors: Float64Array | Float32Array },
  p: number,
  k: number,
  H: number,
): { coeffs: Float32Array; residual: number } {
  const Y = centeredHeldout(o, p, H);
  const vT = new Float64Array(k * p);
  for (let i = 0; i < p; i++) for (let j = 0; j < k; j++) vT[j * p + i] = o.vectors[i * k + j];
  return heldoutFromProduct(Y, gemmABt(Y, vT, new Float64Array(H * k), H, k, p), k < p);
}

/** Y = X − mean, float64 [H, p]: the left factor of the held-out projection (projectHeldout, or on ONNX Runtime in fit-pool.ts). */
export function centeredHeldout(o: { heldout: Float32Array; mean: Float64Array }, p: number, H: number): Float64Array {
  const Y = new Float64Array(H * p);
  for (let t = 0; t < H; t++) for (let i = 0; i < p; i++) Y[t * p + i] = o.heldout[t * p + i] - o.mean[i];
  return Y;
}

/** The coefficients (float32, as the encoder sees them) from C = Y·V, and ‖Y‖² − ‖C‖² where V is truncated. */
export function heldoutFromProduct(Y: Float64Array, C64: Float64Array, truncated: boolean): { coeffs: Float32Array; residual: number } {
  let residual = 0;
  if (truncated) {
    for (let i = 0; i < Y.length; i++) residual += Y[i] * Y[i];
    for (let i = 0; i < C64.length; i++) residual -= C64[i] * C64[i];
    residual = Math.max(0, residual);
  }
  return { coeffs: Float32Array.from(C64), residual };
}

/** The plan for one budget (bits per token of this basis): DP, then truncation to the stored rank. */
export function allocate(t: AllocationTables, budgetBits: number): BasisPlan {
  return allocateDetailed(t, budgetBits).plan;
}

/** allocate, with the DP's allocation; `allocation.error` includes the tables' residual (energy outside the k components). */
export function allocateDetailed(t: AllocationTables, budgetBits: number): { plan: BasisPlan; allocation: Allocation } {
  const allocation = withResidual(t, allocateBits(t, budgetBits));
  return { plan: planFrom(t, layoutFrom(t, allocation, budgetBits)), allocation };
}

function withResidual(t: AllocationTables, a: Allocation): Allocation {
  if (t.residual > 0) a.error += t.residual;
  return a;
}

/** A plan without its basis, mean and variances: what sizing its payload needs (PlanCodesLayout), and the budget. */
export type PlanLayout = PlanCodesLayout & { dim: number; budgetBits: number };

function layoutFrom(t: AllocationTables, allocation: Allocation, budgetBits: number): PlanLayout {
  const k = t.dim;
  const r = allocation.rank;
  const lo = new Float32Array(r);
  const hi = new Float32Array(r);
  for (const g of allocation.groups) {
    if (g.type === 'none' || g.mode !== 'static') continue;
    const ti = STORED_TYPES.indexOf(g.type);
    for (let j = g.start; j < g.end; j++) {
      lo[j] = t.staticLo[ti * k + j];
      hi[j] = t.staticHi[ti * k + j];
    }
  }
  return { kind: t.kind, layers: [...t.layers], dim: t.features, rank: r, groups: allocation.groups, lo, hi, budgetBits };
}

/** The plan of a layout: its basis truncated to the stored rank (p × r floats copied), mean and variances. */
function planFrom(t: AllocationTables, layout: PlanLayout): BasisPlan {
  const p = t.features;
  const k = t.dim;
  const r = layout.rank;
  const basis = new Float32Array(p * r);
  for (let i = 0; i < p; i++) for (let j = 0; j < r; j++) basis[i * r + j] = t.vectors[i * k + j];
  const variances = new Float32Array(r);
  for (let j = 0; j < r; j++) variances[j] = Math.max(0, t.values[j]);
  return {
    kind: layout.kind,
    layers: layout.layers,
    dim: p,
    rank: r,
    mean: Float32Array.from(t.mean),
    basis,
    variances,
    groups: layout.groups,
    lo: layout.lo,
    hi: layout.hi,
    budgetBits: layout.budgetBits,
  };
}

/**
 * One basis allocated at many budgets (calibrate's budget-scale search, ~10 per basis): the DP is
 * solved once up to twice the first budget asked (again, up to twice a larger one), and every
 * budget below that cap is read off the solved table (dp.ts solveAllocation) — the same plans as
 * allocate() at each budget. `layout` copies no basis; `plan` builds the full plan.
 */
export class BasisAllocator {
  private solved?: ReturnType<typeof solveBits>;
  constructor(readonly tables: AllocationTables) {}

  allocation(budgetBits: number): Allocation {
    if (!this.solved || budgetBits > this.solved.capBits) {
      this.solved = undefined; // the old table goes before the larger one is built
      this.solved = solveBits(this.tables, 2 * budgetBits);
    }
    return withResidual(this.tables, this.solved.allocate(budgetBits));
  }

  layout(budgetBits: number): PlanLayout {
    return layoutFrom(this.tables, this.allocation(budgetBits), budgetBits);
  }

  plan(budgetBits: number): BasisPlan {
    return planFrom(this.tables, this.layout(budgetBits));
  }

  /** Lets the solved table go (back-pointers of (k + 1) × (cap units + 1)). */
  release(): void {
    this.solved = undefined;
  }
}

/** Rows [r0, r0+n) of the held-out coefficients, first `rank` (≤ t.dim) columns: Float32Array // [n, rank]. */
export function heldoutCoefficients(t: AllocationTables, r0: number, n: number, rank: number): Float32Array {
  const k = t.dim;
  invariant(rank <= k, `Error in heldoutCoefficients: rank (${rank}) exceeds the tables' components (${k})`);
  const out = new Float32Array(n * rank);
  for (let i = 0; i < n; i++) out.set(t.coeffs.subarray((r0 + i) * k, (r0 + i) * k + rank), i * rank);
  return out;
}

/**
 * The most components a plan of `budgetBits` can store (the cheapest stored type, static int2,
 * costs TYPE_BITS.int2 per component), capped at p: a FitJob.maxRank that loses nothing at that budget.
 */
export function rankForBudget(p: number, budgetBits: number): number {
  const cheapest = Math.min(...STORED_TYPES.map((t) => TYPE_BITS[t]));
  return Math.min(p, Math.max(1, Math.floor(budgetBits / cheapest)));
}

/**
 * Headroom of maxRankForRatios over the budget at scale 1: calibrate's budget-scale search
 * raises the budget where DEFLATE shrinks the payload (docs/codec.md: payloads at 0.75 of the
 * packed codes on p = 512, a scale of ~1.33). Should the search go further, the DP spends the
 * extra bits on the k components it has (plan.rank === tables.dim < tables.features shows it).
 */
export const MAX_RANK_SCALE_MARGIN = 1.5;

/**
 * FitJob.maxRank for a basis of p features that is allocated at every ratio in `ratios`: the
 * components the largest of their budgets (16p / min ratio, times `scaleMargin`) can store.
 */
export function maxRankForRatios(p: number, ratios: number[], scaleMargin = MAX_RANK_SCALE_MARGIN): number {
  return rankForBudget(p, Math.floor(((16 * p) / Math.min(...ratios)) * scaleMargin));
}
