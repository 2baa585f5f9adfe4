// Tested by test/fit/dp.test.ts.
/**
 * Measured squared error of every quantization choice on held-out projections.
 *
 * C: Float32Array // [H, p] held-out coefficients (mean removed, projected on the full basis),
 * components in variance order. All errors are Σ over the H tokens of squared coefficient
 * error (the basis is orthonormal, so this equals the squared error in feature space).
 *
 *  - 'none' (dropped): Σ c².
 *  - static (per component, independent): error with the static range of that type: the clip
 *    fitted by the candidate search where it beats min/max out of fold (two folds: the first and
 *    second half of the rows), else min/max (crossValidatedRange). Static groups have no per-token overhead, so a static group's error and
 *    cost are sums over its components and the DP may start/end them anywhere (granule 1).
 *  - dynamic (per candidate group [s, e)): the group's per-token joint min/max sets the range,
 *    so each candidate is measured on the data. To keep this tractable at p = 1024, start and
 *    end lie on multiples of a granule g = max(1, ceil(p/64)) (or at p), and widths are at most
 *    16 granules (all widths when p <= 64). At p = 1024: g = 16, widths 16..256, 64 starts ×
 *    16 widths × 4 types. Beyond 256 components a dynamic group's 32-bit overhead is already
 *    ≤ 0.125 bit/component, so longer groups gain almost nothing. Dynamic errors are measured
 *    on a strided subsample of ≤ `dynamicTokens` held-out tokens and scaled to H.
 *
 * Cost: docs/benchmarks.md, "Calibration kernels".
 */
import { invariant } from '../errors.js';
import { halfToFloat } from '../io/fp16.js';
import { STORED_TYPES, dynamicHalves, intLevels } from '../codec/quant.js';
import { affineSquaredError, crossValidatedRange, rangeCandidates, staticSquaredError } from './static-range.js';

export interface ErrorTables {
  /** Components p (columns of C). */
  dim: number;
  /** Held-out tokens the errors are summed over. */
  tokens: number;
  /** Dynamic groups start and end on multiples of this (or end at dim). */
  granule: number;
  /** Dynamic widths are m·granule for m = 1..maxGranules (the last one capped at dim). */
  maxGranules: number;
  /** [p] error of dropping component j. */
  none: Float64Array;
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
  return (startIdx * t.maxGranules + (m - 1)) * 4 + typeIdx;
}

export function buildErrorTables(C: Float32Array, H: number, p: number, opts: ErrorTableOptions = {}): ErrorTables {
  invariant(H > 0 && C.length >= H * p, `Error in buildErrorTables: C length (${C.length}) < H*p (${H}*${p})`);
  const granule = opts.granule ?? defaultGranule(p);
  const maxGranules = Math.min(opts.maxGranules ?? defaultMaxGranules(p, granule), Math.ceil(p / granule));
  invariant(granule >= 1 && maxGranules >= 1, `Error in buildErrorTables: granule (${granule}) and maxGranules (${maxGranules}) must be >= 1`);

  const none = new Float64Array(p);
  const staticErr = new Float64Array(4 * p);
  const staticLo = new Float32Array(4 * p);
  const staticHi = new Float32Array(4 * p);
  const staticTuned = new Uint8Array(4 * p);
  const col = new Float64Array(H);
  const half = Math.floor(H / 2);
  for (let j = 0; j < p; j++) {
    let e0 = 0;
    for (let t = 0; t < H; t++) {
      const v = C[t * p + j];
      col[t] = v;
      e0 += v * v;
    }
    none[j] = e0;
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
      staticErr[ti * p + j] = staticSquaredError(col, H, lo, hi, type);
    }
  }

  const starts = Math.ceil(p / granule);
  const dynamicErr = new Float64Array(starts * maxGranules * 4).fill(Infinity);
  const tables: ErrorTables = { dim: p, tokens: H, granule, maxGranules, none, staticErr, staticLo, staticHi, staticTuned, dynamicErr };
  for (let k = 0; k < starts; k++) {
    for (let m = 1; m <= maxGranules; m++) {
      if (k * granule + (m - 1) * granule >= p) break;
      for (let ti = 0; ti < 4; ti++) dynamicErr[dynamicIndex(tables, k, m, ti)] = 0;
    }
  }
  const hs = Math.min(H, opts.dynamicTokens ?? 256);
  const stride = H / hs;
  const scaleUp = H / hs;
  // Growing a group [s, e) to [s, e') keeps its fp16 offset/scale whenever the new columns
  // stay inside the group's min/max (the usual case: components come in falling variance),
  // so the running sum just continues over the new columns (bit-identical to a fresh sum).
  const prevHalves = new Float64Array(4);
  const prevErr = new Float64Array(4);
  const levelsOf = STORED_TYPES.map(intLevels);
  for (let q = 0; q < hs; q++) {
    const row = Math.floor(q * stride) * p;
    for (let k = 0; k < starts; k++) {
      const s = k * granule;
      let mn = Infinity;
      let mx = -Infinity;
      let prevEnd = s;
      prevHalves.fill(-1);
      for (let m = 1; m <= maxGranules; m++) {
        if (s + (m - 1) * granule >= p) break;
        const e = Math.min(p, s + m * granule);
        const mn0 = mn;
        const mx0 = mx;
        for (let j = prevEnd; j < e; j++) {
          const v = C[row + j];
          if (v < mn) mn = v;
          if (v > mx) mx = v;
        }
        const same = mn === mn0 && mx === mx0;
        for (let ti = 0; ti < 4; ti++) {
          const packed = same ? prevHalves[ti] : dynamicHalves(mn, mx, STORED_TYPES[ti]);
          const off = halfToFloat(packed >>> 16);
          const sc = halfToFloat(packed & 0xffff);
          const err = packed === prevHalves[ti]
            ? affineSquaredError(C, row + prevEnd, row + e, off, sc, levelsOf[ti], prevErr[ti])
            : affineSquaredError(C, row + s, row + e, off, sc, levelsOf[ti]);
          prevHalves[ti] = packed;
          prevErr[ti] = err;
          dynamicErr[dynamicIndex(tables, k, m, ti)] += err * scaleUp;
        }
        prevEnd = e;
      }
    }
  }
  return tables;
}
