// Tested by test/dynamo/allocate.test.ts.
/**
 * Measured error tables for the Dynamo kernels' quantizers, the input of the bit allocation.
 *
 * C: Float32Array // [H, p] held-out coefficients exactly as the kernels' SGEMM hands them to the
 * quantizers (float32, components in variance order, mean removed with the float32 mean). Every
 * entry is Σ over held-out rows of squared coefficient error; the projection is orthonormal, so
 * that is the squared error of the reconstructed block.
 *
 *  - none[j]: component j dropped (its column left out of the projection): Σ c².
 *  - fp8[j]: component j in an FP8 range: the kernels cast the raw coefficient, unscaled
 *    (kvtc_quantize_fp8_kernel), so the error depends on each value's magnitude — saturation
 *    at ±448, 3-bit mantissa, subnormal floor 2⁻⁹ — and on the GPU's path (kernels.ts).
 *    Components are independent, so an FP8 range is a sum of per-component errors.
 *  - intx[k, m, b]: components [k·g, min(k·g + m·g, p)) as one IntX range of `bits[b]`: per row,
 *    the range's own float32 min/max set the grid (kvtc_minmax_reduce_kernel, then
 *    kvtc_quantize_intx_kernel / kvtc_dequantize_intx_kernel), so each candidate is measured on
 *    the data with the kernels' arithmetic. Candidate boundaries lie on a granule g, a multiple
 *    of 8, so every width is a whole number of bytes at every bit width (the packing rule of
 *    kernels.ts checkRanges); a last group cut at p that breaks that rule is marked Infinity.
 *    IntX candidates are measured on a strided subsample of ≤ `sampleRows` rows, scaled to H.
 *
 * Why not src/fit/error-tables.ts: its dynamic groups use fp16 offset/scale rounded outward and
 * its static groups fitted clip ranges — neither exists in these kernels — and its fp8 is scaled.
 */
import { invariant } from '../errors.js';
import { fp8Decode, fp8Encoder, intxCode, intxInterval, intxValue, slotsPerByte, type Fp8Path } from './kernels.js';

export const DEFAULT_INT_BITS: readonly number[] = [2, 4, 8];

export interface DynamoTables {
  dim: number;
  /** Held-out rows the errors are summed over. */
  rows: number;
  granule: number;
  maxGranules: number;
  /** IntX bit widths the table measured, in order. */
  intBits: readonly number[];
  none: Float64Array;
  fp8: Float64Array;
  /** [ceil(p/g), maxGranules, intBits.length]; Infinity where not a valid range. */
  intx: Float64Array;
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

export function intxIndex(t: Pick<DynamoTables, 'maxGranules' | 'intBits'>, k: number, m: number, b: number): number {
  return (k * t.maxGranules + (m - 1)) * t.intBits.length + b;
}

/** Σ over columns [from, to) of one row of the IntX round-trip error, continuing `acc`. */
function intxError(C: Float32Array, from: number, to: number, min: number, interval: number, maxQuant: number, acc: number): number {
  let e = acc;
  for (let i = from; i < to; i++) {
    const v = C[i];
    const d = v - intxValue(intxCode(v, min, interval, maxQuant), min, interval, maxQuant);
    e += d * d;
  }
  return e;
}

export function buildDynamoTables(C: Float32Array, H: number, p: number, opts: DynamoTableOptions = {}): DynamoTables {
  invariant(H > 0 && C.length >= H * p, `Error in buildDynamoTables: C length (${C.length}) < H*p (${H}*${p})`);
  const granule = opts.granule ?? dynamoGranule(p);
  invariant(granule >= 1, `Error in buildDynamoTables: granule ${granule} must be >= 1`);
  const starts = Math.ceil(p / granule);
  const maxGranules = Math.min(opts.maxGranules ?? 64, starts);
  const intBits = opts.intBits ?? DEFAULT_INT_BITS;
  const enc = fp8Encoder(opts.fp8Path ?? 'sm89');

  const none = new Float64Array(p);
  const fp8 = new Float64Array(p);
  for (let r = 0; r < H; r++) {
    const o = r * p;
    for (let j = 0; j < p; j++) {
      const v = C[o + j];
      none[j] += v * v;
      const d = v - fp8Decode(enc(v));
      fp8[j] += d * d;
    }
  }

  const t: DynamoTables = { dim: p, rows: H, granule, maxGranules, intBits, none, fp8, intx: new Float64Array(starts * maxGranules * intBits.length).fill(Infinity) };
  const nb = intBits.length;
  const valid = new Uint8Array(starts * maxGranules * nb);
  for (let k = 0; k < starts; k++) {
    for (let m = 1; m <= maxGranules; m++) {
      const s = k * granule;
      if (s + (m - 1) * granule >= p) break;
      const w = Math.min(p, s + m * granule) - s;
      for (let b = 0; b < nb; b++) {
        if (w % slotsPerByte(intBits[b]) !== 0) continue;
        const i = intxIndex(t, k, m, b);
        valid[i] = 1;
        t.intx[i] = 0;
      }
    }
  }
  const hs = Math.min(H, opts.sampleRows ?? 512);
  const stride = H / hs;
  const maxQuant = intBits.map((b) => (1 << b) - 1);
  const prevErr = new Float64Array(nb);
  for (let q = 0; q < hs; q++) {
    const row = Math.floor(q * stride) * p;
    for (let k = 0; k < starts; k++) {
      const s = k * granule;
      let mn = Infinity;
      let mx = -Infinity;
      let prevEnd = s;
      prevErr.fill(0);
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
        // A wider range keeps its grid while its min and max do not move (the usual case:
        // components come in falling variance), so the running sum just continues.
        const same = m > 1 && mn === mn0 && mx === mx0;
        const interval = intxInterval(mn, mx);
        for (let b = 0; b < nb; b++) {
          const err = same
            ? intxError(C, row + prevEnd, row + e, mn, interval, maxQuant[b], prevErr[b])
            : intxError(C, row + s, row + e, mn, interval, maxQuant[b], 0);
          prevErr[b] = err;
          const i = intxIndex(t, k, m, b);
          if (valid[i]) t.intx[i] += err * stride;
        }
        prevEnd = e;
      }
    }
  }
  return t;
}
