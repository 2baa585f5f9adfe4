// Tested by test/dynamo/allocate.test.ts.
/**
 * Fitting one basis for the Dynamo kernels: eigenbasis of the block covariance → float32 mean and
 * projection as the kernels will hold them → held-out coefficients exactly as their SGEMM hands
 * them to the quantizers → measured error tables (tables.ts) → DP (allocate.ts) → the ranges and
 * the projection's column order.
 *
 * Columns: the kernels quantize contiguous ranges of the projection's output columns, and any
 * column order is a valid projection (the decoder multiplies by the same matrix transposed).
 * So the allocation's FP8 components — independent of each other — are gathered into one Fp8
 * range first, then each IntX group becomes its own range (its own per-row min/max), and dropped
 * components are left out; pca_components is what is stored.
 */
import { invariant } from '../errors.js';
import type { EigenResult } from '../fit/eigen.js';
import type { KvKind } from '../codec/types.js';
import { allocateDynamo, type DynamoAllocation } from './allocate.js';
import { gatherMeanSubtract, projectRows, rowBytes, type KvtcTypeRange } from './kernels.js';
import { buildDynamoTables, type DynamoTableOptions, type DynamoTables } from './tables.js';

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

export function prepareDynamoBasis(o: {
  kind: KvKind;
  layer: number;
  features: number;
  mean: Float64Array;
  eigen: EigenResult;
  /** Float32Array // [H, p] held-out block rows. */
  heldout: Float32Array;
  heldoutRows: number;
} & DynamoTableOptions): DynamoBasisTables {
  const p = o.features;
  invariant(o.mean.length === p && o.eigen.vectors.length === p * p && o.heldout.length >= o.heldoutRows * p,
    `Error in prepareDynamoBasis: shapes do not match p = ${p}`);
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
  return { kind: t.kind, layer: t.layer, features: p, pca_components: k, mean: t.mean, projection, ranges, variances, budget_bytes: Math.floor(budgetBytes), bytes_per_block: rowBytes(ranges) };
}
