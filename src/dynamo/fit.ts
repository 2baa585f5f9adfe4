// Tested by test/dynamo/allocate.test.ts.
/**
 * Fitting one basis for the Dynamo kernels: eigenbasis of the block covariance → float32 mean and
 * projection as the kernels will hold them → held-out coefficients exactly as their SGEMM hands
 * them to the quantizers → error tables measured with the kernels' quantizers → the DP → the
 * ranges and the projection's column order. The tables and the DP are kvtc's own
 * (src/fit/error-tables.ts, src/fit/dp.ts); this file only names the kernels' menu:
 *
 *  - drop a component: 0 bytes (its column left out of the projection);
 *  - FP8 (static, per component): the kernels cast the raw coefficient, unscaled
 *    (kvtc_quantize_fp8_kernel): 1 byte, no per-row overhead; its error depends on each value's
 *    magnitude — saturation at ±448, 3-bit mantissa, subnormal floor 2⁻⁹ — and on the GPU's
 *    path (kernels.ts);
 *  - IntX(b) range (dynamic, per group): per row the range's own float32 min/max set the grid
 *    (kvtc_minmax_reduce_kernel, then kvtc_quantize_intx_kernel / kvtc_dequantize_intx_kernel):
 *    width·b/8 bytes of codes + 8 bytes of float32 min and max (kvtc_range_metadata_size).
 *    Candidate boundaries lie on a granule g, a multiple of 8, so every width is a whole number
 *    of bytes at every bit width (the packing rule of kernels.ts checkRanges); a last group cut
 *    at p that breaks that rule is marked Infinity.
 * Every cost is a whole number of bytes, so the DP's unit is a byte. The 40-byte range headers
 * are per kernel call, not per row, and are left out of the budget.
 *
 * Columns: the kernels quantize contiguous ranges of the projection's output columns, and any
 * column order is a valid projection (the decoder multiplies by the same matrix transposed).
 * So the allocation's FP8 components — independent of each other — are gathered into one Fp8
 * range first, then each IntX group becomes its own range (its own per-row min/max), and dropped
 * components are left out; pca_components is what is stored.
 *
 * Truncated fit (dynamoFitComponents): only k ≤ p components are projected and tabled, because
 * no plan can store more: at ⌊2p/r⌋ bytes per block the cheapest stored component (IntX at the
 * smallest allowed width, or FP8's byte) fits at most 8·⌊2p/r⌋ / b_min times. k is rounded up to
 * the granule, so the DP's candidate ranges inside [0, k) are the full fit's; the energy outside
 * the k components is every plan's `residual`. Of those k, only the top r = min(k, n − 1) are
 * eigen-solved: the covariance of n fit blocks (mean removed) has rank ≤ n − 1, so the rest have
 * eigenvalue 0 and any orthonormal completion of its range is an eigenbasis (the dense solver's
 * is arbitrary there too). The completion still matters: held-out blocks have energy outside the
 * fit's span, and at low ratios the DP stores null-space components to capture it. kvtc completes
 * with the feature axes of largest fit variance, orthogonalized against the range (completeRows):
 * bundled model, 16-token blocks (512 features), 128 fit blocks, 8x: relative K/V error 0.153 /
 * 0.559 with them, 0.161 / 0.564 with the dense solver's null vectors, 0.165 / 0.564 with random
 * ones, 0.201 / 0.715 with none. Eigenpairs come from kvtc's truncated solvers, chosen as
 * src/calibrate/fit-pool.ts chooses them (fitSolver).
 *
 * Memory: the DP's back-pointers are one Uint16 per (component, budget byte): p = 16384 at 8x is
 * 16384 × 4097 × 2 B = 134 MB (fewer with a truncated fit: k components, not p).
 */
import { invariant, KvtcError } from '../errors.js';
import { fitSolver, type FitOutput } from '../calibrate/fit-pool.js';
import { runStepsOnOrt, symmetricEigenAsync } from '../fit/eigen-ort.js';
import { gaussian, orthonormalizeRows, RANDOMIZED_EIGEN_SEED, randomizedEigenAsync } from '../fit/eigen-randomized.js';
import type { MatMulRequest } from '../fit/eigen-types.js';
import { LARGE_EIGEN_MIN_P } from '../fit/ort-thresholds.js';
import { gemmABt, transpose } from '../math/gemm.js';
import type { KvKind } from '../codec/types.js';
import { allocateRuns, type CostModel } from '../fit/dp.js';
import { buildTables, tableIndex, type MeasuredTables } from '../fit/error-tables.js';
import {
  fp8Decode,
  fp8Encoder,
  gatherMeanSubtract,
  intxCode,
  intxInterval,
  intxValue,
  projectRows,
  rowBytes,
  slotsPerByte,
  type Fp8Path,
  type KvtcTypeRange,
} from './kernels.js';

export const DEFAULT_INT_BITS: readonly number[] = [2, 4, 8];

/** The kernels' tables: staticErr is [1, p] (FP8), dynamicErr [ceil(p/g), maxGranules, intBits.length]. */
export interface DynamoTables extends MeasuredTables {
  /** IntX bit widths the table measured, in order. */
  intBits: readonly number[];
}

export interface DynamoTableOptions {
  fp8Path?: Fp8Path;
  granule?: number;
  maxGranules?: number;
  intBits?: readonly number[];
  /** Rows used to measure IntX candidates (default 512). */
  sampleRows?: number;
}

export function dynamoGranule(p: number): number {
  return 8 * Math.max(1, Math.ceil(Math.ceil(p / 64) / 8));
}

/** Index of IntX range (start k·g, m granules, intBits[b]) in t.dynamicErr. */
export function intxIndex(t: Pick<DynamoTables, 'maxGranules' | 'intBits'>, k: number, m: number, b: number): number {
  return tableIndex(t.maxGranules, t.intBits.length, k, m, b);
}

/**
 * The most components a plan can store within ⌊2p/ratio⌋ bytes per block at the smallest of
 * `ratios`: every stored component costs at least min(8, smallest IntX width) bits (FP8 is a
 * byte; IntX ranges also pay 8 bytes of min/max, so this is an upper bound). Capped at p.
 */
export function dynamoMaxComponents(p: number, ratios: readonly number[], intBits: readonly number[] = DEFAULT_INT_BITS): number {
  const budgetBytes = Math.floor((2 * p) / Math.min(...ratios));
  const cheapestBits = Math.min(8, ...intBits);
  return Math.min(p, Math.max(1, Math.floor((8 * budgetBytes) / cheapestBits)));
}

/**
 * What the truncated fit keeps of p features: `components` k = min(p, the budget bound at the
 * smallest ratio) rounded up to the granule (so every candidate range the full fit's DP could
 * place inside [0, k) is still a candidate), and `solved` r = min(k, fit blocks − 1): the
 * eigenpairs the covariance has data for (its rank, mean removed, is below the fit blocks);
 * components r..k complete its null space.
 */
export function dynamoFitComponents(
  p: number,
  blocksFit: number,
  ratios: readonly number[],
  intBits: readonly number[] = DEFAULT_INT_BITS,
  granule = dynamoGranule(p),
): { components: number; solved: number } {
  const k = Math.min(p, Math.ceil(dynamoMaxComponents(p, ratios, intBits) / granule) * granule);
  return { components: k, solved: Math.max(1, Math.min(k, blocksFit - 1)) };
}

/** The top k eigenpairs of one basis's covariance: values [k] descending, vectors [p, k]. */
export interface DynamoEigen {
  values: Float64Array;
  vectors: Float64Array;
  /**
   * fit-pool.ts's names — 'dense' (all p), 'randomized', 'dense-truncated' (dense cut to k) —
   * with '+completed' where only the top r < k came from it and completeRows added the rest.
   */
  solver: `${Exclude<FitOutput['solver'], 'two-level'>}${'' | '+completed'}`;
}

/**
 * The top k eigenpairs of cov [p, p]. The top `solved` r (≤ k, default k) come from the solver
 * fit-pool.ts would pick for r (fitSolver): the dense solve when r = p or p is small, the
 * randomized solver when r ≤ RANDOMIZED_MAX_RANK_FRACTION·p, else the dense solve; cut to r. Where
 * r < k the other k − r complete them (completeRows) with eigenvalue 0: r is at least the
 * covariance's rank, so the top r span its whole range and what is left is its null space.
 */
export async function dynamoEigen(
  cov: Float64Array,
  p: number,
  k: number,
  opts: { solved?: number; threads?: number } = {},
): Promise<DynamoEigen> {
  const r = opts.solved ?? k;
  invariant(
    Number.isInteger(k) && Number.isInteger(r) && r >= 1 && r <= k && k <= p,
    `Error in dynamoEigen: need integers 1 ≤ solved (${r}) ≤ k (${k}) ≤ p (${p})`,
  );
  const base = fitSolver({ dim: p, maxRank: r });
  const threads = opts.threads ?? 0;
  let values: Float64Array;
  let vectorsT: Float64Array; // [r, p] (or [p, p] from a full dense solve)
  if (base === 'randomized') {
    const e = await randomizedEigenAsync(cov, p, r, { threads });
    values = e.values;
    vectorsT = e.vectorsT;
  } else {
    const full = await symmetricEigenAsync(cov, p, { threads });
    if (k === p && r === p) return { values: full.values, vectors: full.vectors, solver: 'dense' };
    values = full.values;
    vectorsT = full.vectorsT;
  }
  const solver = base === 'randomized' ? 'randomized' : 'dense-truncated';
  if (r === k) return { values: values.slice(0, k), vectors: transpose(vectorsT.subarray(0, k * p), k, p), solver };
  const diag = Float64Array.from({ length: p }, (_, i) => cov[i * p + i]);
  const steps = completeRowsSteps(vectorsT, r, k, p, diag);
  const Vt = p >= LARGE_EIGEN_MIN_P ? await runStepsOnOrt(steps, threads) : runStepsInJs(steps);
  const all = new Float64Array(k); // the completion's eigenvalues are 0
  all.set(values.subarray(0, r));
  return { values: all, vectors: transpose(Vt, k, p), solver: `${solver}+completed` };
}

/** Seed of the Gaussian rows that replace a dependent axis in completeRows (fixed: deterministic). */
const COMPLETION_SEED = RANDOMIZED_EIGEN_SEED + 1;

/**
 * Rows Vt [≥ r, p] (orthonormal; the first r used) → [k, p]: those r rows (up to rounding), then
 * k − r unit rows orthogonal to them and to each other: the feature axes in descending order of
 * `diag` (the fit's per-feature variance), stacked under Vt and orthonormalized by
 * eigen-randomized.ts's Cholesky-QR (orthonormalizeRows, full). Its L is lower triangular, so the
 * first r rows keep their span and each axis keeps only its part outside the rows above it,
 * Gram–Schmidt's order. An axis (numerically) inside the span above is replaced by a Gaussian row.
 */
export function* completeRowsSteps(
  Vt: Float64Array,
  r: number,
  k: number,
  p: number,
  diag: Float64Array,
): Generator<MatMulRequest, Float64Array, Float64Array> {
  invariant(
    r >= 1 && r <= k && k <= p && Vt.length >= r * p && diag.length === p,
    `Error in completeRows: need 1 ≤ r (${r}) ≤ k (${k}) ≤ p (${p}) and diag of length p`,
  );
  const X = new Float64Array(k * p);
  X.set(Vt.subarray(0, r * p));
  // Largest variance first (ties by index: Array.prototype.sort is stable).
  const order = Array.from({ length: p }, (_, i) => i).sort((a, b) => diag[b] - diag[a]);
  for (let j = r; j < k; j++) X[j * p + order[j - r]] = 1;
  return yield* orthonormalizeRows(X, k, p, gaussian(COMPLETION_SEED), true);
}

/** completeRowsSteps (or any product steps) with plain-JS products, for small p. */
export function runStepsInJs<T>(steps: Generator<MatMulRequest, T, Float64Array>): T {
  let s = steps.next(new Float64Array(0));
  while (!s.done) {
    const { A, B, m, k, n } = s.value;
    s = steps.next(gemmABt(A, transpose(B, k, n), new Float64Array(m * n), m, n, k));
  }
  return s.value;
}

/** The kernels' menu in the DP's terms (bits per row; bytes are the unit). */
export function dynamoCosts(intBits: readonly number[]): CostModel {
  return { unitBits: 8, staticBits: [8], dynamicBits: intBits, dynamicOverheadBits: 64 };
}

/** C: Float32Array // [H, p] held-out coefficients as the kernels' SGEMM hands them over. */
export function buildDynamoTables(C: Float32Array, H: number, p: number, opts: DynamoTableOptions = {}): DynamoTables {
  const granule = opts.granule ?? dynamoGranule(p);
  const intBits = opts.intBits ?? DEFAULT_INT_BITS;
  const enc = fp8Encoder(opts.fp8Path ?? 'sm89');
  const maxQuant = intBits.map((b) => (1 << b) - 1);
  const measured = buildTables(C, H, p, {
    staticTypes: 1,
    staticColumn(_j, col, out) {
      let e = 0;
      for (let t = 0; t < H; t++) {
        const v = col[t];
        const d = v - fp8Decode(enc(v));
        e += d * d;
      }
      out[0] = e;
    },
    dynamicTypes: intBits.length,
    dynamicValid: (width, b) => width % slotsPerByte(intBits[b]) === 0,
    dynamicError(values, from, to, mn, mx, b, acc) {
      const interval = intxInterval(mn, mx);
      const mq = maxQuant[b];
      let e = acc;
      for (let i = from; i < to; i++) {
        const v = values[i];
        const d = v - intxValue(intxCode(v, mn, interval, mq), mn, interval, mq);
        e += d * d;
      }
      return e;
    },
    granule,
    maxGranules: opts.maxGranules ?? 64,
    sampleRows: opts.sampleRows ?? 512,
  });
  return { ...measured, intBits };
}

export interface DynamoGroup {
  /** Components [start, end) in variance order. */
  start: number;
  end: number;
  type: 'none' | 'fp8' | 'intx';
  /** IntX bits (0 for fp8 and none). */
  bits: number;
}

export interface DynamoAllocation {
  /** Groups covering [0, p) in variance order ('none' runs merged, fp8 runs merged). */
  groups: DynamoGroup[];
  /** Σ measured squared error over the held-out rows, dropped components included. */
  error: number;
  /** Bytes per row of the plan (≤ budget), range headers excluded. */
  bytesPerRow: number;
}

const MAX_CELLS = 2 ** 28;

/** The DP over the kernels' menu within budgetBytes per block row. */
export function allocateDynamo(t: DynamoTables, budgetBytes: number): DynamoAllocation {
  const p = t.dim;
  const cells = (p + 1) * (Math.floor(budgetBytes) + 1);
  if (cells > MAX_CELLS) {
    throw new KvtcError(
      'USAGE',
      `the bit allocation for ${p} features at ${Math.floor(budgetBytes)} bytes per block needs ${((cells * 2) / 2 ** 20).toFixed(0)} MB of back-pointers`,
      {
        fix: 'Use a higher --ratio or a smaller --block-tokens (fewer features per kernel row).',
        context: { features: p, budget_bytes: Math.floor(budgetBytes) },
      },
    );
  }
  const cost = dynamoCosts(t.intBits);
  const a = allocateRuns(t, cost, budgetBytes * 8);
  const groups: DynamoGroup[] = a.runs.map((r) => ({
    start: r.start,
    end: r.end,
    type: r.mode === 'none' ? 'none' : r.mode === 'static' ? 'fp8' : 'intx',
    bits: r.mode === 'dynamic' ? t.intBits[r.type] : 0,
  }));
  return { groups, error: a.error, bytesPerRow: a.bits / 8 };
}

/** Bytes per row of a set of groups. */
export function groupBytes(groups: readonly DynamoGroup[]): number {
  let s = 0;
  for (const gr of groups) {
    if (gr.type === 'fp8') s += gr.end - gr.start;
    else if (gr.type === 'intx') s += ((gr.end - gr.start) * gr.bits) / 8 + 8;
  }
  return s;
}

export interface DynamoBasisTables {
  kind: KvKind;
  layer: number;
  /** Features p. */
  features: number;
  /** Float32Array // [p] the mean as exported. */
  mean: Float32Array;
  /**
   * Float32Array // [p, k] row-major; column j = j-th eigenvector (descending), float32 as
   * exported. k = tables.dim (k = p for a full fit).
   */
  vectors: Float32Array;
  /** [k] eigenvalues, descending. */
  values: Float64Array;
  tables: DynamoTables;
  /**
   * Σ over the held-out blocks of the squared coefficients outside the k components (what every
   * plan loses on top of the DP's error); 0 when k = p.
   */
  residual: number;
}

/** One basis as the kernels run it (a KvtcConfig) plus what kvtc records about it. */
export interface DynamoBasis {
  kind: KvKind;
  layer: number;
  features: number;
  pca_components: number;
  /** Float32Array // [features] */
  mean: Float32Array;
  /** Float32Array // [features, pca_components] row-major */
  projection: Float32Array;
  ranges: KvtcTypeRange[];
  /** Float32Array // [pca_components] calibration variance of each stored column. */
  variances: Float32Array;
  budget_bytes: number;
  bytes_per_block: number;
}

export function prepareDynamoBasis(
  o: {
    kind: KvKind;
    layer: number;
    features: number;
    mean: Float64Array;
    /** The top k eigenpairs (k = values.length ≤ p): values [k] descending, vectors [p, k]. */
    eigen: { values: Float64Array; vectors: Float64Array };
    /** Float32Array // [H, p] held-out block rows. */
    heldout: Float32Array;
    heldoutRows: number;
  } & DynamoTableOptions,
): DynamoBasisTables {
  const p = o.features;
  const k = o.eigen.values.length;
  const H = o.heldoutRows;
  invariant(
    k >= 1 && k <= p && o.mean.length === p && o.eigen.vectors.length === p * k && o.heldout.length >= H * p,
    `Error in prepareDynamoBasis: shapes do not match p = ${p}, k = ${k}`,
  );
  const mean = Float32Array.from(o.mean);
  const vectors = Float32Array.from(o.eigen.vectors);
  // The kernels' own path: f32 subtraction of the f32 mean, SGEMM with the f32 projection (its
  // first k columns: each coefficient is the same dot product as in the full projection).
  const centered = gatherMeanSubtract(o.heldout, mean, H, p);
  const C = projectRows(centered, vectors, H, p, k);
  // The granule is the full fit's (of p), so the candidate ranges inside [0, k) are its ranges.
  const tables = buildDynamoTables(C, H, k, { ...o, granule: o.granule ?? dynamoGranule(p) });
  // Energy outside span(V): ‖x − μ‖² − ‖C‖² (V orthonormal), clamped against rounding.
  let residual = 0;
  if (k < p) {
    for (let i = 0; i < H * p; i++) residual += centered[i] * centered[i];
    for (let i = 0; i < H * k; i++) residual -= C[i] * C[i];
    residual = Math.max(0, residual);
  }
  return { kind: o.kind, layer: o.layer, features: p, mean, vectors, values: o.eigen.values, tables, residual };
}

/** The basis for one budget (bytes per block): DP, then ranges and the projection's columns. */
export function planDynamoBasis(t: DynamoBasisTables, budgetBytes: number): DynamoBasis {
  const a = allocateDynamo(t.tables, budgetBytes);
  return planFromAllocation(t, { ...a, error: a.error + t.residual }, budgetBytes);
}

export function planFromAllocation(t: DynamoBasisTables, a: DynamoAllocation, budgetBytes: number): DynamoBasis {
  const p = t.features;
  const kFit = t.tables.dim;
  invariant(t.vectors.length === p * kFit, `Error in planFromAllocation: vectors length (${t.vectors.length}) must be p*k (${p}*${kFit})`);
  const fp8: number[] = [];
  const intx: { cols: number[]; bits: number }[] = [];
  for (const g of a.groups) {
    if (g.type === 'fp8') for (let j = g.start; j < g.end; j++) fp8.push(j);
    else if (g.type === 'intx') intx.push({ cols: Array.from({ length: g.end - g.start }, (_, i) => g.start + i), bits: g.bits });
  }
  // The kernels need at least one component (cuBLAS with k = 0 leaves the output unset);
  // below one byte per block there is nothing better than the top component in FP8.
  if (fp8.length === 0 && intx.length === 0) fp8.push(0);
  const cols: number[] = [];
  const ranges: KvtcTypeRange[] = [];
  if (fp8.length > 0) {
    ranges.push({ start_idx: 0, end_idx: fp8.length, quant_type: 'Fp8', int_bits: 0 });
    cols.push(...fp8);
  }
  for (const g of intx) {
    ranges.push({ start_idx: cols.length, end_idx: cols.length + g.cols.length, quant_type: 'IntX', int_bits: g.bits });
    cols.push(...g.cols);
  }
  const k = cols.length;
  const projection = new Float32Array(p * k);
  for (let f = 0; f < p; f++) for (let c = 0; c < k; c++) projection[f * k + c] = t.vectors[f * kFit + cols[c]];
  const variances = Float32Array.from(cols, (j) => Math.max(0, t.values[j]));
  return {
    kind: t.kind,
    layer: t.layer,
    features: p,
    pca_components: k,
    mean: t.mean,
    projection,
    ranges,
    variances,
    budget_bytes: Math.floor(budgetBytes),
    bytes_per_block: rowBytes(ranges),
  };
}
