/**
 * IEEE 754 half <-> single conversions on typed arrays (round to nearest even).
 *
 * floatToHalf takes any JS number (float64) and rounds it once, correctly: it goes through
 * float32 bits, and where that first rounding landed exactly on a half-way point between two
 * halves, the side of the float64 input decides (rounding to float32 cannot cross a half-way
 * point, it can only land on one). NumPy: np.float64(v).astype(np.float16).
 */
const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

export function floatToHalf(v: number): number {
  f32[0] = v;
  const x = u32[0];
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  let mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  const e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    let h = mant >>> shift;
    const rem = mant & ((1 << shift) - 1);
    const half = 1 << (shift - 1);
    if (rem > half || (rem === half && tieRoundsUp(v, h))) h++;
    return sign | h;
  }
  let h = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && tieRoundsUp(v, h))) h++;
  return sign | h;
}

/** At a float32 half-way point: up when the float64 input was past it, down when short of it, else to even. */
function tieRoundsUp(v: number, h: number): boolean {
  const a = Math.abs(v);
  const t = Math.abs(f32[0]);
  return a === t ? (h & 1) === 1 : a > t;
}

const HALF_TABLE = (() => {
  const t = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const s = h & 0x8000 ? -1 : 1;
    const e = (h >>> 10) & 0x1f;
    const m = h & 0x3ff;
    t[h] = e === 0 ? s * m * 2 ** -24 : e === 31 ? (m ? NaN : s * Infinity) : s * (1 + m / 1024) * 2 ** (e - 15);
  }
  return t;
})();

export function halfToFloat(h: number): number {
  return HALF_TABLE[h & 0xffff];
}

export function halfArrayToFloat(src: Uint16Array, dst = new Float32Array(src.length)): Float32Array {
  for (let i = 0; i < src.length; i++) dst[i] = HALF_TABLE[src[i]];
  return dst;
}

export function floatArrayToHalf(src: Float32Array, dst = new Uint16Array(src.length)): Uint16Array {
  for (let i = 0; i < src.length; i++) dst[i] = floatToHalf(src[i]);
  return dst;
}
