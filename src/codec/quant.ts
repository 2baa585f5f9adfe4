/**
 * Per-token, per-group affine quantization of PCA coefficients.
 *
 * Every stored type decodes as  x̂ = offset + q · scale  (computed in float64, stored float32):
 *   int2/int4/int8: q = code in [0, 2^b - 1];   fp8: q = e4m3fn value of code (|q| <= 448).
 *
 * 'dynamic' groups: per token, offset and scale are fp16 values chosen from the group's min/max
 *   int: offset = fp16 round-down(min), scale = fp16 round-up((max - offset) / (2^b - 1))
 *   fp8: offset = fp16((min + max) / 2), scale = fp16 round-up(max|x - offset| / 448)
 *   Rounding outward means the fp16 range always covers [min, max] (no clipping); the encoder
 *   quantizes with exactly the fp16 values the decoder reads. min/max are clamped to ±65504.
 *   A zero scale (constant group) stores code 0 and decodes to the offset.
 * 'static' groups: per component j, from the profile's float32 lo[j], hi[j]:
 *   int: offset = lo, scale = (hi - lo) / (2^b - 1);   fp8: offset = (lo + hi) / 2,
 *   scale = (hi - lo) / (2·448). Values outside [lo, hi] clip.
 */
import { floatToHalf, halfToFloat } from '../io/fp16.js';
import { FP8_MAX, FP8_TO_FLOAT, fp8MagnitudeCode } from './fp8.js';
import type { QuantType } from './types.js';

export type StoredType = Exclude<QuantType, 'none'>;
export const STORED_TYPES: readonly StoredType[] = ['int2', 'int4', 'int8', 'fp8'];

/** Largest code of an int type (2^b - 1); 0 for fp8. */
export function intLevels(type: StoredType): number {
  return type === 'int2' ? 3 : type === 'int4' ? 15 : type === 'int8' ? 255 : 0;
}

const HALF_MAX = 65504;

function halfRoundUp(x: number): number {
  let h = floatToHalf(x);
  if (halfToFloat(h) < x) h = h & 0x8000 ? (h === 0x8000 ? 1 : h - 1) : h + 1;
  return h;
}

function halfRoundDown(x: number): number {
  let h = floatToHalf(x);
  if (halfToFloat(h) > x) h = h & 0x8000 ? h + 1 : h === 0 ? 0x8001 : h - 1;
  return h;
}

/**
 * fp16 offset and scale of a dynamic group whose values span [min, max], packed as
 * (offsetHalf << 16) | scaleHalf (no allocation in the hot loop).
 */
export function dynamicHalves(min: number, max: number, type: StoredType): number {
  if (min < -HALF_MAX) min = -HALF_MAX;
  if (max > HALF_MAX) max = HALF_MAX;
  if (max < min) max = min;
  let off: number;
  let sc: number;
  if (type === 'fp8') {
    off = floatToHalf((min + max) / 2);
    const o = halfToFloat(off);
    const amax = Math.max(max - o, o - min);
    sc = amax > 0 ? halfRoundUp(amax / FP8_MAX) : 0;
  } else {
    off = halfRoundDown(min);
    const o = halfToFloat(off);
    const span = max - o;
    sc = span > 0 ? halfRoundUp(span / intLevels(type)) : 0;
  }
  return ((off << 16) | sc) >>> 0;
}

/** Code of v for offset/scale (int: levels = 2^b-1; fp8: levels = 0). */
export function encodeValue(v: number, offset: number, scale: number, levels: number): number {
  if (scale === 0) return 0;
  const u = (v - offset) / scale;
  if (levels > 0) {
    const c = Math.round(u);
    return c < 0 ? 0 : c > levels ? levels : c;
  }
  return u < 0 ? fp8MagnitudeCode(-u) | 0x80 : fp8MagnitudeCode(u);
}

export function decodeValue(code: number, offset: number, scale: number, levels: number): number {
  return offset + (levels > 0 ? code : FP8_TO_FLOAT[code]) * scale;
}

export function staticOffset(lo: number, hi: number, type: StoredType): number {
  return type === 'fp8' ? (lo + hi) / 2 : lo;
}

export function staticScale(lo: number, hi: number, type: StoredType): number {
  const s = type === 'fp8' ? (hi - lo) / (2 * FP8_MAX) : (hi - lo) / intLevels(type);
  return s > 0 ? s : 0;
}

/**
 * Decoded value of every code of a static component: table[code] = fround(offset + q(code)·scale),
 * exactly what decodeValue stores into a Float32Array. table: Float32Array // [2^bits] (fp8: 256).
 * Why a table: decode is one load per coefficient instead of a multiply-add and a branch.
 */
export function staticDecodeTable(lo: number, hi: number, type: StoredType, out?: Float32Array): Float32Array {
  const levels = intLevels(type);
  const size = levels > 0 ? levels + 1 : 256;
  const t = out ?? new Float32Array(size);
  const off = staticOffset(lo, hi, type);
  const sc = staticScale(lo, hi, type);
  for (let c = 0; c < size; c++) t[c] = decodeValue(c, off, sc, levels);
  return t;
}

/**
 * Codes of n values src[srcOff + i·stride] of one static component into dst[dstOff ..), with
 * encodeValue's arithmetic inlined for the int types (the hot loop of encode).
 */
/**
 * Math.round((x − off) / sc) clamped to [0, levels] (int types; sc > 0, or ∞ for code 0), without
 * data-dependent branches: on real coefficients a third or more clip, and the branchy clamp cost
 * 2x on this hot path. Round half up as (u + 0.5) | 0, then undo the cases where that sum
 * rounded up to the next integer (u = 0.49999999999999994); clamp with integer bit tricks.
 * NaN → 0, ±∞ → levels / 0, like the branchy form.
 */
export function staticCode(x: number, off: number, sc: number, levels: number): number {
  let u = (x - off) / sc;
  if (!(u > -1e9 && u < 1e9)) u = u > 0 ? 1e9 : -1; // keeps `| 0` in int32 range (rarely taken)
  let q = (u + 0.5) | 0;
  q -= +(q - 0.5 > u); // exact: q − 0.5 is representable
  q &= ~(q >> 31); // max(q, 0)
  const d = levels - q;
  return q + (d & (d >> 31)); // min(q, levels)
}

export function quantizeStaticRun(
  src: Float32Array,
  srcOff: number,
  stride: number,
  n: number,
  lo: number,
  hi: number,
  type: StoredType,
  dst: Uint8Array,
  dstOff: number,
): void {
  const off = staticOffset(lo, hi, type);
  const sc = staticScale(lo, hi, type);
  const levels = intLevels(type);
  if (sc === 0) {
    dst.fill(0, dstOff, dstOff + n);
    return;
  }
  if (levels === 0) {
    for (let i = 0; i < n; i++) dst[dstOff + i] = encodeValue(src[srcOff + i * stride], off, sc, 0);
    return;
  }
  for (let i = 0, k = srcOff; i < n; i++, k += stride) dst[dstOff + i] = staticCode(src[k], off, sc, levels);
}
