/**
 * FP8 E4M3FN (OCP / NVIDIA "e4m3fn"): 1 sign bit, 4 exponent bits (bias 7), 3 mantissa bits,
 * no infinities, 0x7F / 0xFF are NaN, largest finite value 448.
 * Decode is a 256-entry table; encode rounds to nearest, ties to even, saturating at ±448
 * (on the float64 bit pattern; a binary search over the table's midpoints is kept as the
 * reference and the tests check they agree).
 */

export const FP8_MAX = 448;
export const FP8_NAN = 0x7f;

/** FP8_TO_FLOAT[code]: Float32Array // [256] */
export const FP8_TO_FLOAT: Float32Array = (() => {
  const t = new Float32Array(256);
  for (let c = 0; c < 256; c++) {
    const s = c & 0x80 ? -1 : 1;
    const e = (c >>> 3) & 0xf;
    const m = c & 7;
    if ((c & 0x7f) === 0x7f) t[c] = NaN;
    else t[c] = e === 0 ? s * (m / 8) * 2 ** -6 : s * (1 + m / 8) * 2 ** (e - 7);
  }
  return t;
})();

/** MID[c] = midpoint of positive codes c and c+1, c in [0, 126). */
const MID: Float64Array = (() => {
  const m = new Float64Array(126);
  for (let c = 0; c < 126; c++) m[c] = (FP8_TO_FLOAT[c] + FP8_TO_FLOAT[c + 1]) / 2;
  return m;
})();

const F64 = new Float64Array(1);
const U32 = new Uint32Array(F64.buffer);
const HI = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1 ? 1 : 0; // little-endian: high word is [1]
const SMALLEST_NORMAL = 2 ** -6;
/** (1023 - 7) << 3: re-biases the double exponent (with 3 mantissa bits appended) to e4m3. */
const REBIAS = (1023 - 7) << 3;

/**
 * Magnitude code (0..126) of a >= 0, round to nearest even, saturating at 448.
 * Normal range: round the double's mantissa to 3 bits on its bit pattern (exact RNE, no
 * double rounding); subnormal range: RNE of a·2^9. Matches the table search fp8MagnitudeCodeTable.
 */
export function fp8MagnitudeCode(a: number): number {
  if (!(a < FP8_MAX)) return a >= FP8_MAX ? 126 : FP8_NAN;
  if (a < SMALLEST_NORMAL) {
    const t = a * 512;
    const f = Math.floor(t);
    const d = t - f;
    return d > 0.5 ? f + 1 : d < 0.5 ? f : f + (f & 1);
  }
  F64[0] = a;
  const hi = U32[HI];
  const lo = U32[1 - HI];
  let q = hi >>> 17; // exponent (11 bits) and top 3 mantissa bits
  const round = (hi >>> 16) & 1;
  const sticky = (hi & 0xffff) | lo;
  if (round && (sticky !== 0 || q & 1)) q++;
  const c = q - REBIAS;
  return c > 126 ? 126 : c;
}

/** Reference encoder by binary search over the midpoints of the decode table (tests). */
export function fp8MagnitudeCodeTable(a: number): number {
  if (!(a < FP8_MAX)) return a >= FP8_MAX ? 126 : FP8_NAN;
  // lower_bound: first c with MID[c] >= a; that count of midpoints below a is the code.
  let lo = 0;
  let hi = 126;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (MID[mid] < a) lo = mid + 1;
    else hi = mid;
  }
  // Exactly on a midpoint: the even code (codes' LSB is the mantissa LSB).
  if (lo < 126 && MID[lo] === a && (lo & 1) === 1) lo++;
  return lo;
}

/** Encodes a number as an e4m3fn code (RNE, saturating; NaN -> 0x7F; -0 keeps its sign). */
export function floatToFp8(u: number): number {
  if (u !== u) return FP8_NAN;
  const neg = u < 0 || (u === 0 && 1 / u < 0);
  const c = fp8MagnitudeCode(neg ? -u : u);
  return neg ? c | 0x80 : c;
}

export function fp8ToFloat(code: number): number {
  return FP8_TO_FLOAT[code & 0xff];
}
