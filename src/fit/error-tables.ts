// Tested by test/fit/dp.test.ts and test/dynamo/allocate.test.ts.
/**
 * Measured squared error of every quantization choice on held-out projections, for any target.
 *
 * C: Float32Array // [H, p] held-out coefficients (mean removed, projected on the full basis),
 * components in variance order. All errors are Σ over the H rows of squared coefficient
 * error (the basis is orthonormal, so this equals the squared error in feature space).
 *
 *  - 'none' (dropped): Σ c².
 *  - static (per component, independent): the target measures each column (TableQuantizers.
 *    staticColumn). Static types have no per-row overhead, so a static run's error and cost are
 *    sums over its components and the DP may start/end them anywhere (granule 1).
 *  - dynamic (per candidate group [s, e)): the group's per-row joint min/max sets the range, so
 *    each candidate is measured on the data. To keep this tractable, start and end lie on
 *    multiples of a granule g (or at p) and widths are at most maxGranules granules. Dynamic
 *    errors are measured on a strided subsample of ≤ sampleRows held-out rows and scaled to H.
 *
 * Targets (the quantizers differ, the measurement does not):
 *  - kvtc (buildErrorTables): static int2/int4/int8/fp8 with the clip fitted by the candidate
 *    search where it beats min/max out of fold (two folds: the first and second half of the
 *    rows), else min/max (crossValidatedRange); dynamic with fp16 offset/scale rounded outward;
 *    g = max(1, ceil(p/64)), ≤ 16 granules (all widths when p <= 64): at p = 1024, g = 16,
 *    widths 16..256, 64 starts × 16 widths × 4 types. Beyond 256 components a dynamic group's
 *    32-bit overhead is already ≤ 0.125 bit/component, so longer groups gain almost nothing.
 *  - Dynamo's kernels (src/dynamo/fit.ts): static = the unscaled FP8 cast, dynamic = IntX with
 *    the range's float32 min/max, widths that the kernels cannot pack marked Infinity.
 *
 * Cost: docs/benchmarks.md, "Calibration kernels".
 */
import { invariant } from '../errors.js';
import { halfToFloat } from '../io/fp16.js';
import { STORED_TYPES, dynamicHalves, intLevels } from '../codec/quant.js';
import { affineSquaredError, crossValidatedRange, rangeCandidates, staticSquaredError } from './static-range.js';

/** What buildTables measured: the input of the DP (src/fit/dp.ts allocateRuns). */
export interface MeasuredTables {
  /** Components p (columns of C). */
  dim: number;
  /** Held-out rows the errors are summed over (tokens for kvtc, blocks for Dynamo). */
  tokens: number;
  /** Dynamic groups start and end on multiples of this (or end at dim). */
  granule: number;
  /** Dynamic widths are m·granule for m = 1..maxGranules (the last one capped at dim). */
  maxGranules: number;
  /** [p] error of dropping component j. */
  none: Float64Array;
  /** [S, p] error of component j with static type s. */
  staticErr: Float64Array;
  /** [ceil(p/g), maxGranules, D] error of group [k·g, min(k·g + m·g, p)) with dynamic type d; Infinity where not a valid group. */
  dynamicErr: Float64Array;
}

/** A target's quantizers, as the table builder measures them. */
export interface TableQuantizers {
  staticTypes: number;
  /** Fills out[s] (s < staticTypes) with Σ squared error of component j's held-out values col ([H]). */
  staticColumn(j: number, col: Float64Array, out: Float64Array): void;
  dynamicTypes: number;
  /** Whether a group of `width` components can take dynamic type d (default: always). */
  dynamicValid?(width: number, d: number): boolean;
  /**
   * Σ over C[from, to) of the squared round-trip error with dynamic type d on the grid of a
   * range whose min and max are mn and mx, continuing the running sum acc (the same summation
   * order as a fresh sum, so continuing is bit-identical to starting over).
   */
  dynamicError(C: Float32Array, from: number, to: number, mn: number, mx: number, d: number, acc: number): number;
  granule: number;
  maxGranules: number;
  /** Rows used to measure dynamic candidates. */
  sampleRows: number;
}

/** Index of group (start k·g, m granules, dynamic type d) in dynamicErr. */
export function tableIndex(maxGranules: number, dynamicTypes: number, k: number, m: number, d: number): number {
  return (k * maxGranules + (m - 1)) * dynamicTypes + d;
}

export function buildTables(C: Float32Array, H: number, p: number, q: TableQuantizers): MeasuredTables {
  invariant(H > 0 && C.length >= H * p, `Error in buildTables: C length (${C.length}) < H*p (${H}*${p})`);
  const granule = q.granule;
  const maxGranules = Math.min(q.maxGranules, Math.ceil(p / granule));
  invariant(granule >= 1 && maxGranules >= 1, `Error in buildTables: granule (${granule}) and maxGranules (${maxGranules}) must be >= 1`);
  const S = q.staticTypes;
  const D = q.dynamicTypes;

  const none = new Float64Array(p);
  const staticErr = new Float64Array(S * p);
  const col = new Float64Array(H);
  const out = new Float64Array(S);
  for (let j = 0; j < p; j++) {
    let e0 = 0;
    for (let t = 0; t < H; t++) {
      const v = C[t * p + j];
      col[t] = v;
      e0 += v * v;
    }
    none[j] = e0;
    q.staticColumn(j, col, out);
    for (let s = 0; s < S; s++) staticErr[s * p + j] = out[s];
  }

  const starts = Math.ceil(p / granule);
  const dynamicErr = new Float64Array(starts * maxGranules * D).fill(Infinity);
  const valid = new Uint8Array(starts * maxGranules * D);
  for (let k = 0; k < starts; k++) {
    for (let m = 1; m <= maxGranules; m++) {
      const s = k * granule;
      if (s + (m - 1) * granule >= p) break;
      const w = Math.min(p, s + m * granule) - s;
      for (let d = 0; d < D; d++) {
        if (q.dynamicValid && !q.dynamicValid(w, d)) continue;
        const i = tableIndex(maxGranules, D, k, m, d);
        valid[i] = 1;
        dynamicErr[i] = 0;
      }
    }
  }
  const hs = Math.min(H, q.sampleRows);
  const stride = H / hs;
  const prevErr = new Float64Array(D);
  for (let r = 0; r < hs; r++) {
    const row = Math.floor(r * stride) * p;
    for (let k = 0; k < starts; k++) {
      const s = k * granule;
      let mn = Infinity;
      let mx = -Infinity;
      let prevEnd = s;
      for (let m = 1; m <= maxGranules; m++) {
        if (s + (m - 1) * granule >= p) break;
        const e = Math.min(p, s + m * granule);
        const mn0 = mn;
        const mx0 = mx;
        for (let j = row + prevEnd; j < row + e; j++) {
          const v = C[j];
          if (v < mn) mn = v;
          if (v > mx) mx = v;
        }
        // A wider group keeps its grid while its min and max do not move (the usual case:
        // components come in falling variance), so the running sum just continues.
        const same = m > 1 && mn === mn0 && mx === mx0;
        for (let d = 0; d < D; d++) {
          const err = same
            ? q.dynamicError(C, row + prevEnd, row + e, mn, mx, d, prevErr[d])
            : q.dynamicError(C, row + s, row + e, mn, mx, d, 0);
          prevErr[d] = err;
          const i = tableIndex(maxGranules, D, k, m, d);
          if (valid[i]) dynamicErr[i] += err * stride;
        }
        prevEnd = e;
      }
    }
  }
  return { dim: p, tokens: H, granule, maxGranules, none, staticErr, dynamicErr };
}

/** kvtc's tables: STORED_TYPES static (with their fitted ranges) and dynamic. */
export interface ErrorTables extends MeasuredTables {
  /** [4, p] static error of component j with STORED_TYPES[t]. */
  staticErr: Float64Array;
  /** [4, p] fitted static ranges per type. */
  staticLo: Float32Array;
  staticHi: Float32Array;
  /** [4, p] 1 where the static range is the tuned clip, 0 where it is min/max (crossValidatedRange). */
  staticTuned: Uint8Array;
  /** [ceil(p/g), maxGranules, 4] error of group [k·g, min(k·g + m·g, p)); Infinity where not a valid group. */
  dynamicErr: Float64Array;
}

export interface ErrorTableOptions {
  granule?: number;
  maxGranules?: number;
  /** Tokens used to measure dynamic candidates (default 256). */
  dynamicTokens?: number;
}

export function defaultGranule(p: number): number {
  return Math.max(1, Math.ceil(p / 64));
}

export function defaultMaxGranules(p: number, granule: number): number {
  return p <= 64 ? Math.ceil(p / granule) : 16;
}

export function dynamicIndex(t: ErrorTables, startIdx: number, m: number, typeIdx: number): number {
  return tableIndex(t.maxGranules, STORED_TYPES.length, startIdx, m, typeIdx);
}

export function buildErrorTables(C: Float32Array, H: number, p: number, opts: ErrorTableOptions = {}): ErrorTables {
  const granule = opts.granule ?? defaultGranule(p);
  const staticLo = new Float32Array(4 * p);
  const staticHi = new Float32Array(4 * p);
  const staticTuned = new Uint8Array(4 * p);
  const half = Math.floor(H / 2);
  const levelsOf = STORED_TYPES.map(intLevels);
  // fp16 offset/scale of the last (min, max) per type: a growing group usually keeps them.
  const lastMin = new Float64Array(4).fill(NaN);
  const lastMax = new Float64Array(4).fill(NaN);
  const lastOff = new Float64Array(4);
  const lastSc = new Float64Array(4);
  const measured = buildTables(C, H, p, {
    staticTypes: STORED_TYPES.length,
    staticColumn(j, col, out) {
      const cands = rangeCandidates(col);
      const a = col.subarray(0, half);
      const b = col.subarray(half, H);
      const foldA = { cands: rangeCandidates(a), values: a };
      const foldB = { cands: rangeCandidates(b), values: b };
      for (let ti = 0; ti < 4; ti++) {
        const type = STORED_TYPES[ti];
        const { lo, hi, source } = crossValidatedRange(cands, col, foldA, foldB, type);
        staticLo[ti * p + j] = lo;
        staticHi[ti * p + j] = hi;
        staticTuned[ti * p + j] = source === 'tuned' ? 1 : 0;
        out[ti] = staticSquaredError(col, H, lo, hi, type);
      }
    },
    dynamicTypes: STORED_TYPES.length,
    dynamicError(values, from, to, mn, mx, ti, acc) {
      if (mn !== lastMin[ti] || mx !== lastMax[ti]) {
        const packed = dynamicHalves(mn, mx, STORED_TYPES[ti]);
        lastMin[ti] = mn;
        lastMax[ti] = mx;
        lastOff[ti] = halfToFloat(packed >>> 16);
        lastSc[ti] = halfToFloat(packed & 0xffff);
      }
      return affineSquaredError(values, from, to, lastOff[ti], lastSc[ti], levelsOf[ti], acc);
    },
    granule,
    maxGranules: opts.maxGranules ?? defaultMaxGranules(p, granule),
    sampleRows: opts.dynamicTokens ?? 256,
  });
  return { ...measured, staticLo, staticHi, staticTuned };
}
