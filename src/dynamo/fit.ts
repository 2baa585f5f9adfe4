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
 * Memory: the DP's back-pointers are one Uint16 per (component, budget byte): p = 16384 at 8x is
 * 16384 × 4097 × 2 B = 134 MB.
 */
import { invariant, KvtcError } from '../errors.js';
import type { EigenResult } from '../fit/eigen.js';
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
  features: number;
  /** Float32Array // [p] the mean as exported. */
  mean: Float32Array;
  /** Float32Array // [p, p] row-major; column j = j-th eigenvector (descending), float32 as exported. */
  vectors: Float32Array;
  /** [p] eigenvalues, descending. */
  values: Float64Array;
  tables: DynamoTables;
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
    eigen: EigenResult;
    /** Float32Array // [H, p] held-out block rows. */
    heldout: Float32Array;
    heldoutRows: number;
  } & DynamoTableOptions,
): DynamoBasisTables {
  const p = o.features;
  invariant(
    o.mean.length === p && o.eigen.vectors.length === p * p && o.heldout.length >= o.heldoutRows * p,
    `Error in prepareDynamoBasis: shapes do not match p = ${p}`,
  );
  const mean = Float32Array.from(o.mean);
  const vectors = Float32Array.from(o.eigen.vectors);
  // The kernels' own path: f32 subtraction of the f32 mean, SGEMM with the f32 projection.
  const C = projectRows(gatherMeanSubtract(o.heldout, mean, o.heldoutRows, p), vectors, o.heldoutRows, p, p);
  const tables = buildDynamoTables(C, o.heldoutRows, p, o);
  return { kind: o.kind, layer: o.layer, features: p, mean, vectors, values: o.eigen.values, tables };
}

/** The basis for one budget (bytes per block): DP, then ranges and the projection's columns. */
export function planDynamoBasis(t: DynamoBasisTables, budgetBytes: number): DynamoBasis {
  return planFromAllocation(t, allocateDynamo(t.tables, budgetBytes), budgetBytes);
}

export function planFromAllocation(t: DynamoBasisTables, a: DynamoAllocation, budgetBytes: number): DynamoBasis {
  const p = t.features;
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
  for (let f = 0; f < p; f++) for (let c = 0; c < k; c++) projection[f * k + c] = t.vectors[f * p + cols[c]];
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
