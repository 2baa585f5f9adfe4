/**
 * The static-range search of calibration: for each stored component, the clip range [lo, hi]
 * that minimizes the squared error of its type on the calibration coefficients, and the error
 * measurements the error tables are built from. The quantizer it measures is the runtime one
 * of src/codec/quant.ts (same offset, scale, rounding and float32 rounding of the decode).
 */
import { FP8_TO_FLOAT, fp8MagnitudeCode } from '../codec/fp8.js';
import { intLevels, staticOffset, staticScale, type StoredType } from '../codec/quant.js';

/** Σ (v - q(v))² of values [n] under a static range (float32-rounded lo/hi, as stored). */
export function staticSquaredError(values: Float64Array, n: number, lo: number, hi: number, type: StoredType): number {
  const l = Math.fround(lo);
  const h = Math.fround(hi);
  return affineSquaredError(values, 0, n, staticOffset(l, h, type), staticScale(l, h, type), intLevels(type));
}

/**
 * Σ (v - x̂(v))² over values[from, to) for one offset/scale: the quantizer of encodeValue /
 * decodeValue inlined (the error tables call this ~10⁸ times at p = 1024).
 */
export function affineSquaredError(
  values: Float64Array | Float32Array,
  from: number,
  to: number,
  offset: number,
  scale: number,
  levels: number,
  acc = 0,
): number {
  // `acc` continues a running sum: affineSquaredError(v, a, c, ...) is bit-identical to
  // affineSquaredError(v, b, c, ..., affineSquaredError(v, a, b, ...)).
  let err = acc;
  if (scale === 0) {
    for (let i = from; i < to; i++) {
      const d = values[i] - Math.fround(offset);
      err += d * d;
    }
    return err;
  }
  if (levels > 0) {
    for (let i = from; i < to; i++) {
      const v = values[i];
      const u = (v - offset) / scale;
      // Math.round(u) clamped to [0, levels], as in quantizeStaticRun (truncation is faster).
      let c = (u + 0.5) | 0;
      if (c - u > 0.5) c--;
      c = u < 0 ? 0 : u > levels ? levels : c;
      const d = v - Math.fround(offset + c * scale);
      err += d * d;
    }
    return err;
  }
  for (let i = from; i < to; i++) {
    const v = values[i];
    const u = (v - offset) / scale;
    const q = u < 0 ? -FP8_TO_FLOAT[fp8MagnitudeCode(-u)] : FP8_TO_FLOAT[fp8MagnitudeCode(u)];
    const d = v - Math.fround(offset + q * scale);
    err += d * d;
  }
  return err;
}

/**
 * Static clip range [lo, hi] for one component over its calibration values, minimizing the
 * measured squared error of `type`. Why a candidate search and not a formula: the best clip
 * trades rounding error (falls with a narrower range) against clipping error (rises), and
 * that trade depends on the tails of the real distribution and on the type (int2 wants a
 * tight clip, int8 nearly the full range, fp8's log spacing is different again). Candidates:
 * symmetric ranges about the median at quantiles of |x - median| and asymmetric quantile
 * pairs, then a local ×{0.85..1.15} refinement of the winner. Values are subsampled to
 * ≤ 1024 (strided, plus the true min and max so the full range stays a candidate) to bound
 * cost at p = 1024 components × 4 types; the caller measures the chosen range on all values.
 */
export function fitStaticRange(values: Float64Array, type: StoredType): { lo: number; hi: number } {
  return fitStaticRangeFrom(rangeCandidates(values), type);
}

/** Subsampled values and candidate clip ranges of one component, shared by all types. */
export interface RangeCandidates {
  values: Float64Array;
  /** `values` sorted ascending (the candidate search walks it bin by bin). */
  sorted: Float64Array;
  /** [lo0, hi0, lo1, hi1, ...] */
  ranges: Float64Array;
}

export function rangeCandidates(values: Float64Array): RangeCandidates {
  const n0 = values.length;
  if (n0 === 0) return { values: new Float64Array(0), sorted: new Float64Array(0), ranges: new Float64Array(0) };
  const stride = Math.max(1, Math.ceil(n0 / 1024));
  const ns = Math.ceil(n0 / stride);
  // The strided subsample plus the true extremes: tails decide the int8/fp8 optimum.
  const n = stride > 1 ? ns + 2 : ns;
  const v = new Float64Array(n);
  for (let i = 0; i < ns; i++) v[i] = values[i * stride];
  if (stride > 1) {
    let mn = Infinity;
    let mx = -Infinity;
    for (let i = 0; i < n0; i++) {
      const x = values[i];
      if (x < mn) mn = x;
      if (x > mx) mx = x;
    }
    v[ns] = mn;
    v[ns + 1] = mx;
  }
  const sorted = Float64Array.from(v).sort();
  const q = (f: number): number => sorted[Math.min(n - 1, Math.max(0, Math.round(f * (n - 1))))];
  const med = q(0.5);
  // |x - med| in ascending order: merge the two runs that walk outward from the median in
  // `sorted` (the same multiset as sorting the deviations, in O(n)).
  const dev = new Float64Array(n);
  let lo = Math.min(n - 1, Math.max(0, Math.round(0.5 * (n - 1))));
  while (lo > 0 && sorted[lo - 1] >= med) lo--;
  let hi = lo; // sorted[hi..] >= med, sorted[..lo-1] < med
  lo--;
  for (let i = 0; i < n; i++) {
    const a = lo >= 0 ? med - sorted[lo] : Infinity;
    const b = hi < n ? sorted[hi] - med : Infinity;
    if (a < b) {
      dev[i] = Math.abs(sorted[lo] - med);
      lo--;
    } else {
      dev[i] = Math.abs(sorted[hi] - med);
      hi++;
    }
  }
  const qd = (f: number): number => dev[Math.min(n - 1, Math.max(0, Math.round(f * (n - 1))))];
  const ranges: number[] = [];
  for (const f of [1, 0.9999, 0.999, 0.995, 0.99, 0.98, 0.95, 0.9, 0.8]) {
    const a = qd(f);
    ranges.push(med - a, med + a);
  }
  for (const f of [0, 1e-4, 1e-3, 5e-3, 0.01, 0.02, 0.05, 0.1]) ranges.push(q(f), q(1 - f));
  return { values: v, sorted, ranges: Float64Array.from(ranges) };
}

export function fitStaticRangeFrom(c: RangeCandidates, type: StoredType): { lo: number; hi: number } {
  const v = c.values;
  const n = v.length;
  if (n === 0) return { lo: 0, hi: 0 };
  let bestLo = c.ranges[0];
  let bestHi = c.ranges[1];
  let bestErr = Infinity;
  const sorted = c.sorted;
  const walk = sorted.length === n && Number.isFinite(sorted[0]) && Number.isFinite(sorted[n - 1]);
  const tryRange = (lo: number, hi: number): void => {
    const e = walk ? sortedStaticSquaredError(sorted, lo, hi, type) : staticSquaredError(v, n, lo, hi, type);
    if (e < bestErr) {
      bestErr = e;
      bestLo = lo;
      bestHi = hi;
    }
  };
  for (let i = 0; i < c.ranges.length; i += 2) tryRange(c.ranges[i], c.ranges[i + 1]);
  const mid = (bestLo + bestHi) / 2;
  const half = (bestHi - bestLo) / 2;
  for (const s of [0.85, 0.9, 0.95, 1.05, 1.1, 1.15]) tryRange(mid - half * s, mid + half * s);
  return { lo: Math.fround(bestLo), hi: Math.fround(bestHi) };
}

/** Where a component's static range came from: the tuned clip search, or the plain min/max. */
export type RangeSource = 'tuned' | 'minmax';

/** [min, max] of values[0, n), float32-rounded outward so no value is clipped by the rounding. */
export function minMaxRange(values: Float64Array, n = values.length): { lo: number; hi: number } {
  let lo = Infinity;
  let hi = -Infinity;
  for (let i = 0; i < n; i++) {
    const x = values[i];
    if (x < lo) lo = x;
    if (x > hi) hi = x;
  }
  if (!(lo <= hi)) return { lo: 0, hi: 0 };
  let l = Math.fround(lo);
  let h = Math.fround(hi);
  if (l > lo) l = nextFloat32Down(l);
  if (h < hi) h = nextFloat32Up(h);
  return { lo: l, hi: h };
}

const F32 = new Float32Array(1);
const U32 = new Uint32Array(F32.buffer);
function nextFloat32Up(x: number): number {
  if (x === 0) return 1.401298464324817e-45;
  F32[0] = x;
  U32[0] += x > 0 ? 1 : -1;
  return F32[0];
}
function nextFloat32Down(x: number): number {
  return -nextFloat32Up(-x);
}

/**
 * The static range of one component and type, chosen on tokens the clip search did not see.
 * The candidate search (fitStaticRangeFrom) minimizes the error on the values it is given, and
 * at high rates (int8, fp8: many levels, small rounding error) the clip it finds fits the
 * tails of those values rather than of the distribution: on unseen text it can lose to plain
 * min/max. So the search is cross-validated in two folds: tuned on half A and measured on half
 * B, tuned on B and measured on A, against min/max taken the same way. The tuned range is kept
 * (refitted on all values) only where it has the smaller out-of-fold error; elsewhere min/max of
 * all values. `all` are the values, `a` and `b` the two folds (a ∪ b = all, disjoint).
 */
export function crossValidatedRange(
  all: RangeCandidates,
  allValues: Float64Array,
  a: { cands: RangeCandidates; values: Float64Array },
  b: { cands: RangeCandidates; values: Float64Array },
  type: StoredType,
): { lo: number; hi: number; source: RangeSource } {
  if (a.values.length === 0 || b.values.length === 0) return { ...fitStaticRangeFrom(all, type), source: 'tuned' };
  const err = (v: Float64Array, r: { lo: number; hi: number }) => staticSquaredError(v, v.length, r.lo, r.hi, type);
  const tunedA = fitStaticRangeFrom(a.cands, type);
  const tunedB = fitStaticRangeFrom(b.cands, type);
  const mmA = minMaxRange(a.values);
  const mmB = minMaxRange(b.values);
  const tuned = err(b.values, tunedA) + err(a.values, tunedB);
  const minmax = err(b.values, mmA) + err(a.values, mmB);
  if (tuned < minmax) return { ...fitStaticRangeFrom(all, type), source: 'tuned' };
  return { ...minMaxRange(allValues), source: 'minmax' };
}

/** Every finite fp8 value in ascending order (253: ±magnitudes of codes 1..126 and 0). */
const FP8_SORTED: Float64Array = (() => {
  const a = new Float64Array(253);
  for (let c = 0; c <= 126; c++) {
    a[126 + c] = FP8_TO_FLOAT[c];
    a[126 - c] = -FP8_TO_FLOAT[c];
  }
  return a;
})();
/** FP8_UPPER[i] = midpoint of FP8_SORTED[i] and [i+1] (Infinity for the last). */
const FP8_UPPER: Float64Array = Float64Array.from(FP8_SORTED, (x, i) => (i < 252 ? (x + FP8_SORTED[i + 1]) / 2 : Infinity));

/**
 * staticSquaredError over finite values sorted ascending, summed in sorted order. Same
 * quantizer (offset, scale, rounding and fround of affineSquaredError), walked bin by bin:
 * the decoded value only changes when v crosses a bin edge, so each value costs a compare
 * and a multiply-add, and the exact quantizer runs only at bin changes or within 1e-7·scale
 * of an edge (where the rounding of (v - offset)/scale decides). Equal to staticSquaredError
 * up to summation order (~1e-15 relative). Used to rank candidate ranges.
 */
export function sortedStaticSquaredError(sorted: Float64Array, lo: number, hi: number, type: StoredType): number {
  const n = sorted.length;
  const l = Math.fround(lo);
  const h = Math.fround(hi);
  const off = staticOffset(l, h, type);
  const sc = staticScale(l, h, type);
  const levels = intLevels(type);
  if (sc === 0 || n === 0) return affineSquaredError(sorted, 0, n, off, sc, levels);
  const margin = 1e-7 * sc + 1e-13 * Math.abs(off);
  return levels > 0 ? walkInt(sorted, off, sc, levels, margin) : walkFp8(sorted, off, sc, margin);
}

function walkInt(sorted: Float64Array, off: number, sc: number, levels: number, margin: number): number {
  const n = sorted.length;
  let err = 0;
  let x = 0; // decoded value of the current bin
  let key = -1; // current code
  let edge = -Infinity; // values below edge are certainly in the current bin
  for (let i = 0; i < n; i++) {
    const v = sorted[i];
    if (v >= edge) {
      let k: number;
      // Past the band around the edge and below the next edge: the next code, no division.
      const next = key + 1 < levels ? off + (key + 1.5) * sc - margin : Infinity;
      if (key >= 0 && v >= edge + 2 * margin && v < next) k = key + 1;
      else {
        k = Math.round((v - off) / sc);
        k = k < 0 ? 0 : k > levels ? levels : k;
      }
      if (k !== key) {
        key = k;
        x = Math.fround(off + k * sc);
        edge = k < levels ? off + (k + 0.5) * sc - margin : Infinity;
      }
    }
    const d = v - x;
    err += d * d;
  }
  return err;
}

function walkFp8(sorted: Float64Array, off: number, sc: number, margin: number): number {
  const n = sorted.length;
  let err = 0;
  let x = 0;
  let key = -1; // index into FP8_SORTED
  let edge = -Infinity;
  for (let i = 0; i < n; i++) {
    const v = sorted[i];
    if (v >= edge) {
      let k: number;
      const next = key >= 0 && key + 1 < 252 ? off + FP8_UPPER[key + 1] * sc - margin : Infinity;
      if (key >= 0 && v >= edge + 2 * margin && v < next) k = key + 1;
      else {
        const u = (v - off) / sc;
        k = u < 0 ? 126 - fp8MagnitudeCode(-u) : 126 + fp8MagnitudeCode(u);
      }
      if (k !== key) {
        key = k;
        x = Math.fround(off + FP8_SORTED[k] * sc);
        edge = off + FP8_UPPER[k] * sc - margin;
      }
    }
    const d = v - x;
    err += d * d;
  }
  return err;
}
